"""Benchmark what overflow to a peer pool adds to a chat: served locally vs forwarded to a peer.

Two hubs with federation on (``iamine serve``, each with its embedded PostgreSQL): pool B has an
``iamine worker --upstream`` in front of the stub (``bench/stub_upstream.py``, ``--tokens``
tokens, instantly); pool A has no worker. A joins B with an invite; gossip (every second here)
brings B's offer to A. The same streamed chat is then sent, one at a time, ``--requests`` times
to B (``local``: served by B's own worker) and to A (``peer``: forwarded to B by the router's peer
step, signed, streamed back with a signed receipt, billed on both ledgers). Both answers come
from the same worker and stub, so the difference is what overflow adds: the second hub, the
signed forward and its relay.

One JSON line on stdout: per path, time to first token and total latency p50/p99 in ms and the
errors; ``added_ms`` is peer minus local; ``ratio`` peer over local (p50). Progress on stderr.
Run: ``python bench/overflow.py`` (about a minute), ``--requests 20`` for a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from hub_overhead import MODEL, Sample, expected_text, percentile, request_body, stream_once
from services import (
    HUB_COMMAND,
    Hub,
    ServiceError,
    Services,
    free_port,
    hub_env,
    iamine,
    issue_token,
    log,
    sigterm_as_interrupt,
    start_stub,
    start_worker,
    stop_postgres,
    wait_ready,
)

PEER_WAIT_S = 60.0


async def start_pool(services: Services, name: str, settings: dict[str, str] | None = None) -> Hub:
    """``iamine serve`` with federation on at its own URL, gossiping every second.

    ``settings`` adds ``IAMINE_*`` variables to the pool's environment.
    """
    data_dir = services.workdir / f"{name}-data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = (
        hub_env(data_dir, port)
        | {
            "IAMINE_FEDERATION__ENABLED": "true",
            "IAMINE_FEDERATION__PUBLIC_URL": url,
            "IAMINE_FEDERATION__GOSSIP_INTERVAL_S": "1",
        }
        | (settings or {})
    )
    services.on_close(lambda: stop_postgres(data_dir))
    iamine(env, "users", "create", "bench")
    user_token = issue_token(env, "bench", scope="user")
    service = services.start(name, [*HUB_COMMAND, "serve"], env)
    await wait_ready(service, f"{url}/readyz")
    return Hub(service, url, data_dir, user_token, env)


def admin(hub: Hub) -> dict[str, str]:
    """The hub's admin token as request headers."""
    token = (hub.data_dir / "admin-token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


async def peer(a: Hub, b: Hub) -> None:
    """A joins B with B's invite (both become each other's peers)."""
    async with httpx.AsyncClient(timeout=30) as client:
        invite = await client.post(
            f"{b.url}/admin/api/federation/invites", json={}, headers=admin(b)
        )
        invite.raise_for_status()
        minted = invite.json()
        body = {"url": b.url, "fingerprint": minted["pool_id"], "invite": minted["invite"]}
        joined = await client.post(
            f"{a.url}/admin/api/federation/peers", json=body, headers=admin(a)
        )
        if joined.status_code != 201:
            raise ServiceError(f"peering failed: {joined.status_code} {joined.text}")


async def wait_for_overflow(a: Hub, tokens: int) -> None:
    """Send chats to A until one is answered by the peer (gossip has brought B's offer)."""
    deadline = time.monotonic() + PEER_WAIT_S
    body = request_body(tokens, stream=False)
    headers = {**a.auth(), "content-type": "application/json"}
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() < deadline:
            response = await client.post(
                f"{a.url}/v1/chat/completions", content=body, headers=headers
            )
            if response.headers.get("x-iamine-route") == "peer":
                shown = {k: v for k, v in response.headers.items() if k.startswith("x-iamine")}
                log(f"an overflowed chat's headers: {json.dumps(shown)}")
                return
            await asyncio.sleep(1)
    raise ServiceError(f"pool A did not forward to B within {PEER_WAIT_S:g} s")


async def measure(hub: Hub, requests: int, tokens: int) -> list[Sample]:
    """``requests`` streamed chats to ``hub``, one at a time, on one connection."""
    url = f"{hub.url}/v1/chat/completions"
    headers = {**hub.auth(), "content-type": "application/json"}
    body, expected = request_body(tokens, stream=True), expected_text(tokens)
    async with httpx.AsyncClient(timeout=60) as client:
        return [await stream_once(client, url, headers, body, expected) for _ in range(requests)]


def summary(samples: Sequence[Sample]) -> dict[str, Any]:
    """Latency and time to first token, p50/p99 in ms, and the errors."""
    good = [s for s in samples if s.error is None]
    totals = [s.latency_s * 1000 for s in good]
    ttfts = [s.ttft_s * 1000 for s in good if s.ttft_s is not None]
    errors = [s.error for s in samples if s.error is not None]

    def pct(values: list[float], p: float) -> float | None:
        value = percentile(values, p)
        return None if value is None else round(value, 2)

    return {
        "requests": len(samples),
        "errors": len(errors),
        "first_error": errors[0][:200] if errors else None,
        "ttft_p50_ms": pct(ttfts, 50),
        "ttft_p99_ms": pct(ttfts, 99),
        "total_p50_ms": pct(totals, 50),
        "total_p99_ms": pct(totals, 99),
    }


def compare(local: dict[str, Any], forwarded: dict[str, Any]) -> dict[str, Any]:
    """Peer minus local per percentile, and peer over local at p50."""
    keys = ("ttft_p50_ms", "ttft_p99_ms", "total_p50_ms", "total_p99_ms")
    added = {
        k: None if local[k] is None or forwarded[k] is None else round(forwarded[k] - local[k], 2)
        for k in keys
    }
    ratio = {
        k: None if not local[k] or forwarded[k] is None else round(forwarded[k] / local[k], 2)
        for k in ("ttft_p50_ms", "total_p50_ms")
    }
    return {"added_ms": added, "ratio": ratio}


async def run(requests: int, tokens: int, workdir: Path) -> dict[str, Any]:
    """Start the stub, pool B with its worker, pool A; peer them; measure both paths."""
    with Services(workdir) as services:
        stub, stub_url = start_stub(services, tokens)
        await wait_ready(stub, f"{stub_url}/v1/models")
        log("starting pool B (with the worker) and pool A (none)")
        b = await start_pool(services, "pool-b")
        a = await start_pool(services, "pool-a")
        await start_worker(
            services, b, MODEL, "--upstream", stub_url, "--slots", "64", name="b-worker"
        )
        await peer(a, b)
        log("waiting for gossip to bring B's offer to A")
        await wait_for_overflow(a, tokens)
        await measure(b, 5, tokens)  # warm both paths before measuring
        await measure(a, 5, tokens)
        log(f"measuring {requests} streamed chats on each path")
        local = summary(await measure(b, requests, tokens))
        forwarded = summary(await measure(a, requests, tokens))
    return {
        "bench": "overflow",
        "tokens": tokens,
        "local": local,
        "peer": forwarded,
        **compare(local, forwarded),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the arguments, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=100, help="chats per path")
    parser.add_argument("--tokens", type=int, default=64, help="tokens in each answer")
    args = parser.parse_args(argv)
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="bench-overflow-") as tmp:
        result = asyncio.run(run(args.requests, args.tokens, Path(tmp)))
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
