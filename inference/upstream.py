"""An engine that fronts an OpenAI-compatible server (llama-server, Ollama, vLLM) over HTTP.

Jobs are forwarded to ``{base_url}/v1/chat/completions`` with ``stream: true`` and the server's
Server-Sent Events are turned back into engine events. Tool calls pass through unchanged.
A failover job's ``assistant_prefix`` is sent as a trailing assistant message for the server to
continue (llama-server does by default, vLLM when asked with ``continue_final_message``).

The answer streams one event per token, so the chat request goes through :class:`_Http1`, a
small HTTP/1.1 client over asyncio streams with httptools' C parser: a keep-alive pool (one
connection per running job, kept while the server allows), the request written in one go, the
body handed over as it arrives and its events split on bytes. ``/v1/models``, asked once at
start, goes through httpx.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import anyio
import httptools
import httpx
import orjson
import structlog
from pydantic import ValidationError

from inference.engine import EngineError, EngineEvent, Finish, check_continuable
from inference.protocol import (
    Delta,
    ErrorCode,
    FinishReason,
    Job,
    ModelInfo,
    ToolCallDelta,
    Usage,
)

log = structlog.get_logger(__name__)

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}
# Upstreams that report no usage get an estimate of one token per this many characters.
_CHARS_PER_TOKEN = 4
# How long the end of a response may lag its [DONE] and still keep its connection for reuse.
_DRAIN_S = 0.05
_READ_SIZE = 64 * 1024


class UpstreamEngine:
    """Fronts an OpenAI-compatible server; use as ``async with`` so it learns the models served."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 300.0,
        connect_timeout: float = 10.0,
        context_size: int = 4096,
        supports_tools: bool = True,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        self.base_url = root.removesuffix("/v1")
        self._model = model
        self._context_size = context_size
        self._supports_tools = supports_tools
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._http = _Http1(
            self.base_url, self._headers, read_timeout=timeout, connect_timeout=connect_timeout
        )
        self._owns_client = client is None
        # No pool cap: the worker's slots bound concurrency, and httpx's default (20 kept alive,
        # 100 in all) would reconnect per job above 20 and queue jobs above 100.
        self._client = client or httpx.AsyncClient(
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )
        self._models: list[ModelInfo] = []

    async def __aenter__(self) -> Self:
        await self.refresh_models()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections, and the HTTP client if this engine created it."""
        self._http.close()
        if self._owns_client:
            await self._client.aclose()

    def models(self) -> list[ModelInfo]:
        """The models learnt by the last ``refresh_models``."""
        return list(self._models)

    async def refresh_models(self) -> list[ModelInfo]:
        """Ask the upstream's ``/v1/models`` what it serves (only ``model``, if one was given)."""
        try:
            response = await self._client.get(
                f"{self.base_url}/v1/models", headers=self._headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            raise EngineError(ErrorCode.UPSTREAM_ERROR, f"upstream unreachable: {exc!r}") from exc
        if response.status_code >= 400:
            raise _status_error(response.status_code, response.text)
        try:
            entries = [entry for entry in response.json()["data"] if isinstance(entry, dict)]
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineError(ErrorCode.UPSTREAM_ERROR, "upstream /v1/models is malformed") from exc
        models = [self._model_info(entry) for entry in entries if isinstance(entry.get("id"), str)]
        if self._model is not None:
            models = [info for info in models if info.id == self._model]
            if not models:
                message = f"upstream does not serve {self._model!r}"
                raise EngineError(ErrorCode.UNKNOWN_MODEL, message)
        self._models = models
        return self.models()

    async def generate(self, job: Job) -> AsyncGenerator[EngineEvent, None]:
        """Stream the upstream's answer to ``job``; closing the iterator closes the request."""
        if job.tools and not self._supports_tools:
            raise EngineError(ErrorCode.TOOLS_UNSUPPORTED, "this upstream takes no tools")
        check_continuable(job)
        answer = _Answer(model=job.model, prefix=job.assistant_prefix or "")
        path = "/v1/chat/completions"
        try:
            async with self._http.post(path, orjson.dumps(_request_body(job))) as response:
                if response.status >= 400:
                    body = b"".join([piece async for piece in response.body()])
                    raise _status_error(response.status, body.decode(errors="replace"))
                async with aclosing(_sse_data(response.body())) as events:
                    async for data in events:
                        if data == b"[DONE]":
                            break
                        for delta in answer.take(_decode_chunk(data)):
                            yield delta
                    # Read the body to its end, which is due right after [DONE]: a response
                    # read whole leaves its connection in the pool for the next job, one
                    # abandoned is closed (a new TCP connection per job).
                    with anyio.move_on_after(_DRAIN_S):
                        async for _ in events:
                            pass
        except (OSError, TimeoutError, httptools.HttpParserError) as exc:
            raise EngineError(ErrorCode.UPSTREAM_ERROR, f"upstream failed: {exc!r}") from exc
        for delta in answer.flush():
            yield delta
        yield answer.finish(job)

    def _model_info(self, entry: dict[str, Any]) -> ModelInfo:
        meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
        sizes = (
            entry.get("max_model_len"),  # vLLM
            entry.get("context_length"),
            (meta or {}).get("n_ctx_train"),  # llama-server
        )
        context = next((size for size in sizes if isinstance(size, int) and size > 0), None)
        return ModelInfo(
            id=entry["id"],
            context_size=context or self._context_size,
            supports_tools=self._supports_tools,
        )


class _Answer:
    """What has streamed so far: enough to name the finish reason and the usage at the end."""

    def __init__(self, model: str, prefix: str = "") -> None:
        self.model = model
        self.reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.characters = 0
        self.saw_tool_calls = False
        self._echo = _EchoFilter(prefix)

    def take(self, chunk: dict[str, Any]) -> list[Delta]:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        deltas: list[Delta] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            self.reason = choice.get("finish_reason") or self.reason
            raw = choice.get("delta") or {}
            content = raw.get("content")
            if isinstance(content, str) and not raw.get("tool_calls"):
                # The common chunk, text only: one delta built, none validated twice.
                text = self._echo.feed(content) if content else ""
                if text:
                    deltas.append(self._count(Delta(content=text)))
                continue
            delta = _delta(raw)
            if delta is not None and delta.content:
                content = self._echo.feed(delta.content) or None
                delta = Delta(content=content, tool_calls=delta.tool_calls)
            if delta is not None and (delta.content or delta.tool_calls):
                deltas.append(self._count(delta))
        return deltas

    def flush(self) -> list[Delta]:
        """What the echo filter still holds when the stream ends: the start of a continuation."""
        held = self._echo.flush()
        return [self._count(Delta(content=held))] if held else []

    def _count(self, delta: Delta) -> Delta:
        self.characters += len(delta.content or "")
        for call in delta.tool_calls or []:
            self.characters += len(call.function.arguments or "")
            self.saw_tool_calls = True
        return delta

    def finish(self, job: Job) -> Finish:
        reason = _FINISH_REASONS.get(self.reason or "")
        if reason is None:
            reason = "tool_calls" if self.saw_tool_calls else "stop"
        return Finish(finish_reason=reason, usage=self._usage(job), model=self.model)

    def _usage(self, job: Job) -> Usage:
        if self.usage is not None:
            try:
                prompt = int(self.usage["prompt_tokens"])
                completion = int(self.usage["completion_tokens"])
                return Usage(
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    total_tokens=prompt + completion,
                )
            except (KeyError, TypeError, ValueError, ValidationError):
                log.warning("upstream_usage_malformed", usage=self.usage)
        prompt_characters = len(json.dumps(_messages(job))) + len(json.dumps(job.tools or []))
        prompt = math.ceil(prompt_characters / _CHARS_PER_TOKEN)
        completion = math.ceil(self.characters / _CHARS_PER_TOKEN)
        log.info("upstream_usage_estimated", job_id=job.job_id)
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            estimated=True,
        )


class _EchoFilter:
    """Drops the failover prefix when an upstream repeats it before continuing it.

    A server that continues a trailing assistant message streams only what follows it; one that
    echoes the message first would show the client the prefix twice. Text that could still be
    that echo is held until it is known to be one (dropped) or not (released).
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._held: str | None = "" if prefix else None  # None once decided

    def feed(self, text: str) -> str:
        if self._held is None:
            return text
        held = self._held + text
        if held.startswith(self._prefix):
            self._held = None
            return held[len(self._prefix) :]
        if self._prefix.startswith(held):
            self._held = held
            return ""
        self._held = None
        return held

    def flush(self) -> str:
        held, self._held = self._held or "", None
        return held


def _messages(job: Job) -> list[dict[str, Any]]:
    """The job's messages, with a failover prefix as the trailing assistant message to continue."""
    if not job.assistant_prefix:
        return job.messages
    return [*job.messages, {"role": "assistant", "content": job.assistant_prefix}]


def _request_body(job: Job) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": job.model,
        "messages": _messages(job),
        "stream": True,
        "stream_options": {"include_usage": True},
        **job.params.model_dump(exclude_none=True),
    }
    if job.assistant_prefix:
        # vLLM continues the final message only when asked to (so does llama-server when asked;
        # by default it prefills anyway); servers that know neither field usually ignore it.
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    if job.tools:
        body["tools"] = job.tools
        if job.tool_choice is not None:
            body["tool_choice"] = job.tool_choice
    return body


async def _sse_data(body: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """Yield the ``data`` of each Server-Sent Event (multi-line data joined by newlines).

    Split on bytes as they arrive: no text decoding or line objects per token. Lines end with
    CRLF, LF or CR (a CR at the end of a read waits for the next read, which may hold its LF).
    """
    buffer = b""
    lines: list[bytes] = []
    async for received in body:
        buffer += received
        if b"\r" in buffer:
            keep_cr = buffer.endswith(b"\r")
            buffer = buffer[:-1] if keep_cr else buffer
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            buffer += b"\r" if keep_cr else b""
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            if not line:
                if lines:
                    yield b"\n".join(lines)
                    lines = []
            elif line.startswith(b"data:"):
                lines.append(line[6:] if line.startswith(b"data: ") else line[5:])
    if buffer.rstrip(b"\r").startswith(b"data:"):
        line = buffer.rstrip(b"\r")
        lines.append(line[6:] if line.startswith(b"data: ") else line[5:])
    if lines:
        yield b"\n".join(lines)


class UpstreamClosed(ConnectionError):
    """The upstream closed its connection before the response ended."""


class _Response:
    """One HTTP/1.1 response being read: the status once its head is in, then its body."""

    def __init__(self, reader: asyncio.StreamReader, read_timeout: float) -> None:
        self._reader = reader
        self._read_timeout = read_timeout
        self._parser = httptools.HttpResponseParser(self)
        self._pieces: list[bytes] = []
        self._framed = False  # a content-length or chunked body: its end is in the stream
        self._keep_alive = False
        self.head_done = False
        self.complete = False
        self.received = False

    @property
    def status(self) -> int:
        """The response's status code."""
        code: int = self._parser.get_status_code()
        return code

    @property
    def reusable(self) -> bool:
        """Whether its connection may carry the next request."""
        return self.complete and self._framed and self._keep_alive

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._framed = True

    def on_headers_complete(self) -> None:
        self.head_done = True
        # Asked now: once the message completes the parser is reset for the next one.
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    async def read_head(self) -> None:
        """Read until the status line and headers are in."""
        while not self.head_done:
            await self._read()

    async def body(self) -> AsyncIterator[bytes]:
        """The body as it arrives, every piece that is in joined into one."""
        while True:
            if self._pieces:
                pieces, self._pieces = self._pieces, []
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if self.complete:
                return
            await self._read()

    async def _read(self) -> None:
        async with asyncio.timeout(self._read_timeout):
            data = await self._reader.read(_READ_SIZE)
        if not data:
            if self.head_done and not self._framed:
                self.complete = True  # a body that ends with its connection
                return
            raise UpstreamClosed("the upstream closed the connection mid-response")
        self.received = True
        self._parser.feed_data(data)


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Http1:
    """A keep-alive pool of HTTP/1.1 connections to one upstream, for streamed POSTs."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        read_timeout: float,
        connect_timeout: float,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EngineError(ErrorCode.UPSTREAM_ERROR, f"not an http(s) URL: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._path = parts.path.rstrip("/")
        authority = parts.netloc.rpartition("@")[2]
        fields = {"Host": authority, "Accept": "text/event-stream", **headers}
        if any("\r" in f"{k}{v}" or "\n" in f"{k}{v}" for k, v in fields.items()):
            raise EngineError(ErrorCode.UPSTREAM_ERROR, "the upstream key holds a line break")
        self._head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._idle: list[_Connection] = []

    @asynccontextmanager
    async def post(self, path: str, body: bytes) -> AsyncIterator[_Response]:
        """POST ``body`` (JSON) to ``path``; the response once its head is in.

        A pooled connection the server closed meanwhile is replaced by a new one (the request
        is sent again only when nothing at all came back). The connection returns to the pool
        when the body was read to its end and the server keeps it alive; else it is closed.
        """
        request = (
            f"POST {self._path}{path} HTTP/1.1\r\n{self._head}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        pooled = bool(self._idle)
        reader, writer = self._idle.pop() if pooled else await self._connect()
        response = _Response(reader, self._read_timeout)
        try:
            try:
                writer.write(request)
                await response.read_head()
            except (OSError, UpstreamClosed):
                if not pooled or response.received:
                    raise
                writer.close()
                reader, writer = await self._connect()
                response = _Response(reader, self._read_timeout)
                writer.write(request)
                await response.read_head()
            yield response
        except BaseException:
            writer.close()
            raise
        if response.reusable and not writer.is_closing():
            self._idle.append((reader, writer))
        else:
            writer.close()

    async def _connect(self) -> _Connection:
        async with asyncio.timeout(self._connect_timeout):
            return await asyncio.open_connection(
                self._host, self._port, ssl=self._tls, limit=_READ_SIZE
            )

    def close(self) -> None:
        """Close every idle connection."""
        while self._idle:
            self._idle.pop()[1].close()


def _decode_chunk(data: bytes) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            chunk = json.loads(data)  # what orjson refuses but JSON readers take (NaN...)
        except ValueError as exc:
            raise EngineError(ErrorCode.UPSTREAM_ERROR, "upstream sent a non-JSON event") from exc
    if not isinstance(chunk, dict):
        raise EngineError(ErrorCode.UPSTREAM_ERROR, "upstream sent a non-object event")
    if "error" in chunk:
        raise EngineError(ErrorCode.UPSTREAM_ERROR, f"upstream error: {chunk['error']}")
    return chunk


def _delta(raw: dict[str, Any]) -> Delta | None:
    calls = raw.get("tool_calls") or []
    content = raw.get("content") or None
    if not calls and content is None:
        return None
    try:
        tool_calls = [
            ToolCallDelta.model_validate({**call, "index": _index(call, position)})
            for position, call in enumerate(calls)
        ]
        return Delta(content=content, tool_calls=tool_calls or None)
    except ValidationError as exc:
        raise EngineError(ErrorCode.UPSTREAM_ERROR, f"upstream sent a bad delta: {exc}") from exc


def _index(call: object, position: int) -> object:
    """The call's ``index``; Ollama sends none, so its place in the list stands in."""
    index = call.get("index") if isinstance(call, dict) else None
    return position if index is None else index


def _status_error(status: int, body: str) -> EngineError:
    """Name an upstream HTTP error, keeping an OpenAI-shaped ``error.code`` we know."""
    try:
        upstream_code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        upstream_code = None
    code = ErrorCode.UPSTREAM_ERROR
    if upstream_code == ErrorCode.CONTEXT_LENGTH_EXCEEDED:
        code = ErrorCode.CONTEXT_LENGTH_EXCEEDED
    return EngineError(code, f"upstream answered {status}: {body[:500]}")
