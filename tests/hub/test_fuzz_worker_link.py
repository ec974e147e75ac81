"""Fuzz the worker link of a live hub: a worker that says hello properly, then sends garbage.

Whatever the garbage (random JSON, frames with wrong types, frames for unknown jobs, huge numbers,
deep nesting, invalid UTF-8, binary messages), the hub answers every bad frame with an ``error``
frame, keeps the link below ``max_bad_frames``, still serves the user request the worker holds, and
stays ready. Budget: see ``tests/fuzzing.py``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from inference.protocol import (
    FRAME_TYPES,
    Error,
    ErrorCode,
    Heartbeat,
    Leave,
    ProtocolError,
    parse_frame,
)
from inference.settings import InferenceSettings
from tests.fuzzing import fuzz_settings
from tests.hub.conftest import LiveHub
from tests.hub.raw_worker import answer, hello, raw_worker, receive

MODEL = "fuzz-model"
Message = str | bytes

FUZZ = fuzz_settings(25)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
job_ids = st.text(min_size=1, max_size=40)
usage = st.fixed_dictionaries(
    {
        "prompt_tokens": st.integers(min_value=-1, max_value=2**70),
        "completion_tokens": st.integers(min_value=-1, max_value=2**70),
        "total_tokens": st.integers(min_value=-1, max_value=2**70),
    }
)
for_unknown_jobs = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("chunk"), "job_id": job_ids, "delta": st.just({"content": "x"})}
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("done"),
            "job_id": job_ids,
            "finish_reason": st.sampled_from(["stop", "length", "tool_calls"]),
            "model": st.just(MODEL),
            "usage": usage,
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("error"),
            "job_id": job_ids,
            "code": st.sampled_from([c.value for c in ErrorCode]),
            "message": st.text(max_size=20),
        }
    ),
)
frame_shaped = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(FRAME_TYPES))},
    optional={
        key: json_values
        for key in ("job_id", "delta", "usage", "model", "code", "message", "ts", "token")
    },
)


def _embedded(template: dict[str, Any], raw: str) -> str:
    """A frame whose ``job_id`` holds a raw JSON literal that ``json.dumps`` could not write."""
    return json.dumps({**template, "job_id": "@"}).replace('"@"', raw)


_chunk = {"type": "chunk", "delta": {"content": "x"}}
messages: st.SearchStrategy[Message] = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
    frame_shaped.map(json.dumps),
    for_unknown_jobs.map(json.dumps),
    for_unknown_jobs.map(lambda frame: json.dumps(frame).encode()),
    st.integers(min_value=1, max_value=6000).map(lambda n: _embedded(_chunk, "9" * n)),
    st.integers(min_value=1, max_value=20_000).map(
        lambda depth: _embedded(_chunk, "[" * depth + "]" * depth)
    ),
    for_unknown_jobs.map(lambda frame: json.dumps(frame).encode() + b"\xff\xfe"),
)


# Always tried, whatever the draw: each once broke or could break the link loop.
KNOWN_BAD: list[Message] = [
    _embedded(_chunk, "9" * 5000),  # int() refuses more than 4300 digits with a ValueError
    _embedded(_chunk, "[" * 50_000 + "]" * 50_000),  # RecursionError in the JSON decoder
    b'{"type": "heartbeat", "ts": 1}\xff',  # invalid UTF-8 in a binary message
    json.dumps(
        {
            "type": "done",
            "job_id": "x",
            "finish_reason": "stop",
            "model": "m",
            "usage": {"prompt_tokens": 2**70, "completion_tokens": 0, "total_tokens": 0},
        }
    ),
]


def expects_error(message: Message) -> bool | None:
    """Whether the hub must answer with an ``error`` frame; ``None`` for a valid ``leave``.

    The hub reads a binary message as UTF-8 with replacement characters, then parses it.
    """
    text = message.decode("utf-8", errors="replace") if isinstance(message, bytes) else message
    try:
        frame = parse_frame(text)
    except ProtocolError:
        return True
    if isinstance(frame, Leave):
        return None
    if isinstance(frame, Heartbeat):
        return False
    # Chunks, dones and errors for jobs this worker does not run, and frames only the hub may
    # send, are bad; an error about the link itself, or answering our cancel, is not.
    return not (
        isinstance(frame, Error) and (frame.job_id is None or frame.code == ErrorCode.CANCELLED)
    )


def _garbage(max_bad: int) -> st.SearchStrategy[list[Message]]:
    # One bad frame is left for the sentinel, and the link must stay below the limit.
    return st.lists(messages.filter(lambda m: expects_error(m) is not None), max_size=max_bad - 2)


async def _errors_until_sentinel(ws: ClientConnection) -> int:
    """Send a frame for a unique unknown job; count the error frames before its answer."""
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    await ws.send(json.dumps({"type": "chunk", "job_id": sentinel, "delta": {"content": "x"}}))
    errors = 0
    with anyio.fail_after(15):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] != "error":
                assert frame["type"] == "heartbeat", frame
            elif frame.get("job_id") == sentinel:
                return errors
            else:
                assert frame["code"] and isinstance(frame["message"], str)
                errors += 1


async def _wait_listed(http: httpx.AsyncClient, hub: LiveHub, model: str) -> None:
    """Wait until the hub has registered the worker's model (it does so just after welcome)."""
    with anyio.fail_after(15):
        while True:
            listed = (await http.get(f"{hub.url}/v1/models")).json()["data"]
            if any(m["id"] == model for m in listed):
                return
            await anyio.sleep(0.02)


async def _garbage_during_a_chat(hub: LiveHub, garbage: list[Message]) -> None:
    # A model of its own: no worker of an earlier example can take this example's job.
    model = f"{MODEL}-{uuid.uuid4().hex[:8]}"
    headers = {"Authorization": f"Bearer {hub.user_token}"}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    replies: list[httpx.Response] = []

    async def user_request(http: httpx.AsyncClient) -> None:
        replies.append(await http.post(f"{hub.url}/v1/chat/completions", json=body, timeout=30))

    async with raw_worker(hub, model) as ws, httpx.AsyncClient(headers=headers) as http:
        await _wait_listed(http, hub, model)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(user_request, http)
            job = await receive(ws, "job")
            for message in garbage:
                await ws.send(message)
            errors = await _errors_until_sentinel(ws)
            await answer(ws, job, "still here")
    assert errors == sum(1 for m in garbage if expects_error(m))
    assert replies[0].status_code == 200, replies[0].text
    assert replies[0].json()["choices"][0]["message"]["content"] == "still here"


def test_garbage_from_a_worker_gets_error_frames_and_its_user_request_still_succeeds(
    live_hub: LiveHub,
) -> None:
    max_bad = InferenceSettings().max_bad_frames
    assert live_hub.settings.inference.max_bad_frames == max_bad

    @FUZZ
    @given(garbage=_garbage(max_bad))
    @example(garbage=KNOWN_BAD)
    def fuzz(garbage: list[Message]) -> None:
        anyio.run(_garbage_during_a_chat, live_hub, garbage)

    fuzz()
    _assert_ready_with_no_job_in_flight(live_hub)


async def _garbage_instead_of_hello(hub: LiveHub, message: Message) -> None:
    async with connect(hub.ws_url) as ws:
        await ws.send(message)
        with anyio.fail_after(15):
            frame = json.loads(await ws.recv())
            assert frame["type"] == "error" and frame["code"], frame
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, closed.value


@FUZZ
@given(message=messages | st.just(json.dumps(hello("iam_bad", MODEL))))
@example(message=KNOWN_BAD[0])
@example(message=KNOWN_BAD[1])
def test_garbage_instead_of_hello_gets_an_error_frame_and_a_policy_close(
    live_hub: LiveHub, message: Message
) -> None:
    anyio.run(_garbage_instead_of_hello, live_hub, message)


def test_a_worker_that_sends_max_bad_frames_is_cut_off_and_the_hub_stays_ready(
    live_hub: LiveHub,
) -> None:
    anyio.run(_flood, live_hub, live_hub.settings.inference.max_bad_frames)
    _assert_ready_with_no_job_in_flight(live_hub)


async def _flood(hub: LiveHub, max_bad: int) -> None:
    async with raw_worker(hub, f"{MODEL}-flood", name="flood") as ws:
        for _ in range(max_bad):
            await ws.send(b"\xff\x00 not a frame")
        with anyio.fail_after(15):
            errors = 0
            try:
                while True:
                    errors += json.loads(await ws.recv())["type"] == "error"
            except ConnectionClosed:
                pass
    assert errors == max_bad


def _assert_ready_with_no_job_in_flight(hub: LiveHub) -> None:
    assert httpx.get(f"{hub.url}/readyz", timeout=10).status_code == 200
    admin = {"Authorization": f"Bearer {hub.admin_token}"}
    workers = httpx.get(f"{hub.url}/admin/api/workers", headers=admin, timeout=10).json()["data"]
    assert all(w["in_flight"] == 0 for w in workers), workers
