"""A stub OpenAI-compatible server that answers every chat instantly, for proxy benchmarks.

It serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed or not) on raw asyncio
(uvloop when installed), with HTTP/1.1 keep-alive and chunked transfer encoding. Each answer is
``max_tokens`` tokens (``--tokens`` when the request sets none), all written at once: the stub
does no work per token, so what a benchmark measures is whatever sits between it and the client.
Answers are built once per shape and cached, so serving one costs a dictionary lookup.

Run: ``python bench/stub_upstream.py --port 0`` prints ``listening <port>`` on stdout when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from functools import cache
from typing import Any, cast

CRLF = b"\r\n"
_END_OF_HEAD = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024
_CREATED = 1_700_000_000


def chunk_event(model: str, delta: dict[str, Any] | None, **extra: Any) -> bytes:
    """One SSE ``data:`` event holding an OpenAI ``chat.completion.chunk``."""
    body: dict[str, Any] = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": model,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, **extra}],
    }
    if delta is None:
        body["usage"] = extra["usage"]
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def http_chunk(payload: bytes) -> bytes:
    """Frame ``payload`` as one HTTP/1.1 chunk."""
    return f"{len(payload):x}".encode() + CRLF + payload + CRLF


def token_text(index: int) -> str:
    """The text of the stub's ``index``-th token."""
    return f" t{index}"


def usage(tokens: int) -> dict[str, int]:
    """The usage the stub reports: a fixed 10-token prompt."""
    return {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens}


@cache
def streamed_answer(model: str, tokens: int, include_usage: bool) -> bytes:
    """The whole chunked SSE response body: role, ``tokens`` content chunks, finish, [DONE]."""
    events = [chunk_event(model, {"role": "assistant", "content": ""}, finish_reason=None)]
    events += [
        chunk_event(model, {"content": token_text(i)}, finish_reason=None) for i in range(tokens)
    ]
    events.append(chunk_event(model, {}, finish_reason="stop"))
    if include_usage:
        events.append(chunk_event(model, None, usage=usage(tokens)))
    events.append(b"data: [DONE]\n\n")
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    return head + b"".join(http_chunk(event) for event in events) + b"0\r\n\r\n"


@cache
def whole_answer(model: str, tokens: int) -> bytes:
    """A non-streamed ``chat.completion`` response."""
    body = {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": _CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "".join(token_text(i) for i in range(tokens)),
                },
                "finish_reason": "stop",
            }
        ],
        "usage": usage(tokens),
    }
    return json_response(200, body)


def json_response(status: int, body: dict[str, Any]) -> bytes:
    """A complete JSON response with ``content-length``."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}.get(status, b"Error")
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (
        status,
        reason,
        len(payload),
    )
    return head + payload


def error_response(status: int, message: str) -> bytes:
    """An OpenAI-shaped error response."""
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return json_response(status, {"error": error})


class StubProtocol(asyncio.Protocol):
    """One client connection: parse HTTP/1.1 requests as they arrive, answer each in one write."""

    def __init__(self, model: str, default_tokens: int) -> None:
        self._model = model
        self._default_tokens = default_tokens
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None and self._serve_one():
            pass

    def _serve_one(self) -> bool:
        """Answer the first complete request in the buffer; False when none is complete yet."""
        assert self._transport is not None
        end = self._buffer.find(_END_OF_HEAD)
        if end < 0:
            if len(self._buffer) > _MAX_HEAD:
                self._transport.close()
            return False
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(self._buffer) < end + 4 + length:
            return False
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        method, _, rest = lines[0].partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        self._transport.write(self._answer(method, path, body))
        if headers.get("connection", "").lower() == "close":
            self._transport.close()
            self._transport = None
        return True

    def _answer(self, method: str, path: str, body: bytes) -> bytes:
        route = path.removeprefix("/v1")
        if method == "GET" and route == "/models":
            entry = {"id": self._model, "object": "model", "created": 0, "owned_by": "stub"}
            return json_response(200, {"object": "list", "data": [entry]})
        if method == "GET" and route in ("/health", "/healthz"):
            return json_response(200, {"status": "ok"})
        if method != "POST" or route != "/chat/completions":
            return error_response(404, f"no route {method} {path}")
        try:
            request = json.loads(body)
        except ValueError:
            return error_response(400, "the body is not JSON")
        if not isinstance(request, dict):
            return error_response(400, "the body is not a JSON object")
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        tokens = limit if isinstance(limit, int) and limit > 0 else self._default_tokens
        model = str(request.get("model") or self._model)
        if request.get("stream"):
            options = request.get("stream_options") or {}
            return streamed_answer(model, tokens, bool(options.get("include_usage")))
        return whole_answer(model, tokens)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(host: str, port: int, model: str, tokens: int) -> None:
    """Serve until SIGINT or SIGTERM; print ``listening <port>`` once bound."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: StubProtocol(model, tokens), host, port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"listening {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--model", default="stub", help="the one model id served")
    parser.add_argument("--tokens", type=int, default=16, help="tokens when max_tokens is unset")
    args = parser.parse_args()
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    asyncio.run(serve(args.host, args.port, args.model, args.tokens), loop_factory=loop_factory)
    sys.exit(0)


if __name__ == "__main__":
    main()
