"""Relaying a pool job to an OpenAI client: route headers, the SSE stream, degraded answers.

Shared by ``/v1/chat/completions`` and ``/v1/agents/*`` so both answer byte for byte alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from hub.errors import UpstreamFailedError, error_body
from hub.openai_schema import chunk_body, completion_id, usage_body
from inference.dispatch import Degraded, JobEvent, JobFailed, Started
from inference.protocol import Chunk, Delta, Done, Usage

ROUTE_HEADER = "X-Iamine-Route"
SERVED_HEADER = "X-Iamine-Served-Model"
WORKER_HEADER = "X-Iamine-Worker"
QUEUE_HEADER = "X-Iamine-Queue-Ms"


def worker_failed_message(exc: JobFailed) -> str:
    """What a client is told when the worker failed and no other could take over."""
    return f"The worker failed: {exc.message} ({exc.code})."


def worker_failed(exc: JobFailed) -> UpstreamFailedError:
    """The 502 for a job the pool could not complete."""
    return UpstreamFailedError(worker_failed_message(exc))


def route_headers(first: JobEvent, asked: str) -> dict[str, str]:
    """``X-Iamine-*`` headers saying where the answer comes from and how it got there."""
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
        body = error_body(worker_failed_message(exc), "server_error", "worker_failed")
        yield {"data": json.dumps(body)}
    yield {"data": "[DONE]"}
