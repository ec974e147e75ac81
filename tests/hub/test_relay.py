"""The SSE relay: chunk JSON from a template, event encoding, and the batching SSE response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
import pytest
from starlette.types import Message

from hub.openai_schema import chunk_body
from hub.relay import ChunkEncoder, SSEResponse, delta_body, encode_event, sse_events
from inference.dispatch import JobEvent, JobFailed, Waiting
from inference.protocol import Chunk, Delta, Done, FunctionDelta, ToolCallDelta, Usage

DELTAS: list[dict[str, Any]] = [
    {"role": "assistant", "content": ""},
    {"content": 'é "quoted" \\ \n 😀'},
    {},
    {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}}]},
]


@pytest.mark.parametrize("delta", DELTAS)
@pytest.mark.parametrize("finish_reason", [None, "stop", "tool_calls"])
@pytest.mark.parametrize("model", ["smollm2", 'odd "model" é'])
def test_a_chunk_from_the_template_is_the_chunk_body_byte_for_byte(
    delta: dict[str, Any], finish_reason: str | None, model: str
) -> None:
    chunks = ChunkEncoder("chatcmpl-1", 1_700_000_000, model)
    expected = chunk_body("chatcmpl-1", 1_700_000_000, model, delta, finish_reason)
    assert chunks.delta(delta, finish_reason) == orjson.dumps(expected).decode()


def test_the_usage_chunk_has_no_choices_and_the_usage() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    text = ChunkEncoder("chatcmpl-1", 7, "m").usage(usage)
    assert text == orjson.dumps(chunk_body("chatcmpl-1", 7, "m", None, usage=usage)).decode()


@pytest.mark.parametrize(
    "delta",
    [
        Delta(content="hi"),
        Delta(),
        Delta(tool_calls=[ToolCallDelta(index=0, function=FunctionDelta(arguments="{"))]),
    ],
)
def test_a_delta_body_is_the_delta_without_its_unset_parts(delta: Delta) -> None:
    assert delta_body(delta) == delta.model_dump(exclude_none=True)


@pytest.mark.parametrize(
    ("event", "wire"),
    [
        ({"data": "[DONE]"}, b"data: [DONE]\r\n\r\n"),
        ({"comment": "iamine: queued 5 ms"}, b": iamine: queued 5 ms\r\n\r\n"),
        ({"event": "review", "data": "{}"}, b"event: review\r\ndata: {}\r\n\r\n"),
        ({"data": "one\ntwo\r\nthree"}, b"data: one\r\ndata: two\r\ndata: three\r\n\r\n"),
        ({"event": "a\nb", "data": "x"}, b"event: ab\r\ndata: x\r\n\r\n"),
    ],
)
def test_events_are_encoded_as_sse_starlette_encodes_them(
    event: dict[str, str], wire: bytes
) -> None:
    assert encode_event(event) == wire


def done(job_id: str = "j") -> Done:
    usage = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    return Done(job_id=job_id, finish_reason="stop", usage=usage, model="m")


async def job_events(*events: JobEvent, fail: bool = False) -> AsyncIterator[JobEvent]:
    for event in events:
        yield event
    if fail:
        raise JobFailed("worker_lost", "gone")


async def sse_data(events: AsyncIterator[JobEvent], include_usage: bool) -> list[dict[str, str]]:
    return [item async for item in sse_events(events, "m", include_usage)]


@pytest.mark.anyio
async def test_a_stream_is_role_chunks_finish_usage_then_done() -> None:
    events = job_events(Chunk(job_id="j", delta=Delta(content="Hi")), done())
    items = await sse_data(events, include_usage=True)
    bodies = [json.loads(item["data"]) for item in items[:-1]]
    assert [b["choices"][0]["delta"] if b["choices"] else None for b in bodies] == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
        {},
        None,
    ]
    assert bodies[2]["choices"][0]["finish_reason"] == "stop"
    assert bodies[3]["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert items[-1] == {"data": "[DONE]"}
    assert len({b["id"] for b in bodies}) == 1


@pytest.mark.anyio
async def test_a_queued_stream_says_so_in_comments_and_a_failure_in_an_error_event() -> None:
    events = job_events(Waiting(queue_ms=12, predicted_s=1.5), fail=True)
    items = await sse_data(events, include_usage=False)
    assert items[1] == {"comment": "iamine: queued 12 ms, ~2 s ahead"}
    assert json.loads(items[2]["data"])["error"]["code"] == "worker_failed"
    assert items[-1] == {"data": "[DONE]"}


class Client:
    """The ASGI side of one response: what it sent, and a disconnect to give it."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.gone = anyio.Event()
        self.got_body = anyio.Event()

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body":
            self.got_body.set()

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body"]


SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}


@pytest.mark.anyio
async def test_events_that_are_ready_together_go_out_in_one_body_message() -> None:
    later = anyio.Event()

    async def events() -> AsyncIterator[dict[str, str]]:
        for n in range(3):
            yield {"data": str(n)}
        await later.wait()
        yield {"data": "last"}

    client = Client()
    response = SSEResponse(events(), headers={"X-Iamine-Route": "direct"})
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(response, SCOPE, client.receive, client.send)
        with anyio.fail_after(5):
            await client.got_body.wait()
        later.set()
    start = client.messages[0]
    headers = dict(start["headers"])
    assert start["status"] == 200
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"x-iamine-route"] == b"direct"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"x-accel-buffering"] == b"no"
    assert b"content-length" not in headers
    assert client.bodies == [
        b"data: 0\r\n\r\ndata: 1\r\n\r\ndata: 2\r\n\r\n",
        b"data: last\r\n\r\n",
        b"",
    ]
    assert client.messages[-1]["more_body"] is False


@pytest.mark.anyio
async def test_a_client_that_leaves_closes_the_events_and_gets_nothing_more() -> None:
    closed = anyio.Event()

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            yield {"data": "first"}
            await anyio.sleep_forever()
        finally:
            closed.set()

    client = Client()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(SSEResponse(events()), SCOPE, client.receive, client.send)
            await client.got_body.wait()
            client.gone.set()
        await closed.wait()
    assert client.bodies == [b"data: first\r\n\r\n"]


@pytest.mark.anyio
async def test_an_idle_stream_is_kept_open_with_ping_comments() -> None:
    release = anyio.Event()

    async def events() -> AsyncIterator[dict[str, str]]:
        await release.wait()
        yield {"data": "[DONE]"}

    client = Client()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(SSEResponse(events(), ping_s=0.01), SCOPE, client.receive, client.send)
            await client.got_body.wait()
            release.set()
    assert client.bodies[0].startswith(b": ping - ")
    assert client.bodies[-2:] == [b"data: [DONE]\r\n\r\n", b""]


@pytest.mark.anyio
async def test_a_failing_event_source_fails_the_response_with_its_own_error() -> None:
    async def events() -> AsyncIterator[dict[str, str]]:
        yield {"data": "first"}
        raise ValueError("broken source")

    client = Client()
    with pytest.raises(ValueError, match="broken source"), anyio.fail_after(5):
        await SSEResponse(events())(SCOPE, client.receive, client.send)
