"""Running one job on the pool: placement, fallback, failover, and the always-answer rule.

1. **Placement**: the router's choice among free workers of the model, or a wait in the fair queue
   (``queue_wait_s`` from pool_config) → route ``direct`` or ``queued``.
2. **Fallback**: the model's fallback chain (pool_config), tried in order → route ``fallback``.
3. **Peer pools**: a forwarding hook (federation fills it) → route ``forwarded``.
4. **Degraded**: nothing could serve it → a :class:`Degraded` event; the API answers with a clearly
   marked message instead of a capacity error.

A job that fails before any output is retried on another worker. One that fails mid-stream is
**failed over**: the same job goes to another worker with the text already streamed as
``assistant_prefix``, and the caller's stream continues without a seam; usage counts both parts.
Closing the stream early (the client went away) cancels the job on its worker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from inference.protocol import Chunk, Done, Error, Job, SamplingParams, Usage
from inference.registry import JobHandle, WorkerRegistry

BACKGROUND_PRIORITY = 50  # the hub's own jobs (compaction, extraction) wait behind user traffic
FAILOVER_CODES = frozenset({"worker_lost", "deadline_exceeded", "engine_error", "internal_error"})


class JobFailed(Exception):
    """The job could not be completed; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str, worker_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.worker_id = worker_id


@dataclass(frozen=True)
class Started:
    """First event of a run: where the job went and how it got there."""

    worker_id: str
    worker_name: str
    served_model: str
    route: str
    queue_ms: int


@dataclass(frozen=True)
class Degraded:
    """Nothing in the pool (or its peers) could serve the job; ``reason`` says why."""

    reason: str
    queue_ms: int


JobEvent = Started | Degraded | Chunk | Done
PeerForwarder = Callable[[Job], AsyncIterator[Chunk | Done]]


@dataclass
class _Progress:
    text: list[str]
    chunks: int = 0
    tool_calls: bool = False


async def _place(
    registry: WorkerRegistry,
    job: Job,
    needs_tools: bool,
    user: str,
    priority: int,
    only: str | None,
    wait_s: float | None,
) -> tuple[JobHandle, str, int] | None:
    started = time.monotonic()
    wait_s = registry.config.queue_wait_s if wait_s is None else wait_s
    handle = await registry.place(
        job, needs_tools=needs_tools, user=user, wait_s=wait_s, priority=priority, only=only
    )
    queue_ms = round((time.monotonic() - started) * 1000)
    if handle is not None:
        return handle, ("queued" if handle.queued else "direct"), queue_ms
    if only is not None:
        return None  # a job pinned to one worker tests that worker: no fallback model
    for model in registry.config.fallbacks.get(job.model, []):
        alternative = job.model_copy(update={"model": model})
        handle = await registry.place(
            alternative, needs_tools=needs_tools, user=user, wait_s=0, priority=priority
        )
        if handle is not None:
            return handle, "fallback", round((time.monotonic() - started) * 1000)
    return None


async def run_job(
    registry: WorkerRegistry,
    job: Job,
    *,
    needs_tools: bool,
    user: str = "pool",
    priority: int = 0,
    forward: PeerForwarder | None = None,
    only: str | None = None,
    wait_s: float | None = None,
) -> AsyncIterator[JobEvent]:
    """Yield ``Started`` (or ``Degraded``), then chunks and one ``done``; raise JobFailed.

    ``only`` pins the job to one worker id: no fallback model, no peer, no failover elsewhere.
    ``wait_s`` bounds the wait in the queue (default: the pool config's ``queue_wait_s``).
    """
    started = time.monotonic()
    placed = await _place(registry, job, needs_tools, user, priority, only, wait_s)
    if placed is None:
        queue_ms = round((time.monotonic() - started) * 1000)
        if forward is not None and only is None:
            yield Started("peer", "peer pool", job.model, "forwarded", queue_ms)
            async for event in forward(job):
                yield event
            return
        waited = registry.config.queue_wait_s if wait_s is None else wait_s
        reason = (
            f"no worker serving {job.model!r} was free within "
            f"{waited:g} s and no fallback model was free"
        )
        yield Degraded(reason, queue_ms)
        return
    handle, route, queue_ms = placed
    yield Started(handle.worker.id, handle.worker.name, handle.job.model, route, queue_ms)
    async for event in _relay(registry, handle, needs_tools, user, priority, only is not None):
        yield event


async def _relay(
    registry: WorkerRegistry,
    handle: JobHandle,
    needs_tools: bool,
    user: str,
    priority: int,
    pinned: bool = False,
) -> AsyncIterator[Chunk | Done]:
    settings = registry.settings
    original = handle.job
    progress = _Progress(text=[])
    tried = {handle.worker.id}
    earlier_usage: list[Usage] = []
    failure: Error | None = None
    for _attempt in range(settings.job_attempts + settings.failovers):
        failure = None
        try:
            async for frame in handle.stream(
                settings.first_token_timeout_s, settings.stall_timeout_s
            ):
                if isinstance(frame, Error):
                    failure = frame
                    break
                if isinstance(frame, Chunk):
                    progress.chunks += 1
                    progress.text.append(frame.delta.content or "")
                    progress.tool_calls |= bool(frame.delta.tool_calls)
                    yield frame
                else:
                    yield _combined(frame, original.model, earlier_usage)
                    return
        finally:
            await _release(registry, handle)
        assert failure is not None
        retry = None if pinned else _next_job(original, progress, failure, handle.worker.id)
        if retry is None:
            break
        relayed_before = sum(u.completion_tokens for u in earlier_usage)
        if progress.chunks > relayed_before:
            earlier_usage.append(_partial_usage(progress.chunks - relayed_before))
        next_handle = await registry.place(
            retry,
            needs_tools=needs_tools and bool(retry.tools),
            user=user,
            wait_s=registry.config.queue_wait_s,
            avoid=frozenset(tried),
            priority=priority,
        )
        if next_handle is None:
            break
        tried.add(next_handle.worker.id)
        handle = next_handle
    assert failure is not None
    raise JobFailed(failure.code, failure.message, handle.worker.id)


def _next_job(original: Job, progress: _Progress, failure: Error, worker_id: str) -> Job | None:
    """The job to send to another worker, or None when this failure must reach the caller."""
    if not progress.chunks:
        return original.model_copy(update={"job_id": uuid.uuid4().hex})
    if progress.tool_calls or failure.code not in FAILOVER_CODES:
        return None
    if original.params.response_format and original.params.response_format.get("type") != "text":
        return None  # a half-written JSON document cannot be resumed under its grammar
    prefix = (original.assistant_prefix or "") + "".join(progress.text)
    params = original.params
    if params.max_tokens is not None:
        remaining = params.max_tokens - progress.chunks
        if remaining <= 0:
            return None
        params = params.model_copy(update={"max_tokens": remaining})
    # The answer is already text, so its continuation is text: the retry carries no tools.
    return original.model_copy(
        update={
            "job_id": uuid.uuid4().hex,
            "assistant_prefix": prefix,
            "params": params,
            "tools": None,
            "tool_choice": None,
        }
    )


def _partial_usage(chunks: int) -> Usage:
    # The lost worker never sent its usage: each relayed chunk is one generated token.
    return Usage(prompt_tokens=0, completion_tokens=chunks, total_tokens=chunks, estimated=True)


def _combined(done: Done, model: str, earlier: list[Usage]) -> Done:
    """The final ``done`` of a failed-over answer: completion tokens of every part.

    The continuation's prompt held the earlier parts as its assistant prefix; they are counted
    once, as completion, so prompt + completion describe the whole answer.
    """
    if not earlier:
        return done
    relayed = sum(u.completion_tokens for u in earlier)
    completion = relayed + done.usage.completion_tokens
    prompt = max(done.usage.prompt_tokens - relayed, 0)
    usage = Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        estimated=True,
    )
    return done.model_copy(update={"usage": usage, "model": model})


async def _release(registry: WorkerRegistry, handle: JobHandle) -> None:
    # Shielded: this runs when the client disconnects and the request task is being cancelled.
    with anyio.CancelScope(shield=True):
        if handle.finished:
            await registry.finish(handle)
        else:
            await registry.cancel(handle)


async def complete_text(
    registry: WorkerRegistry,
    model: str,
    messages: list[dict[str, Any]],
    *,
    max_tokens: int,
    temperature: float,
    priority: int = BACKGROUND_PRIORITY,
) -> str:
    """Run one text job on the pool and return the whole answer (for the hub's own work).

    Raises :class:`JobFailed` when no worker serves ``model``, nothing could take the job, or
    the worker failed. Background work queues behind user traffic (``priority``).
    """
    if not registry.serves(model):
        raise JobFailed("model_unavailable", f"no worker serves {model!r}")
    job = Job(
        job_id=uuid.uuid4().hex,
        model=model,
        messages=messages,
        params=SamplingParams(max_tokens=max_tokens, temperature=temperature),
        deadline_s=registry.settings.job_deadline_s,
    )
    parts: list[str] = []
    async for event in run_job(registry, job, needs_tools=False, priority=priority):
        if isinstance(event, Degraded):
            raise JobFailed("degraded", event.reason)
        if isinstance(event, Chunk) and event.delta.content:
            parts.append(event.delta.content)
    return "".join(parts)
