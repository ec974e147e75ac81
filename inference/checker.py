"""The checker: benchmark every connected worker, check that it answers and calls tools.

Each run tests each model of each connected, non-excluded worker with three jobs pinned to that
worker (``only=``) at the lowest queue priority, so user traffic always goes first:

1. a **benchmark** on a fixed prompt: time to first token, prompt tokens/s (prompt tokens over
   the time to first token, so it includes the link's latency), generation tokens/s (tokens after
   the first over the time since the first);
2. a **known-answer** check, lenient on purpose (tiny models ramble): the answer must contain
   the expected word, case-insensitively;
3. a **tool-call** check, for models that announce tool support: a forced call of a known
   function must come back with that name and JSON-object arguments.

Results go to ``worker_benchmarks`` with the raw answers. The measured generation speed feeds the
router's speed weights; a worker that fails the tool-call check stops getting requests with tools
(``WorkerLink.tools_ok``); one that fails ``failures_to_exclude`` runs in a row (no answer, an
error, or a wrong known answer) is excluded with reason ``checker_failed``. A check that found the
worker busy for the whole queue wait is skipped, neither passed nor failed.

Whether a worker may be trusted is the canaries' question (``inference/canaries.py``): their
settings are the ``canaries`` group here, and they reuse :func:`run_pinned`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID

import anyio
import asyncpg
from pydantic import BaseModel, Field

from inference.dispatch import Degraded, JobFailed, Started, run_job
from inference.link import WorkerLink
from inference.protocol import Chunk, Done, Job, SamplingParams
from inference.registry import WorkerRegistry

CHECKER_FAILED = "checker_failed"
CHECKER_USER = "checker"

BENCHMARK_PROMPT = (
    "The pool routes each request to a volunteer machine. Machines with a GPU answer quickly; "
    "machines with only a CPU answer slowly but cost little. The router keeps a target share of "
    "work for each kind of machine and measures how fast each one is. Summarise this in one "
    "sentence."
)
KNOWN_QUESTION = "What is the capital of France? Answer with one word."
KNOWN_ANSWER = "paris"
PROBE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
PROBE_QUESTION = "What is the weather in Paris?"


class CanarySettings(BaseModel):
    """Canaries (docs/trust.md): the ``IAMINE_CHECKER__CANARIES__*`` group."""

    enabled: bool = Field(
        True, description="Verify workers with canaries (on joining, on suspicion, spot checks)."
    )
    prompts: int = Field(3, ge=1, le=12, description="Canary prompts per model per check.")
    max_tokens: int = Field(
        24, ge=4, le=256, description="Tokens each canary answer may take (greedy decoding)."
    )
    compare_chars: int = Field(
        32,
        ge=1,
        description="Characters of an answer (whitespace collapsed) that must equal the "
        "reference's: greedy decoding on other hardware may drift further on.",
    )
    prompt_allowance_tokens: int = Field(
        256,
        ge=0,
        description="Prompt tokens a worker may report above the prompt's UTF-8 bytes (chat "
        "template, default system prompt); more is forged usage.",
    )
    completion_slack_tokens: int = Field(
        8,
        ge=0,
        description="Completion tokens a worker may report above the bytes it streamed (special "
        "tokens); more is forged usage.",
    )
    speed_factor: float = Field(
        4.0,
        gt=1,
        description="A worker measured this many times faster than the fastest other worker of "
        "its model gets canaries (speed alone never slashes).",
    )
    spot_check_rate: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Chance that a verified or trusted worker gets canaries at a checker run.",
    )
    slash_cooldown_s: float = Field(
        86_400.0,
        ge=0,
        description="Seconds after a slash before canaries may verify the worker again (the "
        "admin may set its trust at any time).",
    )
    rejoin_after_s: float = Field(
        300.0,
        ge=0,
        description="A new worker that joins again within this many seconds of its last "
        "canaries is not checked again on joining (the next checker run does).",
    )
    queue_size: int = Field(
        256,
        ge=1,
        description="Workers waiting for canaries after joining; beyond, the next "
        "checker run takes them.",
    )


class CheckerSettings(BaseModel):
    """The worker checker: the ``IAMINE_CHECKER__*`` group of the hub's settings."""

    max_tokens: int = Field(
        32, gt=1, le=1024, description="Tokens the benchmark generates (fixed prompt)."
    )
    timeout_s: float = Field(
        60.0, gt=0, description="Most seconds one check may take, queue wait included."
    )
    queue_wait_s: float = Field(
        30.0,
        ge=0,
        description="Most seconds a check waits behind user traffic for its worker's slot.",
    )
    priority: int = Field(
        100, ge=0, description="Queue priority of checker jobs (user traffic is 0; lower first)."
    )
    failures_to_exclude: int = Field(
        3, ge=1, description="Failed runs in a row after which a worker is excluded."
    )
    speed_weight: float = Field(
        0.5, gt=0, le=1, description="Weight of a benchmark in the router's moving speed average."
    )
    canaries: CanarySettings = Field(default_factory=CanarySettings)


@dataclass
class CheckResult:
    """The checker's verdict on one model of one worker."""

    worker_id: str
    worker_name: str
    owner_id: UUID | None
    hardware: str
    model: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tps: float | None = None
    generation_tps: float | None = None
    ttft_ms: float | None = None
    known_answer_ok: bool | None = None
    tools_ok: bool | None = None
    error: str | None = None
    skipped: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Answered without error, and the known answer was right."""
        return self.error is None and self.known_answer_ok is not False


@dataclass
class PinnedRun:
    """What one pinned job produced, with timestamps (monotonic seconds)."""

    text: str = ""
    chunks: int = 0
    # UTF-8 bytes of text and tool-call pieces received: each generated token is at least one.
    output_bytes: int = 0
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    started_at: float | None = None
    first_at: float | None = None
    done_at: float | None = None
    done: Done | None = None
    degraded: str | None = None


class WorkerBusy(Exception):
    """The worker stayed busy (or left) for the whole queue wait."""


async def run_pinned(
    registry: WorkerRegistry, link: WorkerLink, job: Job, settings: CheckerSettings
) -> PinnedRun:
    """Run ``job`` on ``link`` only, behind user traffic; what came back, on the hub's clock.

    Raises :class:`WorkerBusy` when the worker could not take it within the queue wait,
    ``JobFailed`` when it failed, ``TimeoutError`` past ``timeout_s``.
    """
    run = PinnedRun()
    events = run_job(
        registry,
        job,
        needs_tools=bool(job.tools),
        user=CHECKER_USER,
        priority=settings.priority,
        only=link.id,
        wait_s=settings.queue_wait_s,
    )
    try:
        with anyio.fail_after(settings.timeout_s):
            async for event in events:
                now = time.monotonic()
                if isinstance(event, Started):
                    run.started_at = now
                elif isinstance(event, Degraded):
                    raise WorkerBusy(event.reason)
                elif isinstance(event, Chunk):
                    run.first_at = run.first_at or now
                    run.chunks += event.pieces
                    run.text += event.delta.content or ""
                    run.output_bytes += len((event.delta.content or "").encode())
                    for piece in event.delta.tool_calls or []:
                        call = run.calls.setdefault(piece.index, {"name": "", "arguments": ""})
                        name, arguments = piece.function.name or "", piece.function.arguments or ""
                        call["name"] += name
                        call["arguments"] += arguments
                        run.output_bytes += len((name + arguments).encode())
                elif isinstance(event, Done):
                    run.done_at, run.done = now, event
    finally:
        # Closing the job's stream cancels the job on its worker (after a timeout, say).
        if isinstance(events, AsyncGenerator):
            await events.aclose()
    return run


def _job(
    model: str, messages: list[dict[str, Any]], max_tokens: int, deadline_s: float, **extra: Any
) -> Job:
    return Job(
        job_id=uuid.uuid4().hex,
        model=model,
        messages=messages,
        params=SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=0),
        deadline_s=deadline_s,
        **extra,
    )


def _measure(result: CheckResult, run: PinnedRun) -> None:
    if run.done is None or run.started_at is None or run.first_at is None:
        return
    usage = run.done.usage
    result.prompt_tokens, result.completion_tokens = usage.prompt_tokens, usage.completion_tokens
    to_first = run.first_at - run.started_at
    result.ttft_ms = round(to_first * 1000, 1)
    if to_first > 0 and usage.prompt_tokens:
        result.prompt_tps = round(usage.prompt_tokens / to_first, 2)
    assert run.done_at is not None
    generating = run.done_at - run.first_at
    # Speed by what the hub received on its own clock: a worker's usage report is only its word.
    generated = min(usage.completion_tokens, run.chunks)
    if generated > 1 and generating > 0:
        result.generation_tps = round((generated - 1) / generating, 2)


def _tool_call_ok(run: PinnedRun) -> bool:
    for call in run.calls.values():
        if call["name"] != PROBE_TOOL["function"]["name"]:
            continue
        try:
            if isinstance(json.loads(call["arguments"] or "{}"), dict):
                return True
        except json.JSONDecodeError:
            continue
    return False


async def check_worker(
    registry: WorkerRegistry, link: WorkerLink, model: str, settings: CheckerSettings
) -> CheckResult:
    """Benchmark one model of one worker, then check a known answer and (if offered) tools."""
    result = CheckResult(link.id, link.name, link.owner_id, link.hardware, model)
    user = [{"role": "user", "content": BENCHMARK_PROMPT}]
    deadline = settings.timeout_s
    try:
        bench_job = _job(model, user, settings.max_tokens, deadline)
        bench = await run_pinned(registry, link, bench_job, settings)
        _measure(result, bench)
        result.raw["benchmark"] = bench.text
        known = [{"role": "user", "content": KNOWN_QUESTION}]
        answer = await run_pinned(registry, link, _job(model, known, 16, deadline), settings)
        result.known_answer_ok = KNOWN_ANSWER in answer.text.lower()
        result.raw["known_answer"] = answer.text
        if link.models[model].supports_tools:
            probe = _job(
                model,
                [{"role": "user", "content": PROBE_QUESTION}],
                64,
                deadline,
                tools=[PROBE_TOOL],
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
            )
            tools = await run_pinned(registry, link, probe, settings)
            result.tools_ok = _tool_call_ok(tools)
            result.raw["tool_calls"] = list(tools.calls.values())
    except WorkerBusy as exc:
        result.skipped = str(exc)
    except JobFailed as exc:
        result.error = f"{exc.code}: {exc.message}"
    except TimeoutError:
        result.error = f"timed_out: the check took longer than {settings.timeout_s:g} s"
    return result


async def save_result(conn: asyncpg.Connection, result: CheckResult) -> None:
    """Record one check in ``worker_benchmarks``."""
    await conn.execute(
        "INSERT INTO worker_benchmarks (worker_id, worker_name, owner_id, hardware, model, "
        "prompt_tokens, completion_tokens, prompt_tps, generation_tps, ttft_ms, known_answer_ok, "
        "tools_ok, passed, error, raw) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::jsonb)",
        result.worker_id,
        result.worker_name,
        result.owner_id,
        result.hardware,
        result.model,
        result.prompt_tokens,
        result.completion_tokens,
        result.prompt_tps,
        result.generation_tps,
        result.ttft_ms,
        result.known_answer_ok,
        result.tools_ok,
        result.passed,
        result.error,
        json.dumps(result.raw),
    )


async def failures_in_a_row(conn: asyncpg.Connection, worker_id: str, limit: int) -> int:
    """How many of the worker's newest recorded checks failed, counting back to a pass."""
    rows = await conn.fetch(
        "SELECT passed FROM worker_benchmarks WHERE worker_id = $1 ORDER BY id DESC LIMIT $2",
        worker_id,
        limit,
    )
    count = 0
    for row in rows:
        if row["passed"]:
            break
        count += 1
    return count


async def recent_results(conn: asyncpg.Connection, limit: int = 100) -> list[dict[str, Any]]:
    """The newest recorded checks, newest first, as plain dicts (for the admin and RED)."""
    rows = await conn.fetch(
        "SELECT id, worker_id, worker_name, hardware, model, prompt_tokens, completion_tokens, "
        "prompt_tps, generation_tps, ttft_ms, known_answer_ok, tools_ok, passed, error, raw, "
        "created_at FROM worker_benchmarks ORDER BY id DESC LIMIT $1",
        limit,
    )
    return [{**dict(r), "raw": json.loads(r["raw"])} for r in rows]


def apply_result(
    registry: WorkerRegistry, result: CheckResult, failures: int, settings: CheckerSettings
) -> str | None:
    """Feed the router and the worker's state; return the exclusion detail if it was excluded."""
    link = registry.workers.get(result.worker_id)
    if link is None:
        return None
    if result.generation_tps is not None:
        registry.router.observe_speed(link.id, result.generation_tps, settings.speed_weight)
    if result.tools_ok is not None:
        link.tools_ok = result.tools_ok
    if failures >= settings.failures_to_exclude and link.excluded is None:
        detail = f"failed {failures} checks in a row; last: {result.error or 'wrong known answer'}"
        registry.exclude(link, CHECKER_FAILED, detail)
        return detail
    return None


async def run_checker(
    registry: WorkerRegistry, pool: asyncpg.Pool, settings: CheckerSettings
) -> dict[str, Any]:
    """Check every connected, non-excluded worker, one at a time; return a summary."""
    summary: dict[str, Any] = {"checked": [], "skipped": [], "excluded": []}
    for link in list(registry.workers.values()):
        if link.excluded is not None:
            summary["skipped"].append({"worker": link.name, "reason": f"excluded: {link.excluded}"})
            continue
        for model in list(link.models):
            if registry.workers.get(link.id) is not link:
                summary["skipped"].append({"worker": link.name, "reason": "the worker left"})
                break
            result = await check_worker(registry, link, model, settings)
            if result.skipped is not None:
                summary["skipped"].append({"worker": link.name, "reason": result.skipped})
                continue
            async with pool.acquire() as conn:
                await save_result(conn, result)
                failures = await failures_in_a_row(
                    conn, result.worker_id, settings.failures_to_exclude
                )
            excluded = apply_result(registry, result, failures, settings)
            summary["checked"].append(_brief(result))
            if excluded is not None:
                summary["excluded"].append({"worker": link.name, "detail": excluded})
    return summary


def _brief(result: CheckResult) -> dict[str, Any]:
    keep = ("worker_name", "model", "generation_tps", "ttft_ms", "known_answer_ok", "tools_ok")
    brief = {k: v for k, v in asdict(result).items() if k in keep}
    return {**brief, "passed": result.passed, "error": result.error}
