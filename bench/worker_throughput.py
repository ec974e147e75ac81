"""Benchmark tokens/s of the bundled model: direct in llama.cpp vs through the hub and a worker.

The same fixed prompts (temperature 0, fixed ``max_tokens``, fixed seed) run on two paths, in
turn (each prompt direct, then through the hub, so that drifting machine load hits both alike):

- ``direct``: ``inference.engine.LlamaEngine`` on the bundled SmolLM2-135M, in this process;
- ``hub``: ``iamine serve`` plus a real ``iamine worker`` process on the same model, driven by the
  official ``openai`` SDK (streaming, ``stream_options.include_usage``).

Per path: generation tok/s (tokens after the first, over the time after the first), prompt tok/s
(prompt tokens over the time to the first token, so on the hub path it includes the trip to the
worker and back), time to first token, and whether both paths gave the same answers. Prints one
JSON line on stdout with ``hub / direct`` ratios; progress goes to stderr.

Run: ``python bench/worker_throughput.py`` (under a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from openai import AsyncOpenAI
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from services import (
    Hub,
    Services,
    cpu_seconds,
    log,
    sigterm_as_interrupt,
    start_hub,
    start_worker,
)

from inference.engine import Finish, LlamaEngine, bundled_model_path
from inference.protocol import Delta, Job, SamplingParams

MODEL_ID = "smollm2-135m-instruct"
WARMUP_PROMPT = "Say hello in five words."
_TEXT = (
    "A cooperative compute pool lets volunteers lend their machines to people who need "
    "language models. Each volunteer runs a worker that connects out to a hub, so a graphics "
    "card behind a home router can serve without any port being opened. The hub checks every "
    "request's token, picks a worker that serves the requested model and has a free slot, "
    "sends it the job over a WebSocket, and relays the answer to the client as a stream of "
    "server-sent events. It keeps a ledger of who served what, so that work done for the pool "
    "is credited to the volunteer who did it. Users keep a private memory of their "
    "conversations, encrypted under a key that only their own tokens can unwrap, so the "
    "operator of the pool cannot read it. Pools can federate: a request that no local worker "
    "can take is forwarded to a peer pool, signed with the pool's key, and the answer is "
    "relayed back as if it had been served at home."
)
PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain step by step how the gears of a bicycle make climbing a hill easier.",
    f"{_TEXT}\n\nSummarise the text above in three sentences, then list its key ideas.",
)


@dataclass(frozen=True)
class Run:
    """One generation: token counts and times in seconds from sending the request."""

    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    total_s: float
    text: str


def summarize(runs: Sequence[Run]) -> dict[str, Any]:
    """Aggregate runs into tokens per second and time-to-first-token."""
    generated = sum(max(run.completion_tokens - 1, 0) for run in runs)
    generating_s = sum(run.total_s - run.ttft_s for run in runs)
    ttfts = sorted(run.ttft_s for run in runs)
    return {
        "generation_tok_s": round(generated / generating_s, 1) if generating_s else None,
        "prompt_tok_s": round(sum(run.prompt_tokens for run in runs) / sum(ttfts), 1),
        "ttft_ms_mean": round(1000 * sum(ttfts) / len(ttfts), 1),
        "prompt_tokens": sum(run.prompt_tokens for run in runs),
        "completion_tokens": sum(run.completion_tokens for run in runs),
        "wall_s": round(sum(run.total_s for run in runs), 2),
    }


def ratio(hub: float | None, direct: float | None) -> float | None:
    """``hub / direct`` rounded, or None when either is missing."""
    return round(hub / direct, 3) if hub is not None and direct else None


def workload(rounds: int) -> list[str]:
    """The prompts in the order each path runs them (consecutive prompts differ)."""
    return [prompt for _ in range(rounds) for prompt in PROMPTS]


async def direct_run(engine: LlamaEngine, prompt: str, max_tokens: int) -> Run:
    """Generate one answer on the engine, as a worker would."""
    job = Job(
        job_id=uuid.uuid4().hex,
        model=MODEL_ID,
        messages=[{"role": "user", "content": prompt}],
        params=SamplingParams(max_tokens=max_tokens, temperature=0, seed=0),
        deadline_s=600,
    )
    started = time.perf_counter()
    ttft: float | None = None
    pieces: list[str] = []
    finish: Finish | None = None
    async for event in engine.generate(job):
        if isinstance(event, Delta) and event.content:
            ttft = ttft if ttft is not None else time.perf_counter() - started
            pieces.append(event.content)
        elif isinstance(event, Finish):
            finish = event
    total = time.perf_counter() - started
    assert finish is not None and ttft is not None, "the engine gave no answer"
    usage = finish.usage
    return Run(usage.prompt_tokens, usage.completion_tokens, ttft, total, "".join(pieces))


async def hub_run(client: AsyncOpenAI, prompt: str, max_tokens: int) -> Run:
    """Stream one answer through the hub with the openai SDK."""
    started = time.perf_counter()
    ttft: float | None = None
    pieces: list[str] = []
    usage = None
    stream = await client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        seed=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and (content := chunk.choices[0].delta.content):
            ttft = ttft if ttft is not None else time.perf_counter() - started
            pieces.append(content)
        if chunk.usage is not None:
            usage = chunk.usage
    total = time.perf_counter() - started
    assert usage is not None and ttft is not None, "the hub gave no answer or no usage"
    return Run(usage.prompt_tokens, usage.completion_tokens, ttft, total, "".join(pieces))


@dataclass
class Meter:
    """CPU and wall seconds a path's processes spend on its runs (and only on its runs)."""

    clocks: Mapping[str, Callable[[], float]]
    cpu_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    async def time(self, work: Awaitable[Run]) -> Run:
        """Await one run, adding what it cost to the totals."""
        before = {name: clock() for name, clock in self.clocks.items()}
        started = time.perf_counter()
        result = await work
        self.wall_s += time.perf_counter() - started
        for name, clock in self.clocks.items():
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + clock() - before[name]
        return result

    def cores(self) -> dict[str, float]:
        """Average cores each process used while the path ran."""
        return {name: round(cpu / self.wall_s, 2) for name, cpu in self.cpu_s.items()}


async def start_pool(services: Services, threads: int | None) -> tuple[Hub, Meter]:
    """Start a hub and an ``iamine worker`` on the bundled model, and a meter on them."""
    log("starting the hub (embedded PostgreSQL, CLI user and tokens)")
    hub = await start_hub(services)
    extra = ["--threads", str(threads)] if threads else []
    log("starting iamine worker on the bundled model")
    worker = await start_worker(services, hub, MODEL_ID, "--slots", "1", *extra)
    processes = {"hub": hub.service.processes, "worker": worker.processes, "postgres": hub.postgres}
    clocks = {name: functools.partial(_cpu_of, procs) for name, procs in processes.items()}
    return hub, Meter(clocks)


def _cpu_of(processes: Callable[[], list[psutil.Process]]) -> float:
    return cpu_seconds(processes())


async def run(args: argparse.Namespace, services: Services) -> dict[str, Any]:
    """Run each prompt direct, then through the hub, in turn (so load drift hits both alike)."""
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews results
    prompts = workload(args.rounds)
    hub, hub_meter = await start_pool(services, args.threads)
    engine = LlamaEngine(bundled_model_path(), n_threads=args.threads, model_id=MODEL_ID)
    direct_meter = Meter({"bench": time.process_time})
    client = AsyncOpenAI(
        base_url=f"{hub.url}/v1", api_key=hub.user_token, max_retries=0, timeout=600
    )
    direct_runs: list[Run] = []
    hub_runs: list[Run] = []
    try:
        await asyncio.to_thread(engine.load)
        await direct_run(engine, WARMUP_PROMPT, 16)
        await hub_run(client, WARMUP_PROMPT, 16)
        columns = (TextColumn("prompts"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        # No refresh thread: it would share the GIL with the direct path's llama.cpp thread.
        with Progress(*columns, console=Console(stderr=True), auto_refresh=False) as bar:
            task = bar.add_task("prompts", total=len(prompts))
            for prompt in prompts:
                direct_runs.append(
                    await direct_meter.time(direct_run(engine, prompt, args.max_tokens))
                )
                hub_runs.append(await hub_meter.time(hub_run(client, prompt, args.max_tokens)))
                bar.advance(task)
                bar.refresh()
    finally:
        await client.close()
        engine.close()
    direct = summarize(direct_runs) | {"cpu_cores": direct_meter.cores()}
    hub_result = summarize(hub_runs) | {"cpu_cores": hub_meter.cores()}
    return {
        "bench": "worker_throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "loadavg_1m_before": load_before,
        },
        "model": MODEL_ID,
        "threads": args.threads or max(multiprocessing.cpu_count() // 2, 1),
        "max_tokens": args.max_tokens,
        "runs": len(prompts),
        "direct": direct,
        "hub": hub_result,
        "same_answers": [r.text for r in direct_runs] == [r.text for r in hub_runs],
        "hub_vs_direct_generation": ratio(
            hub_result["generation_tok_s"], direct["generation_tok_s"]
        ),
        "hub_vs_direct_prompt": ratio(hub_result["prompt_tok_s"], direct["prompt_tok_s"]),
        "hub_added_ttft_ms": round(hub_result["ttft_ms_mean"] - direct["ttft_ms_mean"], 1),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per answer, at most")
    parser.add_argument("--rounds", type=int, default=3, help="times each prompt runs")
    parser.add_argument(
        "--threads", type=int, help="llama.cpp threads, both paths (default: llama.cpp's)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs")
    return parser.parse_args(argv)


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
