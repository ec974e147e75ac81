"""Running one job on the pool: placement, fallback, failover, and the always-answer rule.

1. **Placement**: the router's choice among free workers of the model, or a wait in the fair queue
   (``queue_wait_s`` from pool_config) → route ``direct`` or ``queued``; with several hub
   replicas the router weighs the other replicas' free workers with this one's, pool-wide, and
   may choose one of theirs → route ``replica`` (``hub/replica_dispatch.py``: its handle fails
   over like a local one).
2. **Fallback**: the model's fallback chain (pool_config), tried in order → route ``fallback``.
3. **Peer pools**: the peer step (federation fills it) → route ``peer``: taken before placement
   when no local worker can take the job soon (none capable, or the predicted wait above the
   step's threshold) and no other hub replica has a free one, and after an unsuccessful wait
   instead of ``pool_busy`` or degraded.
4. **Degraded**: nothing could serve it → a :class:`Degraded` event; the API answers with a clearly
   marked message instead of a capacity error.

A job that fails before any output is retried on another worker. One that fails mid-stream is
**failed over**: the same job goes to another worker with the text already streamed as
``assistant_prefix``, and the caller's stream continues without a seam; usage counts both parts.
Closing the stream early (the client went away) cancels the job on its worker.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import anyio

from inference.link import JobHandle
from inference.pool_config import JobKind
from inference.protocol import Chunk, Done, Error, Job, SamplingParams, Usage
from inference.registry import WorkerRegistry

BACKGROUND_PRIORITY = 50  # the hub's own jobs (compaction, extraction) wait behind user traffic
FAILOVER_CODES = frozenset({"worker_lost", "deadline_exceeded", "engine_error", "internal_error"})
# Failures that another worker would repeat: the request itself is at fault.
FINAL_CODES = frozenset({"context_length_exceeded", "invalid_request"})
POOL_BUSY = "pool_busy"


class JobFailed(Exception):
    """The job could not be completed; ``code`` is machine-readable."""

    def __init__(
        self,
        code: str,
        message: str,
        worker_id: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.worker_id = worker_id
        self.retry_after_s = retry_after_s


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


@dataclass(frozen=True)
class Waiting:
    """The job waits in the queue for a worker (repeated every ``queue_notice_s``)."""

    queue_ms: int
    predicted_s: float


JobEvent = Waiting | Started | Degraded | Chunk | Done


@dataclass(frozen=True)
class Forwarded:
    """A job a peer pool accepted: its pool id and its answer's events (chunks, one done).

    The events raise :class:`JobFailed` when the peer fails after accepting the job.
    """

    peer: str
    events: AsyncIterator[Chunk | Done]


class PeerStep(Protocol):
    """The router's peer step: whether a job should leave the pool, and sending it."""

    def wanted(self, model: str, predicted_wait_s: Callable[[], float]) -> bool:
        """Whether to forward now, given the local predicted wait (``inf``: no capable worker).

        The wait is computed only if asked: a pool with no live offer never pays for it.
        """
        ...

    async def open(self, job: Job) -> Forwarded | None:
        """Send the job to the best live peer; ``None`` when no peer took it."""
        ...


@dataclass
class _Progress:
    text: list[str]
    chunks: int = 0
    tool_calls: bool = False


@dataclass(frozen=True)
class _Placed:
    handle: JobHandle
    route: str
    queue_ms: int


@dataclass(frozen=True)
class _Unplaced:
    busy: bool  # workers of the model are alive, only busy (or hopelessly behind)
    predicted_s: float


def _ms(since: float) -> int:
    return round((time.monotonic() - since) * 1000)


async def _place(
    registry: WorkerRegistry,
    job: Job,
    needs_tools: bool,
    user: str,
    priority: int,
    only: str | None,
    wait_s: float | None,
    needs_context: int,
    *,
    min_trust: int = 0,
    avoid: frozenset[str] = frozenset(),
    fallbacks: bool = True,
) -> AsyncGenerator[Waiting | _Placed | _Unplaced, None]:
    """Find a worker for the job, yielding ``Waiting`` while queued; the last item says how.

    While a capable worker of the model is connected the job waits as long as the predicted
    wait fits in ``max_queue_wait_s``, trying the fallback models once ``queue_wait_s`` has
    passed; with none connected it waits ``queue_wait_s`` for one to return. An explicit
    ``wait_s`` (the hub's own jobs, the checker) bounds the wait whatever the prediction.
    ``avoid`` names workers that already failed this job (failover); a continuation takes no
    ``fallbacks`` (another model cannot finish this one's sentence).
    """
    started = time.monotonic()
    # With several hub replicas, the router weighs their free workers with this one's.
    handle = registry.try_place(
        job,
        needs_tools=needs_tools,
        user=user,
        avoid=avoid,
        only=only,
        needs_context=needs_context,
        min_trust=min_trust,
        anywhere=True,
    )
    if handle is not None:
        await registry.start(handle)
        yield _Placed(handle, "direct" if registry.holds(handle) else "replica", _ms(started))
        return
    config = registry.config
    grace = config.queue_wait_s if wait_s is None else wait_s
    bound = max(config.max_queue_wait_s, grace) if wait_s is None else wait_s
    ticket = registry.enqueue(
        job,
        needs_tools=needs_tools,
        user=user,
        priority=priority,
        avoid=avoid,
        only=only,
        needs_context=needs_context,
        min_trust=min_trust,
    )
    predicted = 0.0
    try:
        while True:
            elapsed = time.monotonic() - started
            predicted = registry.predicted_wait_s(
                job.model, needs_tools, needs_context, avoid, min_trust
            )
            alive = predicted < math.inf
            limit = bound if alive and elapsed + predicted <= bound else grace
            if fallbacks and only is None and elapsed >= grace:
                placed = await _fallback(registry, job, needs_tools, user, started, min_trust)
                if placed is not None:
                    yield placed
                    return
            if elapsed >= limit:
                break
            wait = min(limit - elapsed, registry.settings.queue_notice_s)
            # With several replicas the queue is released pool-wide: the slot may be another's.
            handle = await registry.await_slot(ticket, wait)
            if handle is not None:
                await registry.start(handle)
                yield _Placed(
                    handle, "queued" if registry.holds(handle) else "replica", _ms(started)
                )
                return
            if time.monotonic() - started < limit:
                yield Waiting(_ms(started), predicted)
    finally:
        registry.withdraw(ticket)
    yield _Unplaced(busy=predicted < math.inf, predicted_s=predicted)


def _replica_free(registry: WorkerRegistry, model: str) -> bool:
    """Whether another hub replica has a free worker of the model (never without a bus)."""
    return registry.remote is not None and registry.remote.free_slots(model) > 0


async def _fallback(
    registry: WorkerRegistry,
    job: Job,
    needs_tools: bool,
    user: str,
    started: float,
    min_trust: int,
) -> _Placed | None:
    for model in registry.config.fallbacks.get(job.model, []):
        alternative = job.model_copy(update={"model": model})
        handle = await registry.place(
            alternative, needs_tools=needs_tools, user=user, min_trust=min_trust
        )
        if handle is not None:
            return _Placed(handle, "fallback", _ms(started))
    return None


async def run_job(
    registry: WorkerRegistry,
    job: Job,
    *,
    needs_tools: bool,
    user: str = "pool",
    priority: int = 0,
    peer: PeerStep | None = None,
    only: str | None = None,
    wait_s: float | None = None,
    needs_context: int = 0,
    notify_waiting: bool = False,
    min_trust: int = 0,
    trace: list[JobHandle] | None = None,
) -> AsyncGenerator[JobEvent, None]:
    """Yield ``Waiting``… then ``Started`` (or ``Degraded``), chunks and one ``done``.

    Raises JobFailed: ``pool_busy`` when the model's workers are alive but cannot take the job
    within ``max_queue_wait_s`` (never a degraded answer for a busy, living model), or the
    worker's failure when no other worker could take over.
    ``only`` pins the job to one worker id: no fallback model, no peer, no failover elsewhere.
    ``wait_s`` bounds the wait in the queue (default: the pool config's policy).
    ``needs_context`` keeps the job off workers whose context cannot hold its prompt.
    ``notify_waiting`` yields a ``Waiting`` every ``queue_notice_s`` while the job is queued.
    ``min_trust`` keeps the job off workers of lower trust (the pool config's level for the
    job's kind); a pinned job (``only``) goes to its worker whatever its trust (canaries).
    ``trace`` collects the handle of every worker the job ran on, in order (failover adds one):
    the last one finished it.
    ``peer`` is the router's peer step (none for a pinned job).
    """
    started = time.monotonic()
    # A free worker on another replica of this pool goes before a peer pool.
    if peer is not None and only is None and not _replica_free(registry, job.model):
        waited = partial(
            registry.predicted_wait_s, job.model, needs_tools, needs_context, min_trust=min_trust
        )
        if peer.wanted(job.model, waited) and (forwarded := await peer.open(job)) is not None:
            async for event in _from_peer(forwarded, job, started):
                yield event
            return
    placed: _Placed | _Unplaced | None = None
    # aclosing: a client that leaves while queued must take its ticket out of the queue now.
    steps = _place(
        registry,
        job,
        needs_tools,
        user,
        priority,
        only,
        wait_s,
        needs_context,
        min_trust=0 if only is not None else min_trust,
    )
    async with aclosing(steps):
        async for step in steps:
            if isinstance(step, Waiting):
                if notify_waiting:
                    yield step
            else:
                placed = step
    assert placed is not None
    if isinstance(placed, _Unplaced):
        queue_ms = _ms(started)
        if peer is not None and only is None and (forwarded := await peer.open(job)) is not None:
            async for event in _from_peer(forwarded, job, started):
                yield event
            return
        if placed.busy and only is None:
            raise JobFailed(
                POOL_BUSY,
                f"every worker serving {job.model!r} is busy; about "
                f"{math.ceil(placed.predicted_s)} s of work is queued ahead",
                retry_after_s=math.ceil(min(placed.predicted_s, registry.config.max_queue_wait_s)),
            )
        yield Degraded(_no_worker_reason(registry, job, only), queue_ms)
        return
    handle = placed.handle
    try:
        yield Started(
            handle.worker.id, handle.worker.name, handle.job.model, placed.route, placed.queue_ms
        )
    except BaseException:
        # Closed right after placement (the client left): the job is on a worker, stop it.
        await _release(registry, handle)
        raise
    if trace is not None:
        trace.append(handle)
    relay = _relay(
        registry,
        handle,
        needs_tools,
        user,
        priority,
        only is not None,
        needs_context,
        min_trust,
        trace,
    )
    async with aclosing(relay):
        async for event in relay:
            yield event


async def _from_peer(
    forwarded: Forwarded, job: Job, started: float
) -> AsyncGenerator[JobEvent, None]:
    """A forwarded job's events: ``Started`` on route ``peer`` (the worker is the peer pool)."""
    async with aclosing(_closing(forwarded.events)) as events:
        yield Started(forwarded.peer, forwarded.peer, job.model, "peer", _ms(started))
        async for event in events:
            yield event


async def _closing(events: AsyncIterator[Chunk | Done]) -> AsyncGenerator[Chunk | Done, None]:
    try:
        async for event in events:
            yield event
    finally:
        if isinstance(events, AsyncGenerator):
            await events.aclose()


def _no_worker_reason(registry: WorkerRegistry, job: Job, only: str | None) -> str:
    if only is not None:
        return f"worker {only!r} could not take the job"
    waited = registry.config.queue_wait_s
    return (
        f"no worker serving {job.model!r} is connected and none came back within {waited:g} s; "
        "no fallback model was free"
    )


async def _relay(
    registry: WorkerRegistry,
    handle: JobHandle,
    needs_tools: bool,
    user: str,
    priority: int,
    pinned: bool = False,
    needs_context: int = 0,
    min_trust: int = 0,
    trace: list[JobHandle] | None = None,
) -> AsyncGenerator[Chunk | Done, None]:
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
                    progress.chunks += frame.pieces
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
        # The same doctrine as the first placement: a busy surviving worker is waited for.
        steps = _place(
            registry,
            retry,
            needs_tools and bool(retry.tools),
            user,
            priority,
            None,
            None,
            needs_context,
            min_trust=min_trust,
            avoid=frozenset(tried),
            fallbacks=False,
        )
        placed: _Placed | _Unplaced | None = None
        async with aclosing(steps):
            async for step in steps:
                if not isinstance(step, Waiting):
                    placed = step
        if not isinstance(placed, _Placed):
            break
        next_handle = placed.handle
        tried.add(next_handle.worker.id)
        handle = next_handle
        if trace is not None:
            trace.append(handle)
    assert failure is not None
    raise JobFailed(failure.code, failure.message, handle.worker.id)


def _next_job(original: Job, progress: _Progress, failure: Error, worker_id: str) -> Job | None:
    """The job to send to another worker, or None when this failure must reach the caller."""
    if failure.code in FINAL_CODES:
        return None
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
    kind: JobKind,
    priority: int = BACKGROUND_PRIORITY,
    response_format: dict[str, Any] | None = None,
) -> str:
    """Run one text job on the pool and return the whole answer (for the hub's own work).

    ``response_format`` (OpenAI's, e.g. a JSON schema) constrains the answer by grammar.

    Only workers trusted with ``kind`` (pool config) see it: these prompts carry users' data.
    Raises :class:`JobFailed` when no such worker serves ``model``, nothing could take the job,
    or the worker failed. Background work queues behind user traffic (``priority``).
    """
    min_trust = registry.config.trust.required(kind)
    if not registry.serves(model, min_trust):
        raise JobFailed(
            "model_unavailable", f"no worker of trust {min_trust} or more serves {model!r}"
        )
    job = Job(
        job_id=uuid.uuid4().hex,
        model=model,
        messages=messages,
        params=SamplingParams(
            max_tokens=max_tokens, temperature=temperature, response_format=response_format
        ),
        deadline_s=registry.settings.job_deadline_s,
    )
    parts: list[str] = []
    events = run_job(registry, job, needs_tools=False, priority=priority, min_trust=min_trust)
    async for event in events:
        if isinstance(event, Degraded):
            raise JobFailed("degraded", event.reason)
        if isinstance(event, Chunk) and event.delta.content:
            parts.append(event.delta.content)
    return "".join(parts)
