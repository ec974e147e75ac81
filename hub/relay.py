"""Relaying a pool job to an OpenAI client: route headers, the SSE stream, degraded answers.

Shared by ``/v1/chat/completions`` and ``/v1/agents/*`` so both answer byte for byte alike.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from hub.errors import (
    ContextLengthExceededError,
    HubError,
    PoolBusyError,
    UpstreamFailedError,
    error_body,
)
from hub.openai_schema import chunk_body, completion_id, usage_body
from inference.dispatch import POOL_BUSY, Degraded, JobEvent, JobFailed, Started, Waiting
from inference.protocol import Chunk, Delta, Done, ErrorCode, Usage

CONTEXT_LENGTH_EXCEEDED = ErrorCode.CONTEXT_LENGTH_EXCEEDED.value

ROUTE_HEADER = "X-Iamine-Route"
SERVED_HEADER = "X-Iamine-Served-Model"
WORKER_HEADER = "X-Iamine-Worker"
QUEUE_HEADER = "X-Iamine-Queue-Ms"


def worker_failed_message(exc: JobFailed) -> str:
    """What a client is told when the worker failed and no other could take over."""
    return f"The worker failed: {exc.message} ({exc.code})."


def worker_failed(exc: JobFailed) -> HubError:
    """The client error for a job the pool could not complete.

    The request's own faults are 400s and a busy pool is a 429 with Retry-After (clients
    retry those); only a worker's failure that no other worker could make good is a 502.
    """
    if exc.code == CONTEXT_LENGTH_EXCEEDED:
        return ContextLengthExceededError(exc.message, param="messages")
    if exc.code == POOL_BUSY:
        return PoolBusyError(exc.message, retry_after_s=exc.retry_after_s or 1)
    return UpstreamFailedError(worker_failed_message(exc))


def stream_error(exc: JobFailed) -> dict[str, str]:
    """A failure told inside an SSE stream (after the first byte) as OpenAI's error object."""
    error = worker_failed(exc)
    body = error_body(error.message, error.error_type, error.code, error.param)
    return {"data": json.dumps(body)}


def waiting_comment(event: Waiting) -> dict[str, str]:
    """An SSE comment for a stream whose job waits in the queue (clients ignore comments)."""
    ahead = "" if math.isinf(event.predicted_s) else f", ~{math.ceil(event.predicted_s)} s ahead"
    return {"comment": f"iamine: queued {event.queue_ms} ms{ahead}"}


def route_headers(first: JobEvent, asked: str) -> dict[str, str]:
    """``X-Iamine-*`` headers saying where the answer comes from and how it got there.

    A stream that had to start while its job was still queued (``Waiting``) says ``queued``
    and names no worker yet.
    """
    if isinstance(first, Waiting):
        return {ROUTE_HEADER: "queued", SERVED_HEADER: asked, QUEUE_HEADER: str(first.queue_ms)}
    if isinstance(first, Degraded):
        return {ROUTE_HEADER: "degraded", SERVED_HEADER: asked, QUEUE_HEADER: str(first.queue_ms)}
    assert isinstance(first, Started)
    return {
        ROUTE_HEADER: first.route,
        SERVED_HEADER: first.served_model,
        WORKER_HEADER: first.worker_id,
        QUEUE_HEADER: str(first.queue_ms),
    }


async def degraded_answer(job_id: str, model: str, text: str) -> AsyncIterator[JobEvent]:
    """The events of a clearly marked answer for when nothing in the pool could serve."""
    yield Chunk(job_id=job_id, delta=Delta(content=text))
    yield Done(
        job_id=job_id,
        finish_reason="stop",
        model=model,
        usage=Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0),
    )


async def degrade_late(
    events: AsyncIterator[JobEvent],
    job_id: str,
    model: str,
    text_for: Callable[[Degraded], str],
) -> AsyncIterator[JobEvent]:
    """Relay events; a ``Degraded`` after the response began becomes the marked answer."""
    try:
        async for event in events:
            yield event
            if isinstance(event, Degraded):
                async for part in degraded_answer(job_id, model, text_for(event)):
                    yield part
    finally:
        if isinstance(events, AsyncGenerator):
            await events.aclose()


async def sse_events(
    events: AsyncIterator[JobEvent], model: str, include_usage: bool
) -> AsyncIterator[dict[str, str]]:
    """The job's events as OpenAI ``chat.completion.chunk`` SSE events, then ``[DONE]``.

    A failure after the first byte can only be told in the stream: an ``error`` event that the
    OpenAI SDK raises as ``APIError``.
    """
    cid, created = completion_id(), int(time.time())
    role = chunk_body(cid, created, model, {"role": "assistant", "content": ""})
    yield {"data": json.dumps(role)}
    try:
        async for event in events:
            if isinstance(event, Waiting):
                yield waiting_comment(event)
                continue
            if isinstance(event, Started | Degraded):
                continue
            if isinstance(event, Chunk):
                delta = event.delta.model_dump(exclude_none=True)
                yield {"data": json.dumps(chunk_body(cid, created, model, delta))}
            else:
                final = chunk_body(cid, created, model, {}, finish_reason=event.finish_reason)
                yield {"data": json.dumps(final)}
                if include_usage:
                    usage = chunk_body(cid, created, model, None, usage=usage_body(event))
                    yield {"data": json.dumps(usage)}
    except JobFailed as exc:
        yield stream_error(exc)
    yield {"data": "[DONE]"}
