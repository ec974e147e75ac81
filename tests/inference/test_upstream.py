"""UpstreamEngine against a real in-test OpenAI-compatible server (uvicorn on a random port)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from inference.engine import EngineError, EngineEvent, Finish
from inference.protocol import Delta, ErrorCode, Job, ModelInfo, SamplingParams
from inference.upstream import UpstreamEngine, _sse_data

MODELS = {
    "object": "list",
    "data": [
        {"id": "stub-model", "object": "model", "max_model_len": 8192},
        {"id": "llama-server-model", "object": "model", "meta": {"n_ctx_train": 2048}},
        {"id": "plain-model", "object": "model"},
    ],
}


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "stub-model",
        "choices": [choice],
    }


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    return {"id": "c1", "model": "stub-model", "choices": [], "usage": usage}


def tool_piece(index: int, **fields: Any) -> dict[str, Any]:
    return chunk({"tool_calls": [{"index": index, **fields}]})


SCRIPTS: dict[str, list[dict[str, Any]]] = {
    "text": [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": " world"}),
        chunk({}, "stop"),
        usage_chunk(12, 2),
    ],
    "tools": [
        tool_piece(0, id="call_a", type="function", function={"name": "get_weather"}),
        tool_piece(1, id="call_b", type="function", function={"name": "get_time"}),
        tool_piece(0, function={"arguments": '{"city": '}),
        tool_piece(1, function={"arguments": '{"zone": "CET"}'}),
        tool_piece(0, function={"arguments": '"Paris"}'}),
        chunk({}, "tool_calls"),
        usage_chunk(40, 20),
    ],
    "no-usage": [chunk({"content": "abcdefgh"}), chunk({}, "stop")],
    # Continuations of the failover prefix "Once upon": without echo, echoed, echoed in pieces
    # that straddle the prefix's end, a start that only looks like an echo, an echo alone.
    "continue": [chunk({"content": " a time"}), chunk({"content": ","}), chunk({}, "length")],
    "echo": [chunk({"content": "Once upon"}), chunk({"content": " a time,"}), chunk({}, "stop")],
    "echo-split": [
        chunk({"content": "Once"}),
        chunk({"content": " up"}),
        chunk({"content": "on a"}),
        chunk({"content": " time,"}),
        chunk({}, "stop"),
    ],
    "near-echo": [chunk({"content": "Once"}), chunk({"content": " more,"}), chunk({}, "stop")],
    "short": [chunk({"content": "Once"}), chunk({}, "stop")],
    "close": [chunk({"content": "Bye"}), chunk({}, "stop")],  # answered with Connection: close
}


class StubUpstream:
    """A scripted OpenAI-compatible server; the last user message picks the script."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.authorization: list[str | None] = []
        self.clients: list[tuple[str, int] | None] = []
        self.base_url = ""
        self.stream_closed = anyio.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/models", self.models),
                Route("/v1/chat/completions", self.completions, methods=["POST"]),
            ]
        )

    async def models(self, request: Request) -> Response:
        return JSONResponse(MODELS)

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.authorization.append(request.headers.get("authorization"))
        self.clients.append((request.client.host, request.client.port) if request.client else None)
        script = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        if script == "fail":
            return JSONResponse({"error": {"message": "boom", "code": None}}, status_code=500)
        if script == "too-long":
            error = {"message": "too long", "code": "context_length_exceeded"}
            return JSONResponse({"error": error}, status_code=400)
        headers = {"Connection": "close"} if script == "close" else None

        async def events() -> AsyncIterator[str]:
            if script == "endless":
                try:
                    yield f"data: {json.dumps(chunk({'content': 'and on'}))}\n\n"
                    await anyio.sleep_forever()
                finally:
                    self.stream_closed.set()
            for event in SCRIPTS[script]:
                yield f"data: {json.dumps(event)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@pytest.fixture
async def upstream() -> AsyncIterator[StubUpstream]:
    """The stub served by uvicorn on a socket bound before the server starts (no start-up race)."""
    stub = StubUpstream()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    stub.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(stub.app, log_level="warning", lifespan="off"))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [sock])
        yield stub
        server.should_exit = True
    sock.close()


def make_job(script: str, **fields: Any) -> Job:
    return Job(
        job_id="job-1",
        model="stub-model",
        messages=[{"role": "user", "content": script}],
        params=fields.pop("params", SamplingParams(max_tokens=32, temperature=0.5)),
        deadline_s=30,
        **fields,
    )


async def collect(engine: UpstreamEngine, job: Job) -> list[EngineEvent]:
    with anyio.fail_after(10):
        return [event async for event in engine.generate(job)]


@pytest.mark.anyio
@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_models_come_from_v1_models_with_or_without_v1_in_the_base_url(
    upstream: StubUpstream, suffix: str
) -> None:
    with anyio.fail_after(10):
        async with UpstreamEngine(upstream.base_url + suffix, model="stub-model") as engine:
            assert engine.models() == [
                ModelInfo(id="stub-model", context_size=8192, supports_tools=True)
            ]


@pytest.mark.anyio
async def test_without_a_model_every_upstream_model_is_served_with_its_context_size(
    upstream: StubUpstream,
) -> None:
    with anyio.fail_after(10):
        async with UpstreamEngine(upstream.base_url, context_size=1024) as engine:
            sizes = {model.id: model.context_size for model in engine.models()}
    assert sizes == {"stub-model": 8192, "llama-server-model": 2048, "plain-model": 1024}


@pytest.mark.anyio
async def test_a_model_the_upstream_does_not_list_is_refused(upstream: StubUpstream) -> None:
    with pytest.raises(EngineError) as caught, anyio.fail_after(10):
        async with UpstreamEngine(upstream.base_url, model="absent"):
            pass
    assert caught.value.code == ErrorCode.UNKNOWN_MODEL


@pytest.mark.anyio
async def test_text_streams_as_deltas_and_usage_comes_from_the_upstream(
    upstream: StubUpstream,
) -> None:
    async with UpstreamEngine(upstream.base_url, api_key="up-key", model="stub-model") as engine:
        events = await collect(engine, make_job("text"))

    *pieces, finish = events
    assert pieces == [Delta(content="Hello"), Delta(content=" world")]
    assert isinstance(finish, Finish)
    assert finish.finish_reason == "stop"
    assert (finish.usage.prompt_tokens, finish.usage.completion_tokens) == (12, 2)
    assert finish.usage.total_tokens == 14
    assert not finish.usage.estimated
    assert finish.model == "stub-model"
    [request] = upstream.requests
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert (request["model"], request["max_tokens"], request["temperature"]) == (
        "stub-model",
        32,
        0.5,
    )
    assert "tools" not in request
    assert "continue_final_message" not in request
    assert upstream.authorization == ["Bearer up-key"]


@pytest.mark.anyio
async def test_parallel_tool_calls_pass_through_with_their_indexes(
    upstream: StubUpstream,
) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    async with UpstreamEngine(upstream.base_url, model="stub-model") as engine:
        events = await collect(engine, make_job("tools", tools=tools, tool_choice="auto"))

    calls = [
        call for event in events if isinstance(event, Delta) for call in event.tool_calls or []
    ]
    arguments: dict[int, str] = {}
    for call in calls:
        arguments[call.index] = arguments.get(call.index, "") + (call.function.arguments or "")
    assert json.loads(arguments[0]) == {"city": "Paris"}
    assert json.loads(arguments[1]) == {"zone": "CET"}
    heads = {call.index: (call.id, call.function.name) for call in calls if call.id}
    assert heads == {0: ("call_a", "get_weather"), 1: ("call_b", "get_time")}
    finish = events[-1]
    assert isinstance(finish, Finish)
    assert finish.finish_reason == "tool_calls"
    assert upstream.requests[0]["tools"] == tools
    assert upstream.requests[0]["tool_choice"] == "auto"


@pytest.mark.anyio
async def test_closing_the_stream_closes_the_upstream_request(upstream: StubUpstream) -> None:
    async with UpstreamEngine(upstream.base_url, model="stub-model") as engine:
        with anyio.fail_after(10):
            async with aclosing(engine.generate(make_job("endless"))) as events:
                assert await anext(events) == Delta(content="and on")
            await upstream.stream_closed.wait()


@pytest.mark.anyio
async def test_missing_upstream_usage_is_estimated_and_marked(upstream: StubUpstream) -> None:
    async with UpstreamEngine(upstream.base_url, model="stub-model") as engine:
        events = await collect(engine, make_job("no-usage"))

    finish = events[-1]
    assert isinstance(finish, Finish)
    assert finish.usage.estimated
    assert finish.usage.completion_tokens == 2  # eight characters at four per token
    assert finish.usage.prompt_tokens > 0
    assert finish.usage.total_tokens == finish.usage.prompt_tokens + 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("script", "code"),
    [("fail", ErrorCode.UPSTREAM_ERROR), ("too-long", ErrorCode.CONTEXT_LENGTH_EXCEEDED)],
)
async def test_upstream_http_errors_become_engine_errors(
    upstream: StubUpstream, script: str, code: str
) -> None:
    async with UpstreamEngine(upstream.base_url, model="stub-model") as engine:
        with pytest.raises(EngineError) as caught:
            await collect(engine, make_job(script))
    assert caught.value.code == code


@pytest.mark.anyio
async def test_an_unreachable_upstream_is_an_upstream_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(EngineError) as caught, anyio.fail_after(10):
        async with UpstreamEngine(f"http://127.0.0.1:{closed_port}"):
            pass
    assert caught.value.code == ErrorCode.UPSTREAM_ERROR


@pytest.mark.anyio
async def test_a_failover_prefix_is_sent_as_a_trailing_assistant_message_to_continue(
    upstream: StubUpstream,
) -> None:
    async with UpstreamEngine(upstream.base_url, model="stub-model") as engine:
        events = await collect(engine, make_job("continue", assistant_prefix="Once upon"))

    *pieces, finish = events
    assert pieces == [Delta(content=" a time"), Delta(content=",")]
    assert isinstance(finish, Finish)
    assert finish.finish_reason == "length"
    [request] = upstream.requests
    assert request["messages"] == [
        {"role": "user", "content": "continue"},
        {"role": "assistant", "content": "Once upon"},
    ]
    assert request["continue_final_message"] is True
    assert request["add_generation_prompt"] is False


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("script", "continuation"),
    [
        ("echo", " a time,"),
        ("echo-split", " a time,"),
        ("near-echo", "Once more,"),
        ("short", "Once"),
    ],
)
async def test_an_upstream_that_echoes_the_prefix_streams_only_the_continuation(
    upstream: StubUpstream, script: str, continuation: str
) -> None:
    async with UpstreamEngine(upstream.base_url, model="stub-model") as engine:
        events = await collect(engine, make_job(script, assistant_prefix="Once upon"))

    streamed = "".join(event.content or "" for event in events if isinstance(event, Delta))
    assert streamed == continuation
    assert all(event.content for event in events if isinstance(event, Delta))
    assert isinstance(events[-1], Finish)


@pytest.mark.anyio
async def test_an_estimated_usage_counts_the_prefix_in_the_prompt(upstream: StubUpstream) -> None:
    async with UpstreamEngine(upstream.base_url, model="stub-model") as engine:
        plain = await collect(engine, make_job("no-usage"))
        continued = await collect(engine, make_job("no-usage", assistant_prefix="x" * 400))

    before, after = plain[-1], continued[-1]
    assert isinstance(before, Finish)
    assert isinstance(after, Finish)
    assert after.usage.estimated
    assert after.usage.prompt_tokens >= before.usage.prompt_tokens + 100


@pytest.mark.anyio
@pytest.mark.parametrize(
    "constraint",
    [
        {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]},
        {"params": SamplingParams(response_format={"type": "json_object"})},
    ],
)
async def test_a_constrained_job_with_a_prefix_is_refused_before_any_request(
    upstream: StubUpstream, constraint: dict[str, Any]
) -> None:
    async with UpstreamEngine(upstream.base_url, model="stub-model") as engine:
        with pytest.raises(EngineError) as caught:
            await collect(engine, make_job("text", assistant_prefix='{"city": ', **constraint))
    assert caught.value.code == ErrorCode.INVALID_REQUEST
    assert upstream.requests == []


@pytest.mark.anyio
async def test_jobs_one_after_another_share_one_kept_alive_connection(
    upstream: StubUpstream,
) -> None:
    async with UpstreamEngine(upstream.base_url, model="stub-model") as engine:
        first = await collect(engine, make_job("text"))
        second = await collect(engine, make_job("text"))

    assert first == second
    assert len(upstream.clients) == 2
    assert upstream.clients[0] == upstream.clients[1]


@pytest.mark.anyio
async def test_a_connection_the_upstream_closes_is_not_reused(upstream: StubUpstream) -> None:
    async with UpstreamEngine(upstream.base_url, model="stub-model") as engine:
        closed = await collect(engine, make_job("close"))
        after = await collect(engine, make_job("text"))

    assert closed[0] == Delta(content="Bye")
    assert after[0] == Delta(content="Hello")
    assert upstream.clients[0] != upstream.clients[1]


SSE_STREAM = (
    b"data: a\r\n\r\ndata: b\n\n: comment\n\ndata:c\rdata: d\r\revent: x\ndata: e\n\ndata: f"
)


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.anyio
@pytest.mark.parametrize("cut", range(len(SSE_STREAM) + 1))
async def test_sse_events_split_anywhere_read_the_same(cut: int) -> None:
    events = _sse_data(pieces(SSE_STREAM[:cut], SSE_STREAM[cut:]))
    assert [data async for data in events] == [b"a", b"b", b"c\nd", b"e", b"f"]


RAW_ANSWER = (
    b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in SCRIPTS["text"])
    + b"data: [DONE]\n\n"
)


async def raw_upstream(framing: str) -> tuple[asyncio.Server, list[int]]:
    """A bare HTTP/1.1 server that answers each connection once, then closes it unannounced.

    ``length``: a Content-Length body, the connection said to be kept alive (the next request
    finds it dead); ``close``: a body that ends with the connection. Returns the server and
    the count of answers.
    """
    answered: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        if framing == "length":
            fields = f"Content-Length: {len(RAW_ANSWER)}\r\nConnection: keep-alive"
        else:
            fields = "Connection: close"
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{fields}\r\n\r\n".encode()
            + RAW_ANSWER
        )
        answered.append(1)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), answered


@pytest.mark.anyio
@pytest.mark.parametrize("framing", ["length", "close"])
async def test_answers_reach_the_worker_whatever_the_upstream_does_with_its_connection(
    framing: str,
) -> None:
    server, answered = await raw_upstream(framing)
    port = server.sockets[0].getsockname()[1]
    engine = UpstreamEngine(f"http://127.0.0.1:{port}", model="stub-model")
    try:
        runs = [await collect(engine, make_job("text")) for _ in range(3)]
    finally:
        await engine.aclose()
        server.close()
    assert len(answered) == 3
    for events in runs:
        assert events[:2] == [Delta(content="Hello"), Delta(content=" world")]
        assert isinstance(events[-1], Finish)


@pytest.mark.anyio
async def test_an_upstream_that_hangs_up_before_answering_is_an_upstream_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = UpstreamEngine(f"http://127.0.0.1:{port}", model="stub-model")
    try:
        with pytest.raises(EngineError) as caught:
            await collect(engine, make_job("text"))
    finally:
        await engine.aclose()
        server.close()
    assert caught.value.code == ErrorCode.UPSTREAM_ERROR


def test_an_upstream_key_with_a_line_break_is_refused() -> None:
    with pytest.raises(EngineError) as caught:
        UpstreamEngine("http://127.0.0.1:1", api_key="key\r\nX-Injected: 1")
    assert caught.value.code == ErrorCode.UPSTREAM_ERROR
