"""Benchmark the $IAMINE ledger (economy/): postings per second on the embedded PostgreSQL.

A posting is one job's two transactions, the ones the chat path will make: ``hold`` at
placement and ``post`` of the actual usage at the end (user → worker owner + pool fee). Two
runs on a fresh database in a temporary directory:

- **sequential**: one connection, one job after another: the latency of the pair;
- **concurrent**: ``--concurrency`` connections from an asyncpg pool, jobs spread over
  ``--users`` users and a few worker owners. Every job locks the clearing account and the pool
  fee, so this measures the ledger's hot rows under contention (TigerBeetle's hot-account case).

Then ``verify`` recomputes the books (its time is reported too) and must find nothing wrong.
The chat path's added p50 with the ledger on vs off needs the ledger wired into the chat path;
it is not measured here yet.

Run: ``python bench/ledger.py [--jobs 2000] [--concurrency 8] [--quick]``. One JSON line on
stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from economy.ledger import Ledger
from economy.pricing import LedgerPolicy, Usage
from economy.verify import verify
from hub.config import ServerSettings
from hub.embedded import EmbeddedPostgres
from hub.migrations import migrate
from hub.observability import configure_logging

USAGE = Usage("bench-model", 600, 200)
OWNERS = [uuid.UUID(int=1_000 + i) for i in range(4)]


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


async def run(uri: str, jobs: int, concurrency: int, users: int) -> dict[str, Any]:
    """Migrate, run both measurements, verify."""
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
    conn = await asyncpg.connect(uri)
    try:
        started = time.perf_counter()
        report = await verify(conn)
        verify_s = time.perf_counter() - started
    finally:
        await conn.close()
    return {
        "sequential": seq,
        "concurrent": con,
        "verify_s": round(verify_s, 3),
        "verify_ok": report.ok,
        "entries": report.entries,
    }


def main() -> None:
    """Start an embedded PostgreSQL in a temporary directory, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=2_000, help="Jobs of the concurrent run.")
    parser.add_argument("--concurrency", type=int, default=8, help="Connections at once.")
    parser.add_argument("--users", type=int, default=50, help="Users the jobs belong to.")
    parser.add_argument("--quick", action="store_true", help="A smoke run: 200 jobs.")
    args = parser.parse_args()
    jobs = 200 if args.quick else args.jobs
    configure_logging(ServerSettings(log_format="console", log_level="warning"))
    work = Path(tempfile.mkdtemp(prefix="iamine-bench-"))
    server = EmbeddedPostgres(work / "data")
    try:
        uri = server.start()
        results = asyncio.run(run(uri, jobs, args.concurrency, args.users))
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
        "chat_p50_added_ms": None,
        "note": "chat path p50 with the ledger on vs off needs the chat-path wiring (not yet)",
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
