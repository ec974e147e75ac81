"""Gossip between five real pools: membership convergence, round time, exchange size, detection.

Five ``iamine serve`` pools (each with its embedded PostgreSQL), fully peered by invites,
gossiping every second (``IAMINE_FEDERATION__GOSSIP_INTERVAL_S=1``) and suspecting a peer after
3 s of silence. Measured: seconds until every pool sees every other alive; one round run on
demand (``POST /admin/api/jobs/federation_sync/run``: judge, three signed exchanges,
bookkeeping), p50 and max over ``--rounds`` per pool; bytes of one exchange (both directions,
from ``gossip_log``); then one pool is killed (SIGKILL) and the seconds until all four others
declare it dead (quorum: three of them). One JSON line. ``bench/federation_suite.py`` runs it with
the notes and overflow benchmarks.

Run: ``python bench/federation_gossip.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import overflow
from services import (
    Hub,
    ServiceError,
    Services,
    log,
    sigterm_as_interrupt,
)

POOLS = 5
SUSPECT_AFTER_S = 3.0
DEADLINE_S = 60.0


async def _members(client: httpx.AsyncClient, hub: Hub) -> dict[str, str]:
    response = await client.get(
        f"{hub.url}/admin/api/federation/members", headers=overflow.admin(hub)
    )
    response.raise_for_status()
    return {m["pool_id"]: m["status"] for m in response.json()["data"]}


async def _pool_id(client: httpx.AsyncClient, hub: Hub) -> str:
    response = await client.get(f"{hub.url}/admin/api/federation", headers=overflow.admin(hub))
    response.raise_for_status()
    pool_id: str = response.json()["pool_id"]
    return pool_id


async def _until(what: str, check: Any) -> float:
    """Seconds until ``await check()`` is true (polled every 100 ms)."""
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE_S:
        if await check():
            return round(time.monotonic() - start, 2)
        await asyncio.sleep(0.1)
    raise ServiceError(f"{what} did not happen within {DEADLINE_S:g} s")


async def gossip(workdir: Path, rounds: int) -> dict[str, Any]:
    """Five real pools: membership convergence, round time, exchange size, failure detection."""
    with Services(workdir) as services:
        log(f"starting {POOLS} pools")
        hubs = []
        for i in range(POOLS):
            suspect = {"IAMINE_FEDERATION__SUSPECT_AFTER_S": str(SUSPECT_AFTER_S)}
            hubs.append(await overflow.start_pool(services, f"pool-{i}", suspect))
        async with httpx.AsyncClient(timeout=30) as client:
            ids = [await _pool_id(client, hub) for hub in hubs]
            log("peering every pair")
            for i, joiner in enumerate(hubs):
                for inviter in hubs[i + 1 :]:
                    await overflow.peer(joiner, inviter)
            peered = time.monotonic()

            async def everyone_alive() -> bool:
                views = [await _members(client, hub) for hub in hubs]
                return all(
                    len(view) == POOLS - 1 and set(view.values()) == {"alive"} for view in views
                )

            await _until("every pool seeing every other alive", everyone_alive)
            converged_s = round(time.monotonic() - peered, 2)
            log("timing rounds run on demand")
            round_ms = []
            for hub in hubs:
                for _ in range(rounds):
                    start = time.perf_counter()
                    response = await client.post(
                        f"{hub.url}/admin/api/jobs/federation_sync/run",
                        headers=overflow.admin(hub),
                    )
                    round_ms.append((time.perf_counter() - start) * 1000)
                    if response.json().get("outcome") == "error":
                        raise ServiceError(f"a round failed: {response.text[:300]}")
            logged = await client.get(
                f"{hubs[0].url}/admin/api/federation/gossip?limit=200",
                headers=overflow.admin(hubs[0]),
            )
            exchanges = [
                row["bytes_sent"] + row["bytes_received"]
                for row in logged.json()["data"]
                if row["ok"] and row["direction"] == "out"
            ]
            log("killing one pool")
            victim, survivors = ids[-1], hubs[:-1]
            hubs[-1].service.process.kill()

            async def declared_dead() -> bool:
                views = [await _members(client, hub) for hub in survivors]
                return all(view.get(victim) == "dead" for view in views)

            dead_s = await _until("the killed pool declared dead by all", declared_dead)
    return {
        "pools": POOLS,
        "interval_s": 1.0,
        "suspect_after_s": SUSPECT_AFTER_S,
        "membership_converged_s": converged_s,
        "round_ms_p50": round(statistics.median(round_ms), 2),
        "round_ms_max": round(max(round_ms), 2),
        "exchange_bytes_p50": int(statistics.median(exchanges)) if exchanges else None,
        "killed_pool_dead_after_s": dead_s,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=10, help="on-demand rounds timed per pool")
    args = parser.parse_args(argv)
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="bench-gossip-") as tmp:
        result = asyncio.run(gossip(Path(tmp), args.rounds))
    json.dump({"bench": "federation_gossip", **result}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
