"""Benchmark the $IAMINE ledger (economy/): postings per second on the embedded PostgreSQL.

A posting is one job's two transactions, the ones the chat path will make: ``hold`` at
placement and ``post`` of the actual usage at the end (user → worker owner + pool fee). Two
runs on a fresh database in a temporary directory:

- **sequential**: one connection, one job after another: the latency of the pair;
- **concurrent**: ``--concurrency`` connections from an asyncpg pool, jobs spread over
  ``--users`` users and a few worker owners. Every job locks the clearing account and the pool
  fee, so this measures the ledger's hot rows under contention (TigerBeetle's hot-account case).

- **grouped**: the chat path's own writes: each job held and posted in one
  :meth:`Ledger.hold_then`, ``--group`` of them per :meth:`Ledger.group_transaction` (the hub's
  group commit), for each group size; wall time and the PostgreSQL backend's CPU per job
  (``psutil``), the cost the hub path pays per chat.

Then ``verify`` recomputes the books (its time is reported too) and must find nothing wrong.

Last, **the chat path**: two live hubs on the same database, one with the ledger on
(``IAMINE_ECONOMY__ENABLED=true``), one with it off, each with an ``iamine worker --upstream``
in front of ``bench/stub_upstream.py`` (a fast fake model). One client sends ``--chats`` chats
to each, alternating hub by hub so drift hits both alike, plain JSON and streamed, one at a
time; ``chat_p50_added_ms`` is the ledger-on p50 less the ledger-off p50 (goal: at most 1 ms).

Run: ``python bench/ledger.py [--jobs 2000] [--concurrency 8] [--chats 400] [--quick]``. One
JSON line on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from services import (
    HUB_COMMAND,
    Services,
    free_port,
    log,
    sigterm_as_interrupt,
    start_stub,
    wait_ready,
)

from economy.ledger import Ledger
from economy.pricing import LedgerPolicy, Usage
from economy.verify import verify
from hub import accounts
from hub.config import ServerSettings
from hub.embedded import EmbeddedPostgres
from hub.migrations import migrate
from hub.observability import configure_logging
from inference import identity

USAGE = Usage("bench-model", 600, 200)
OWNERS = [uuid.UUID(int=1_000 + i) for i in range(4)]
WORKERS = [uuid.UUID(int=2_000 + i) for i in range(4)]  # a worker record each, as the hub posts
GROUP_SIZES = [1, 4, 64]
STUB_MODEL = "stub"
STUB_TOKENS = 8
WARMUP = 20


async def one_job(
    conn: asyncpg.Connection, ledger: Ledger, job_id: str, user: uuid.UUID, timings: list[float]
) -> None:
    """Hold then post one job, recording each call's milliseconds."""
    started = time.perf_counter()
    await ledger.hold(conn, job_id, user, 5_000)
    held = time.perf_counter()
    await ledger.post(conn, job_id, USAGE, OWNERS[hash(job_id) % len(OWNERS)])
    timings.extend(((held - started) * 1e3, (time.perf_counter() - held) * 1e3))


async def sequential(uri: str, ledger: Ledger, jobs: int, progress: Progress) -> dict[str, float]:
    """One connection, one job after the other."""
    task = progress.add_task("sequential", total=jobs)
    holds: list[float] = []
    conn = await asyncpg.connect(uri)
    try:
        user = uuid.uuid4()
        started = time.perf_counter()
        for n in range(jobs):
            await one_job(conn, ledger, f"seq-{n}", user, holds)
            progress.advance(task)
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return {
        "postings_per_s": round(jobs / elapsed, 1),
        "hold_p50_ms": round(statistics.median(holds[0::2]), 3),
        "post_p50_ms": round(statistics.median(holds[1::2]), 3),
    }


async def concurrent(
    uri: str, ledger: Ledger, jobs: int, concurrency: int, users: int, progress: Progress
) -> dict[str, float]:
    """``concurrency`` connections working through the jobs together."""
    task = progress.add_task(f"concurrent x{concurrency}", total=jobs)
    people = [uuid.uuid4() for _ in range(users)]
    timings: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(jobs):
        queue.put_nowait(n)

    async def worker(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            while not queue.empty():
                n = queue.get_nowait()
                await one_job(conn, ledger, f"con-{n}", people[n % users], timings)
                progress.advance(task)

    async with asyncpg.create_pool(uri, min_size=concurrency, max_size=concurrency) as pool:
        started = time.perf_counter()
        await asyncio.gather(*(worker(pool) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "postings_per_s": round(jobs / elapsed, 1),
        "hold_p50_ms": round(statistics.median(timings[0::2]), 3),
        "post_p50_ms": round(statistics.median(timings[1::2]), 3),
        "pair_p99_ms": round(
            statistics.quantiles(
                [a + b for a, b in zip(timings[0::2], timings[1::2], strict=True)], n=100
            )[98],
            3,
        ),
    }


async def grouped(
    uri: str, ledger: Ledger, jobs: int, sizes: list[int], progress: Progress
) -> dict[str, dict[str, float]]:
    """``jobs`` jobs through ``hold_then`` in groups of each size: ms per job, wall and CPU."""
    people = [uuid.uuid4() for _ in range(50)]
    results: dict[str, dict[str, float]] = {}
    conn = await asyncpg.connect(uri)
    try:
        backend = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()"))
        for size in sizes:
            task = progress.add_task(f"groups of {size}", total=jobs)
            cpu_before, started, done = _cpu(backend), time.perf_counter(), 0
            while done < jobs:
                async with ledger.group_transaction(conn):
                    for n in range(done, min(done + size, jobs)):
                        job = f"grp{size}-{n}"

                        async def post(job: str = job, n: int = n) -> object:
                            owner, worker = OWNERS[n % 4], WORKERS[n % 4]
                            return await ledger.post(conn, job, USAGE, owner, worker_id=worker)

                        await ledger.hold_then(conn, job, people[n % len(people)], 5_000, post)
                progress.advance(task, min(size, jobs - done))
                done += size
            elapsed = time.perf_counter() - started
            results[str(size)] = {
                "ms_per_job": round(elapsed * 1e3 / jobs, 3),
                "postgres_cpu_ms_per_job": round((_cpu(backend) - cpu_before) * 1e3 / jobs, 3),
            }
    finally:
        await conn.close()
    return results


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def run(
    uri: str, jobs: int, concurrency: int, users: int, chats: int, workdir: Path
) -> dict[str, Any]:
    """Migrate, run both measurements, verify, then time the chat path with the ledger on/off."""
    conn = await asyncpg.connect(uri)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    ledger = Ledger(LedgerPolicy(), lambda: datetime.now(UTC))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True)) as progress:
        seq = await sequential(uri, ledger, jobs // 4, progress)
        con = await concurrent(uri, ledger, jobs, concurrency, users, progress)
        groups = await grouped(uri, ledger, jobs, GROUP_SIZES, progress)
    conn = await asyncpg.connect(uri)
    try:
        started = time.perf_counter()
        report = await verify(conn)
        verify_s = time.perf_counter() - started
    finally:
        await conn.close()
    with Services(workdir) as services:
        chat = await chat_path(services, uri, chats)
    return {
        "sequential": seq,
        "concurrent": con,
        "grouped": groups,
        "verify_s": round(verify_s, 3),
        "verify_ok": report.ok,
        "entries": report.entries,
        "chats": chats,
        **chat,
    }


async def chat_tokens(uri: str) -> tuple[str, dict[str, str]]:
    """A user token, and a worker token per hub (established workers, so chats reach them)."""
    conn = await asyncpg.connect(uri)
    try:
        user = await accounts.create_user(conn, "bench")
        token = (await accounts.create_token(conn, user_id=user.id, scopes=("user",))).token
        workers = {}
        for hub in ("on", "off"):
            record = await identity.register_worker(
                conn, name=f"bench-{hub}", owner_id=user.id, max_slots=8, trust=2
            )
            issued = await accounts.create_token(
                conn, user_id=user.id, scopes=("worker",), worker_id=record.id
            )
            workers[hub] = issued.token
        return token, workers
    finally:
        await conn.close()


async def start_chat_hubs(services: Services, uri: str) -> tuple[dict[str, str], str]:
    """Start the ledger-on and ledger-off hubs, each with its worker; their URLs and the token."""
    user_token, worker_tokens = await chat_tokens(uri)
    stub, stub_url = start_stub(services, STUB_TOKENS)
    await wait_ready(stub, f"{stub_url}/v1/models")
    auth = {"Authorization": f"Bearer {user_token}"}
    urls = {}
    for hub, enabled in (("on", "true"), ("off", "false")):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("IAMINE_")} | {
            "IAMINE_DATABASE_URL": uri,
            "IAMINE_DATA_DIR": str(services.workdir / f"hub-{hub}"),
            "IAMINE_SERVER__PORT": str(port),
            "IAMINE_SERVER__LOG_LEVEL": "warning",
            "IAMINE_INFERENCE__LOCAL_WORKER": "false",
            "IAMINE_MEMORY__FACTS_EXTRACTION": "false",
            "IAMINE_ECONOMY__ENABLED": enabled,
        }
        url = f"http://127.0.0.1:{port}"
        log(f"starting the ledger-{hub} hub and its worker")
        service = services.start(f"hub-{hub}", [*HUB_COMMAND, "serve"], env)
        await wait_ready(service, f"{url}/readyz")
        argv = [*HUB_COMMAND, "worker", "--hub", url, "--name", f"bench-{hub}"]
        argv += ["--upstream", stub_url, "--slots", "8"]
        worker = services.start(
            f"worker-{hub}", argv, env | {"IAMINE_WORKER_TOKEN": worker_tokens[hub]}
        )
        await wait_ready(
            worker,
            f"{url}/v1/models",
            headers=auth,
            ready=lambda r: any(m["id"] == STUB_MODEL for m in r.json().get("data", [])),
        )
        urls[hub] = url
    return urls, user_token


async def one_chat(client: httpx.AsyncClient, url: str, token: str, stream: bool) -> float:
    """Milliseconds of one whole chat (the full stream when streamed)."""
    body = {
        "model": STUB_MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    async with client.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        await response.aread()
        if response.status_code != 200:
            raise RuntimeError(f"chat failed: HTTP {response.status_code} {response.text[:200]}")
    return (time.perf_counter() - started) * 1e3


async def chat_path(services: Services, uri: str, chats: int) -> dict[str, Any]:
    """p50 of plain and streamed chats on the ledger-on and ledger-off hubs, alternating."""
    urls, token = await start_chat_hubs(services, uri)
    timings: dict[tuple[str, bool], list[float]] = {
        (hub, stream): [] for hub in urls for stream in (False, True)
    }
    async with httpx.AsyncClient(timeout=30) as client:
        for n in range(WARMUP + chats):
            for stream in (False, True):
                for hub, url in urls.items():
                    elapsed = await one_chat(client, url, token, stream)
                    if n >= WARMUP:
                        timings[hub, stream].append(elapsed)
    p50 = {key: statistics.median(values) for key, values in timings.items()}
    return {
        "chat_p50_ms": {
            f"{hub}_{'stream' if stream else 'plain'}": round(value, 3)
            for (hub, stream), value in p50.items()
        },
        "chat_p50_added_ms": round(p50["on", False] - p50["off", False], 3),
        "chat_stream_p50_added_ms": round(p50["on", True] - p50["off", True], 3),
    }


def main() -> None:
    """Start an embedded PostgreSQL in a temporary directory, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=2_000, help="Jobs of the concurrent run.")
    parser.add_argument("--concurrency", type=int, default=8, help="Connections at once.")
    parser.add_argument("--users", type=int, default=50, help="Users the jobs belong to.")
    parser.add_argument("--chats", type=int, default=400, help="Chats timed on each hub.")
    parser.add_argument("--quick", action="store_true", help="A smoke run: 200 jobs, 50 chats.")
    args = parser.parse_args()
    jobs = 200 if args.quick else args.jobs
    chats = 50 if args.quick else args.chats
    configure_logging(ServerSettings(log_format="console", log_level="warning"))
    work = Path(tempfile.mkdtemp(prefix="iamine-bench-"))
    server = EmbeddedPostgres(work / "data")
    try:
        uri = server.start()
        with sigterm_as_interrupt():
            results = asyncio.run(run(uri, jobs, args.concurrency, args.users, chats, work))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    line = {
        "bench": "ledger",
        "jobs": jobs,
        "sequential_jobs": jobs // 4,
        "concurrency": args.concurrency,
        "users": args.users,
        **results,
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
