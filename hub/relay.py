"""Relaying a pool job to an OpenAI client: route headers, the SSE stream, degraded answers.

Shared by ``/v1/chat/completions`` and ``/v1/agents/*`` so both answer byte for byte alike.

A stream relays one chunk per token, so its path is lean: each ``chat.completion.chunk`` is
written by orjson into a template made once per stream (:class:`ChunkEncoder`), and
:class:`SSEResponse` writes every event that is ready at once in one body message (one pass
through the middleware, one socket write) instead of one per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from hub.errors import (
    ContextLengthExceededError,
    HubError,
    PoolBusyError,
    UpstreamFailedError,
    error_body,
)
from hub.openai_schema import completion_id, usage_body
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
    return {"data": orjson.dumps(body).decode()}


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


class ChunkEncoder:
    """The JSON text of one stream's ``chat.completion.chunk`` objects, from a template.

    The id, creation time and model are the same in every chunk of a stream, so they are
    serialised once; a token costs one orjson call on its delta. The text is what
    ``orjson.dumps(chunk_body(...))`` gives, byte for byte.
    """

    def __init__(self, cid: str, created: int, model: str) -> None:
        head = orjson.dumps(
            {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        )
        self._head = head[:-1].decode()
        self._choice = self._head + ',"choices":[{"index":0,"delta":'

    def delta(self, delta: Mapping[str, Any], finish_reason: str | None = None) -> str:
        """A chunk with one choice: ``delta`` and the finish reason (null until the end)."""
        reason = "null" if finish_reason is None else orjson.dumps(finish_reason).decode()
        body = orjson.dumps(delta).decode()
        return f'{self._choice}{body},"finish_reason":{reason},"logprobs":null}}]}}'

    def usage(self, usage: Mapping[str, int]) -> str:
        """The usage-only last chunk (``stream_options.include_usage``): no choices."""
        return f'{self._head},"choices":[],"usage":{orjson.dumps(usage).decode()}}}'


def delta_body(delta: Delta) -> dict[str, Any]:
    """A delta in OpenAI's shape, unset parts left out (a text delta is read, not dumped)."""
    if delta.tool_calls is None:
        return {} if delta.content is None else {"content": delta.content}
    return delta.model_dump(exclude_none=True)


async def sse_events(
    events: AsyncIterator[JobEvent], model: str, include_usage: bool
) -> AsyncIterator[dict[str, str]]:
    """The job's events as OpenAI ``chat.completion.chunk`` SSE events, then ``[DONE]``.

    A failure after the first byte can only be told in the stream: an ``error`` event that the
    OpenAI SDK raises as ``APIError``.
    """
    chunks = ChunkEncoder(completion_id(), int(time.time()), model)
    yield {"data": chunks.delta({"role": "assistant", "content": ""})}
    try:
        async for event in events:
            if isinstance(event, Chunk):
                if event.parts:  # one SSE event per piece, as if each came in its own frame
                    for part in event.parts:
                        yield {"data": chunks.delta({"content": part})}
                else:
                    yield {"data": chunks.delta(delta_body(event.delta))}
            elif isinstance(event, Waiting):
                yield waiting_comment(event)
            elif isinstance(event, Done):
                yield {"data": chunks.delta({}, event.finish_reason)}
                if include_usage:
                    yield {"data": chunks.usage(usage_body(event))}
    except JobFailed as exc:
        yield stream_error(exc)
    yield {"data": "[DONE]"}


_LINE_BREAK = re.compile(r"\r\n|\r|\n")
SSE_SEPARATOR = "\r\n"


def encode_event(event: Mapping[str, str]) -> bytes:
    """One SSE event (``comment``, ``event``, ``data``) as bytes, lines ended by CRLF.

    Multi-line values become one field line each, as the SSE format requires.
    """
    out = []
    for field, prefix in (("comment", ": "), ("event", "event: "), ("data", "data: ")):
        value = event.get(field)
        if value is None:
            continue
        if field == "event":
            out.append(prefix + _LINE_BREAK.sub("", value) + SSE_SEPARATOR)
        elif "\n" in value or "\r" in value:
            out.extend(prefix + line + SSE_SEPARATOR for line in _LINE_BREAK.split(value))
        else:
            out.append(prefix + value + SSE_SEPARATOR)
    out.append(SSE_SEPARATOR)
    return "".join(out).encode()


class SSEResponse(Response):
    """A ``text/event-stream`` response that writes the events that are ready together at once.

    The events come from one task and go out from another: while the first runs through every
    event already received from the worker, the second sleeps; it then sends them all in one
    body message. Between events, a comment every ``ping_s`` keeps proxies from closing the
    connection; a client that leaves cancels the stream (and so the job). Headers are those of
    ``sse_starlette``'s ``EventSourceResponse``, which this replaces on the chat path.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[Mapping[str, str]],
        headers: Mapping[str, str] | None = None,
        ping_s: float = 15,
    ) -> None:
        # Not Response.__init__: a body-less response gets no content-length (a stream has none).
        self.status_code = 200
        self.background = None
        self.init_headers(
            {
                "Cache-Control": "no-store",
                **(headers or {}),
                "Connection": "keep-alive",
                "X-Accel-Buffering": "no",
            }
        )
        self._events = events
        self._ping_s = ping_s
        self._ready: list[bytes] = []
        self._wake = asyncio.Event()
        self._ended = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream the events until they end or the client leaves."""
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        gone = False
        try:
            async with anyio.create_task_group() as tasks:

                async def watch_client() -> None:
                    nonlocal gone
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    gone = True
                    tasks.cancel_scope.cancel()

                tasks.start_soon(watch_client)
                tasks.start_soon(self._produce)
                await self._write(send)
                tasks.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # What failed, as itself (a bug in the events): the server logs it and closes.
            raise group.exceptions[0] from group
        if not gone:
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _produce(self) -> None:
        events = self._events
        try:
            async for event in events:
                self._ready.append(encode_event(event))
                self._wake.set()
        finally:
            self._ended = True
            self._wake.set()
            if isinstance(events, AsyncGenerator):
                with anyio.CancelScope(shield=True):
                    await events.aclose()

    async def _write(self, send: Send) -> None:
        while True:
            try:
                async with asyncio.timeout(self._ping_s):
                    await self._wake.wait()
            except TimeoutError:
                ping = f": ping - {datetime.now(UTC)}{SSE_SEPARATOR}{SSE_SEPARATOR}"
                await send({"type": "http.response.body", "body": ping.encode(), "more_body": True})
                continue
            self._wake.clear()
            ready, self._ready = self._ready, []
            if ready:
                body = ready[0] if len(ready) == 1 else b"".join(ready)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            if self._ended:
                return
