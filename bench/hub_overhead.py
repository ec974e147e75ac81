"""Benchmark what the hub adds to a chat: direct vs through the hub vs through LiteLLM.

A stub OpenAI-compatible server (``bench/stub_upstream.py``) answers ``--tokens`` tokens
instantly. The same chat completions, streamed and plain (JSON), are sent at each concurrency
level to:

- ``direct``: the stub itself (the floor: client + stub);
- ``hub``: ``iamine serve`` with an ``iamine worker --upstream`` in front of the stub (the whole
  path: HTTP API, auth, the $IAMINE ledger, routing, the worker's WebSocket, the worker's HTTP
  client);
- ``hub_ledger_off``: the same with the ledger off (``IAMINE_ECONOMY__ENABLED=false``), to
  show what the ledger costs;
- ``litellm``: LiteLLM's proxy in front of the same stub (the peer), when it is installed.

Per level, mode and path: latency and time-to-first-token (first non-empty ``delta.content``)
p50/p99 in ms, requests per second, errors (a non-200 answer, a broken stream, or any answer
but the stub's), the CPU each process used (in cores), the path's own processes and cores
beside its req/s, and their CPU ms per request (``proxy_cpu_ms_per_req``: what the hub or
LiteLLM costs, robust to a busy machine). One JSON line on stdout; progress on stderr.

Run: ``python bench/hub_overhead.py`` (5 to 8 minutes on 2 cores), ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from services import (
    REPO,
    Service,
    Services,
    cpu_seconds,
    free_port,
    log,
    sigterm_as_interrupt,
    start_hub,
    start_stub,
    start_worker,
    wait_ready,
)
from stub_upstream import token_text

MODEL = "stub"
LITELLM_KEY = "sk-bench-overhead"
# Settings that keep LiteLLM's proxy to proxying: no telemetry, no cost-map download at start,
# no .env loading, errors-only logging (which also silences uvicorn's per-request access log).
LITELLM_ENV = {
    "LITELLM_TELEMETRY_DISABLED": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_MODE": "PRODUCTION",
    "LITELLM_LOG": "ERROR",
}
# Processes every path has: not counted as the proxy's cost.
SHARED = frozenset({"client", "stub"})
SETUP_HINT = "LiteLLM not found: run scripts/setup-litellm (or set LITELLM_BIN)"


@dataclass
class Route:
    """One way to reach the stub: its base URL, headers, and the processes that serve it."""

    name: str
    base_url: str
    headers: dict[str, str]
    processes: dict[str, Callable[[], list[psutil.Process]]]


@dataclass
class Sample:
    """One request's outcome; times are seconds from sending it."""

    latency_s: float
    ttft_s: float | None
    error: str | None = None


@dataclass
class Level:
    """Every sample of one path at one concurrency, and the CPU its processes used."""

    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_cores: dict[str, float] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    others_cpu_cores: float = 0.0
    settle_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The JSON summary of the level."""
        good = [s for s in self.samples if s.error is None]
        latencies = [s.latency_s * 1000 for s in good]
        ttfts = [s.ttft_s * 1000 for s in good if s.ttft_s is not None]
        errors = [s.error for s in self.samples if s.error is not None]
        return {
            "p50_ms": _round(percentile(latencies, 50)),
            "p99_ms": _round(percentile(latencies, 99)),
            "ttft_p50_ms": _round(percentile(ttfts, 50)),
            "ttft_p99_ms": _round(percentile(ttfts, 99)),
            "req_s": round(len(good) / self.wall_s, 1) if self.wall_s else None,
            "proxy_processes": sum(n for name, n in self.processes.items() if name not in SHARED),
            "proxy_cpu_cores": round(self._proxy_cores(), 2),
            "requests": len(self.samples),
            "errors": len(errors),
            **({"first_error": errors[0][:200]} if errors else {}),
            "cpu_cores": {name: round(cores, 2) for name, cores in self.cpu_cores.items()},
            "processes": self.processes,
            "proxy_cpu_ms_per_req": self.proxy_cpu_ms_per_request(),
            "others_cpu_cores": round(self.others_cpu_cores, 2),
            "settle_s": round(self.settle_s, 1),
        }

    def _proxy_cores(self) -> float:
        return sum(cores for name, cores in self.cpu_cores.items() if name not in SHARED)

    def proxy_cpu_ms_per_request(self) -> float:
        """CPU ms per request of the processes between client and stub: the proxy's own cost.

        That is the hub, its worker and its database, or LiteLLM. Unlike latency, it barely
        moves when other work shares the machine.
        """
        return round(1000 * self._proxy_cores() * self.wall_s / max(len(self.samples), 1), 2)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The ``pct`` percentile with linear interpolation (numpy's default); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def request_body(tokens: int, stream: bool) -> bytes:
    """The one chat request every path gets, serialised once."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
        "stream": stream,
        "max_tokens": tokens,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def expected_text(tokens: int) -> str:
    """The answer the stub streams: the client checks every path relays exactly this."""
    return "".join(token_text(i) for i in range(tokens))


async def stream_once(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: bytes, expected: str
) -> Sample:
    """Send one streamed chat; time the first content token and the end of the stream."""
    started = time.perf_counter()
    ttft: float | None = None
    received: list[str] = []
    try:
        async with client.stream("POST", url, content=body, headers=headers) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                elapsed = time.perf_counter() - started
                return Sample(elapsed, None, f"HTTP {response.status_code}: {text}")
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
    if (text := "".join(received)) != expected:
        return Sample(elapsed, ttft, f"wrong answer: {text[:60]!r}… ({len(text)} characters)")
    return Sample(elapsed, ttft)


async def plain_once(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: bytes, expected: str
) -> Sample:
    """Send one plain (JSON) chat; time the whole answer."""
    started = time.perf_counter()
    try:
        response = await client.post(url, content=body, headers=headers)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            return Sample(elapsed, None, f"HTTP {response.status_code}: {response.text}")
        text = response.json()["choices"][0]["message"]["content"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        return Sample(time.perf_counter() - started, None, repr(exc))
    if text != expected:
        return Sample(elapsed, None, f"wrong answer: {str(text)[:60]!r}…")
    return Sample(elapsed, None)


async def drive(
    clients: Sequence[httpx.AsyncClient],
    route: Route,
    requests: int,
    stream: bool,
    tokens: int,
    on_done: Callable[[], None],
    min_s: float = 0.0,
) -> list[Sample]:
    """Run ``requests`` chats, one simulated user per client, each user one chat at a time;
    more while fewer than ``min_s`` seconds have passed."""
    url = f"{route.base_url}/v1/chat/completions"
    headers = {**route.headers, "content-type": "application/json"}
    body, expected = request_body(tokens, stream), expected_text(tokens)
    once = stream_once if stream else plain_once
    samples: list[Sample] = []
    remaining = requests
    until = time.perf_counter() + min_s

    async def user(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0 or time.perf_counter() < until:
            remaining -= 1
            samples.append(await once(client, url, headers, body, expected))
            on_done()

    async with asyncio.TaskGroup() as group:
        for client in clients:
            group.create_task(user(client))
    return samples


async def measure(
    route: Route,
    others: Sequence[Route],
    concurrency: int,
    stream: bool,
    plan: Plan,
    progress: Progress,
) -> Level:
    """Warm up (opening every connection), then time the level's chats at ``concurrency``.

    It first waits for the other paths' processes to go idle (LiteLLM keeps working for a
    while after its last answer), and records what they still used meanwhile.
    """
    requests, warmup = plan.requests_at(concurrency), plan.warmup_at(concurrency)
    mode = "stream" if stream else "plain"
    task = progress.add_task(
        f"{route.name:>14} {mode:>6} × {concurrency:<3}", total=warmup + requests
    )
    advance = functools.partial(progress.advance, task)
    background = [procs for other in others for procs in proxy_processes(other)]
    settle_s = await settle(background)
    # HTTP/1.1 keep-alive, a client of one connection per simulated user: one shared pool of
    # many connections costs httpcore a poll of every idle connection per request, which made
    # the load generator itself the bottleneck of plain (short) chats.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0))
            )
            for _ in range(concurrency)
        ]
        await drive(clients, route, warmup, stream, plan.tokens, advance)
        before = {name: cpu_seconds(procs()) for name, procs in route.processes.items()}
        others_before = sum(cpu_seconds(procs()) for procs in background)
        client_before = time.process_time()
        started = time.perf_counter()
        samples = await drive(
            clients, route, requests, stream, plan.tokens, advance, plan.min_seconds
        )
        wall = time.perf_counter() - started
        cpu = {
            name: (cpu_seconds(procs()) - before[name]) / wall
            for name, procs in route.processes.items()
        }
        cpu["client"] = (time.process_time() - client_before) / wall
        others_cores = (sum(cpu_seconds(procs()) for procs in background) - others_before) / wall
    processes = {name: len(procs()) for name, procs in route.processes.items()}
    return Level(samples, wall, cpu, processes | {"client": 1}, others_cores, settle_s)


def proxy_processes(route: Route) -> list[Callable[[], list[psutil.Process]]]:
    """The process groups of a path that no other path shares."""
    return [procs for name, procs in route.processes.items() if name not in SHARED]


async def settle(
    background: Sequence[Callable[[], list[psutil.Process]]],
    idle_cores: float = 0.05,
    limit_s: float = 30.0,
) -> float:
    """Wait until ``background`` uses under ``idle_cores`` (at most ``limit_s``); seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        before = sum(cpu_seconds(procs()) for procs in background)
        await asyncio.sleep(0.5)
        if sum(cpu_seconds(procs()) for procs in background) - before < idle_cores * 0.5:
            break
    return time.perf_counter() - started


def find_litellm() -> Path | None:
    """``$LITELLM_BIN``, else the repository's ``.venv-litellm`` (made by scripts/setup-litellm)."""
    for candidate in [os.environ.get("LITELLM_BIN"), REPO / ".venv-litellm/bin/litellm"]:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def litellm_version(binary: Path) -> str | None:
    """The installed LiteLLM version, asked of the interpreter beside its launcher."""
    python = binary.parent / "python"
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout.strip()
    return None


def litellm_config(workdir: Path, stub_url: str) -> Path:
    """Write LiteLLM's config: one model, the stub, and a master key (auth, as the hub does)."""
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {stub_url}/v1\n"
        "      api_key: x\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
        "litellm_settings:\n"
        "  set_verbose: false\n"
    )
    return config


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` rounded, or None when either is missing."""
    return round(a / b, 2) if a is not None and b else None


def compare(paths: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """One level and mode's headline: what the hub and its ledger add, the hub against LiteLLM."""
    direct, hub = paths["direct"] or {}, paths["hub"] or {}
    off, litellm = paths.get("hub_ledger_off") or {}, paths.get("litellm") or {}
    return {
        "hub_added_ms_p50": difference(hub.get("p50_ms"), direct.get("p50_ms")),
        "hub_added_ttft_ms_p50": difference(hub.get("ttft_p50_ms"), direct.get("ttft_p50_ms")),
        "ledger_added_ms_p50": difference(hub.get("p50_ms"), off.get("p50_ms")),
        "ledger_cpu_ms_per_req": difference(
            hub.get("proxy_cpu_ms_per_req"), off.get("proxy_cpu_ms_per_req")
        ),
        "hub_vs_litellm_p50": ratio(hub.get("p50_ms"), litellm.get("p50_ms")),
        "hub_vs_litellm_ttft_p50": ratio(hub.get("ttft_p50_ms"), litellm.get("ttft_p50_ms")),
        "hub_vs_litellm_req_s": ratio(hub.get("req_s"), litellm.get("req_s")),
        "hub_vs_litellm_cpu_per_req": ratio(
            hub.get("proxy_cpu_ms_per_req"), litellm.get("proxy_cpu_ms_per_req")
        ),
    }


def difference(a: float | None, b: float | None) -> float | None:
    """``a - b`` rounded, or None when either is missing."""
    return round(a - b, 2) if a is not None and b is not None else None


@dataclass(frozen=True)
class Plan:
    """What to run: levels, tokens per answer, requests per level."""

    levels: list[int]
    modes: list[str]
    tokens: int
    requests: int | None
    quick: bool
    min_seconds: float = 2.0
    """A level is measured for at least this long: CPU times tick in hundredths of a second
    per process, and 200 plain chats through the hub take a fifth of one."""

    def requests_at(self, concurrency: int) -> int:
        """Measured requests at a level (enough for a p99 at low concurrency)."""
        if self.requests is not None:
            return self.requests
        return max(20, concurrency) if self.quick else max(200, 3 * concurrency)

    def warmup_at(self, concurrency: int) -> int:
        """Warm-up requests at a level: at least one per connection."""
        return concurrency if self.quick else max(20, concurrency)


def start_litellm(services: Services, stub_url: str) -> tuple[Service, str, dict[str, Any]] | None:
    """Start LiteLLM's proxy in front of the stub (not waiting for it); None if not installed."""
    binary = find_litellm()
    if binary is None:
        return None
    port = free_port()
    config = litellm_config(services.workdir, stub_url)
    argv = [str(binary), "--config", str(config), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--num_workers", "1"]
    service = services.start("litellm", argv, {**os.environ, **LITELLM_ENV})
    info = {
        "binary": str(binary),
        "version": litellm_version(binary),
        "env": LITELLM_ENV,
        "config": "one model (openai/stub), master_key set, set_verbose false, 1 worker",
    }
    return service, f"http://127.0.0.1:{port}", info


async def start_routes(
    services: Services, plan: Plan, skip_litellm: bool, skip_ledger_off: bool
) -> tuple[list[Route], dict[str, Any]]:
    """Start every service; return the routes to measure and what to say about LiteLLM."""
    stub, stub_url = start_stub(services, plan.tokens)
    # LiteLLM first: it takes the longest to come up, and it does so while the hub starts.
    litellm = None if skip_litellm else start_litellm(services, stub_url)
    await wait_ready(stub, f"{stub_url}/v1/models")
    routes = [Route("direct", stub_url, {}, {"stub": stub.processes})]

    paths: list[tuple[str, dict[str, str]]] = [("hub", {})]
    if not skip_ledger_off:
        paths.append(("hub_ledger_off", {"IAMINE_ECONOMY__ENABLED": "false"}))
    for name, env in paths:
        log(f"starting {name} (embedded PostgreSQL, CLI user and tokens)")
        hub = await start_hub(services, name, env)
        worker = await start_worker(
            services, hub, MODEL, "--upstream", stub_url, "--slots", "256", name=f"{name}-worker"
        )
        processes = {"hub": hub.service.processes, "worker": worker.processes}
        processes |= {"postgres": hub.postgres, "stub": stub.processes}
        routes.append(Route(name, hub.url, hub.auth(), processes))

    if litellm is None:
        note = "skipped (--no-litellm)" if skip_litellm else SETUP_HINT
        log(note)
        return routes, {"note": note}
    service, url, info = litellm
    log("waiting for LiteLLM's proxy")
    await wait_ready(service, f"{url}/health/liveliness", timeout_s=180)
    auth = {"Authorization": f"Bearer {LITELLM_KEY}"}
    routes.append(
        Route("litellm", url, auth, {"litellm": service.processes, "stub": stub.processes})
    )
    return routes, info


async def run(
    plan: Plan, services: Services, skip_litellm: bool, skip_ledger_off: bool
) -> dict[str, Any]:
    """Start the stub, LiteLLM, the hubs and their workers; measure every level of every path."""
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews results
    routes, litellm_info = await start_routes(services, plan, skip_litellm, skip_ledger_off)
    results: dict[str, Any] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    # Redrawn twice a second: the bars share this process (and its GIL) with the client.
    console = Console(stderr=True)
    with Progress(*columns, TimeElapsedColumn(), console=console, refresh_per_second=2) as progress:
        for concurrency in plan.levels:
            modes: dict[str, Any] = {}
            for mode in plan.modes:
                paths: dict[str, Any] = {"litellm": None}
                for route in routes:
                    others = [other for other in routes if other is not route]
                    measured = await measure(
                        route, others, concurrency, mode == "stream", plan, progress
                    )
                    paths[route.name] = measured.summary()
                modes[mode] = paths | compare(paths)
            results[str(concurrency)] = modes
    return {
        "bench": "hub_overhead",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "loadavg_1m_before": load_before,
        },
        "tokens": plan.tokens,
        "min_seconds": plan.min_seconds,
        "modes": plan.modes,
        "levels": results,
        "litellm": litellm_info,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,50,200", help="concurrent streams, comma-separated")
    parser.add_argument("--modes", default="stream,plain", help="stream, plain or both")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per answer")
    parser.add_argument("--requests", type=int, help="measured requests per level and path")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=2.0,
        help="measure each level and path for at least this long (0 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="few requests: a smoke run")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM path")
    parser.add_argument(
        "--no-ledger-off", action="store_true", help="skip the hub path with the ledger off"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs")
    return parser.parse_args(argv)


def main() -> None:
    """Run the benchmark and print one JSON line."""
    args = parse_args()
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not modes or set(modes) - {"stream", "plain"}:
        sys.exit(f"--modes takes stream, plain or both, not {args.modes!r}")
    plan = Plan(
        levels=[int(level) for level in args.levels.split(",") if level.strip()],
        modes=modes,
        tokens=args.tokens,
        requests=args.requests,
        quick=args.quick,
        min_seconds=0.0 if args.quick else args.min_seconds,
    )
    workdir = Path(tempfile.mkdtemp(prefix="iamine-bench-"))
    try:
        with sigterm_as_interrupt(), Services(workdir) as services:
            loop_factory = None
            with contextlib.suppress(ImportError):
                import uvloop

                loop_factory = uvloop.new_event_loop
            result = asyncio.run(
                run(plan, services, args.no_litellm, args.no_ledger_off), loop_factory=loop_factory
            )
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
