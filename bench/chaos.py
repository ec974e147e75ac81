"""Benchmark the pool under chaos: streamed chats while a worker is SIGKILLed again and again.

``iamine serve`` (embedded PostgreSQL) and ``--workers`` ``iamine worker`` processes (the bundled
SmolLM2-135M by default; ``--upstream``: each in front of ``bench/stub_upstream.py``, which
answers at once). The official ``openai`` client streams ``--streams`` chats, ``--concurrency``
at a time; before every ``--kill-every``-th chat one worker (in turn) is SIGKILLed while it holds
a job, and started again. Each chat ends one of four ways:

- ``completed``: the stream ended with a finish reason and an answer (not a degraded one);
- ``failed_clean``: an ``openai.APIError`` carrying an OpenAI error code (429 ``pool_busy``, ...);
- ``hung``: no end within ``--timeout-s``;
- ``broken``: anything else (a dropped connection, a broken SSE stream, bad JSON, a stream that
  ends without a finish reason, a degraded answer while a worker was alive).

Prints one JSON line: the four counts (``errors``: failed_clean by code; the first messages in
``error_examples`` and ``broken_examples``), p50/p99 latency of completed chats (request sent to
stream end, ms), ``slots_leaked`` (jobs still on workers' slots 30 s after the last chat, from
``/admin/api/workers``), whether ``/readyz`` is still 200, and the duration. Progress goes to
stderr.

Run: ``python bench/chaos.py`` (real workers, about 2 minutes on 2 quiet cores) or
``python bench/chaos.py --upstream`` (stub workers, seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from services import (
    HUB_COMMAND,
    Hub,
    Service,
    ServiceError,
    Services,
    log,
    sigterm_as_interrupt,
    start_hub,
    start_stub,
    wait_ready,
)

BUNDLED_MODEL = "smollm2-135m-instruct"
STUB_MODEL = "stub"
DEGRADED_MARK = "[iamine: degraded answer]"
SETTLE_S = 30.0

Kind = Literal["completed", "failed_clean", "hung", "broken"]


@dataclass(frozen=True)
class Outcome:
    """How one chat ended: its kind, latency, and what the client saw."""

    kind: Kind
    latency_s: float
    detail: str = ""


async def stream_chat(
    client: openai.AsyncOpenAI, model: str, index: int, max_tokens: int, timeout_s: float
) -> Outcome:
    """Stream one short chat and classify how it ended."""
    started = time.perf_counter()
    text: list[str] = []
    finish: str | None = None

    def outcome(kind: Kind, detail: str = "") -> Outcome:
        return Outcome(kind, time.perf_counter() - started, detail)

    try:
        async with asyncio.timeout(timeout_s):
            stream = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": f"Say one word about the number {index}."}],
                max_tokens=max_tokens,
                stream=True,
            )
            async with stream:
                async for chunk in stream:
                    if chunk.choices:
                        text.append(chunk.choices[0].delta.content or "")
                        finish = chunk.choices[0].finish_reason or finish
    except TimeoutError:
        return outcome("hung", f"no end after {timeout_s:g} s")
    except openai.APIConnectionError as exc:
        return outcome("broken", f"{exc!r} caused by {exc.__cause__!r}")
    except openai.APIError as exc:
        kind: Kind = "failed_clean" if exc.code else "broken"
        return outcome(kind, f"{exc.code}: {exc.message} (after {len(text)} chunks: {text!r})")
    except Exception as exc:  # anything else is the stream itself breaking: count it
        return outcome("broken", repr(exc))
    answer = "".join(text)
    if finish not in ("stop", "length") or not answer.strip():
        return outcome("broken", f"incomplete: {answer!r}, finish_reason={finish!r}")
    if answer.startswith(DEGRADED_MARK):
        return outcome("broken", f"degraded answer: {answer!r}")
    return outcome("completed")


@dataclass
class Pool:
    """The hub and its workers; kills one worker (in turn) and starts it again."""

    services: Services
    hub: Hub
    worker_args: list[str]
    names: list[str]
    busy_wait_s: float = 10.0  # a stub's jobs take milliseconds: its victim may never look busy
    workers: dict[str, Service] = field(default_factory=dict)
    kills: int = 0

    @property
    def admin(self) -> dict[str, str]:
        """The pool admin token as request headers."""
        token = (self.hub.data_dir / "admin-token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    async def links(self) -> list[dict[str, Any]]:
        """The hub's live worker links (``/admin/api/workers``)."""
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(f"{self.hub.url}/admin/api/workers", headers=self.admin)
        response.raise_for_status()
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    def start(self, name: str) -> None:
        """Start (or start again) the worker called ``name``; do not wait for it."""
        argv = [*HUB_COMMAND, "worker", "--hub", self.hub.url, "--name", name, *self.worker_args]
        env = self.hub.env | {"IAMINE_WORKER_TOKEN": self.hub.worker_token(name)}
        self.workers[name] = self.services.start(f"{name}-{self.kills}", argv, env)

    async def wait_for(self, what: str, timeout_s: float, name: str | None = None) -> bool:
        """Poll until every worker is connected once (or ``name`` holds a job); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            links = await self.links()
            if name is None and sorted(w["name"] for w in links) == sorted(self.names):
                return True
            if name is not None and any(w["name"] == name and w["in_flight"] for w in links):
                return True
            await asyncio.sleep(0.05)
        log(f"gave up waiting for {what} after {timeout_s:g} s")
        return False

    async def kill_and_restart(self) -> None:
        """SIGKILL the next worker in turn, if possible while it holds a job; start it again."""
        if not await self.wait_for("every worker to be connected", 120):
            raise ServiceError("a restarted worker did not come back")
        name = self.names[self.kills % len(self.names)]
        await self.wait_for(f"worker {name} to hold a job", self.busy_wait_s, name)
        victim = self.workers[name].process
        with contextlib.suppress(ProcessLookupError):
            victim.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.wait, 15)
        self.kills += 1
        self.start(name)

    async def in_flight(self) -> int:
        """Jobs on the workers' slots, all workers together."""
        return sum(int(w["in_flight"]) for w in await self.links())


async def start_pool(services: Services, args: argparse.Namespace) -> tuple[Pool, str]:
    """Start the hub, the stub when asked, and the workers; return the pool and the model."""
    log("starting the hub (embedded PostgreSQL, CLI user and tokens)")
    hub = await start_hub(services)
    if args.upstream:
        stub, stub_url = start_stub(services, args.max_tokens)
        await wait_ready(stub, f"{stub_url}/v1/models")
        model, worker_args = STUB_MODEL, ["--upstream", stub_url, "--slots", "1"]
    else:
        model, worker_args = BUNDLED_MODEL, ["--threads", "1"]
    names = [f"chaos-{i}" for i in range(args.workers)]
    pool = Pool(services, hub, worker_args, names, busy_wait_s=2.0 if args.upstream else 10.0)
    log(f"starting {args.workers} workers ({model})")
    for name in names:
        pool.start(name)
    if not await pool.wait_for("every worker to join", 180):
        raise ServiceError("the workers did not join")
    return pool, model


async def run_chats(
    pool: Pool, model: str, args: argparse.Namespace, progress: Progress
) -> list[Outcome]:
    """Every chat, ``--concurrency`` at a time; a worker is killed as every ``--kill-every``-th
    chat starts."""
    task = progress.add_task("chats", total=args.streams)
    outcomes: list[Outcome] = []
    slots = asyncio.Semaphore(args.concurrency)
    client = openai.AsyncOpenAI(
        base_url=f"{pool.hub.url}/v1",
        api_key=pool.hub.user_token,
        max_retries=0,
        timeout=args.timeout_s,
    )

    async def one(index: int) -> None:
        try:
            outcomes.append(
                await stream_chat(client, model, index, args.max_tokens, args.timeout_s)
            )
        finally:
            slots.release()
            progress.advance(task)

    kill_at = (
        {i: asyncio.Event() for i in range(args.kill_every, args.streams, args.kill_every)}
        if args.kill_every
        else {}
    )

    async def killer() -> None:
        for reached in kill_at.values():
            await reached.wait()
            await pool.kill_and_restart()

    # The killer runs beside the chats, so they keep coming while it waits for its victim.
    async with client, asyncio.TaskGroup() as tasks:
        tasks.create_task(killer())
        for index in range(args.streams):
            await slots.acquire()
            if index in kill_at:
                kill_at[index].set()
            tasks.create_task(one(index))
    return outcomes


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0-1, nearest rank) in ms, or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def settle(pool: Pool) -> tuple[int, bool]:
    """Jobs still on slots after at most ``SETTLE_S``, and whether the hub is still ready."""
    deadline = time.monotonic() + SETTLE_S
    leaked = await pool.in_flight()
    while leaked and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # another process's state: a bounded poll is the honest wait
        leaked = await pool.in_flight()
    async with httpx.AsyncClient(timeout=10) as http:
        ready = (await http.get(f"{pool.hub.url}/readyz")).status_code == 200
    return leaked, ready


async def run(args: argparse.Namespace, services: Services) -> dict[str, Any]:
    """Start the pool, run the chats under kills, and summarise."""
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews latencies
    pool, model = await start_pool(services, args)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    console = Console(stderr=True)
    started = time.perf_counter()
    with Progress(*columns, TimeElapsedColumn(), console=console, refresh_per_second=2) as bar:
        outcomes = await run_chats(pool, model, args, bar)
    duration = time.perf_counter() - started
    leaked, ready = await settle(pool)
    counts = Counter(o.kind for o in outcomes)
    latencies = [o.latency_s for o in outcomes if o.kind == "completed"]
    errors = Counter(o.detail.split(":")[0] for o in outcomes if o.kind == "failed_clean")
    return {
        "bench": "chaos",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "loadavg_1m_before": load_before,
        },
        "workers": "upstream stub" if args.upstream else f"llama.cpp {BUNDLED_MODEL}",
        "worker_count": args.workers,
        "streams": args.streams,
        "kill_every": args.kill_every,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "kills": pool.kills,
        "completed": counts["completed"],
        "failed_clean": counts["failed_clean"],
        "hung": counts["hung"],
        "broken": counts["broken"],
        "errors": dict(errors),
        "error_examples": [o.detail for o in outcomes if o.kind == "failed_clean"][:5],
        "broken_examples": [o.detail for o in outcomes if o.kind == "broken"][:5],
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "slots_leaked": leaked,
        "hub_ready": ready,
        "duration_s": round(duration, 1),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=300, help="chats to send")
    parser.add_argument(
        "--kill-every", type=int, default=50, help="SIGKILL a worker every N chats (0: never)"
    )
    parser.add_argument("--concurrency", type=int, default=6, help="chats in flight at once")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per answer, at most")
    parser.add_argument(
        "--timeout-s", type=float, default=90.0, help="a chat that takes longer hung"
    )
    parser.add_argument(
        "--upstream", action="store_true", help="stub upstream workers instead of llama.cpp"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2: one stays up while another is killed")
    return args


def main() -> None:
    """Run the benchmark and print one JSON line."""
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="iamine-bench-"))
    try:
        with sigterm_as_interrupt(), Services(workdir) as services:
            result = asyncio.run(run(args, services))
    except KeyboardInterrupt:
        log("interrupted; every service is stopped")
        sys.exit(130)
    finally:
        if args.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
