"""The ``chunks`` feature on a live hub: agreed in hello/welcome, relayed one SSE event per piece.

A worker that has several tokens ready at once sends them in one ``chunks`` frame (see
docs/worker-protocol.md). Clients see exactly what separate ``chunk`` frames would have given
them; a malformed ``chunks`` frame is refused like any bad frame and the link stays.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

from tests.hub.conftest import LiveHub
from tests.hub.raw_worker import answer, chat, hello, raw_worker, receive

pytestmark = pytest.mark.anyio

MODEL = "batched-model"
PIECES = ["Once", " upon", " a", " time", ""]


async def welcome_for(hub: LiveHub, features: list[str] | None) -> dict[str, Any]:
    frame = hello(hub.worker_token_for("agreeing"), MODEL)
    if features is not None:
        frame["features"] = features
    async with connect(hub.ws_url) as ws:
        await ws.send(json.dumps(frame))
        return await receive(ws, "welcome")


async def test_the_hub_agrees_to_the_features_it_knows_of_those_the_worker_offers(
    live_hub: LiveHub,
) -> None:
    assert (await welcome_for(live_hub, ["chunks", "teleport"]))["features"] == ["chunks"]
    assert "features" not in await welcome_for(live_hub, ["teleport"])
    assert "features" not in await welcome_for(live_hub, None)


def sse_contents(response: httpx.Response) -> list[str]:
    """The ``delta.content`` of every chunk event of an SSE body, in order."""
    contents = []
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[len("data: ") :])["choices"]:
                if "content" in choice["delta"]:
                    contents.append(choice["delta"]["content"])
    return contents


async def ask_and_answer_in_pieces(hub: LiveHub, stream: bool) -> httpx.Response:
    responses: list[httpx.Response] = []

    async def ask() -> None:
        responses.append(await anyio.to_thread.run_sync(chat, hub, MODEL, stream))

    async with raw_worker(hub, MODEL, name="pieces") as ws, anyio.create_task_group() as tasks:
        tasks.start_soon(ask)
        job = await receive(ws, "job")
        await ws.send(json.dumps({"type": "chunks", "job_id": job["job_id"], "pieces": PIECES}))
        await answer(ws, job, "!")
    assert responses[0].status_code == 200, responses[0].text
    return responses[0]


async def test_a_streamed_chat_gets_one_sse_event_per_piece(live_hub: LiveHub) -> None:
    response = await ask_and_answer_in_pieces(live_hub, stream=True)
    assert sse_contents(response) == ["", *PIECES, "!"]  # the role event, the pieces, the chunk


async def test_a_json_chat_gets_the_pieces_joined(live_hub: LiveHub) -> None:
    response = await ask_and_answer_in_pieces(live_hub, stream=False)
    assert response.json()["choices"][0]["message"]["content"] == "Once upon a time!"


@pytest.mark.parametrize(
    "pieces",
    [[], ["ok", 7], "not a list", ["x"] * 257],
    ids=["empty", "not-text", "not-a-list", "too-many"],
)
async def test_a_malformed_chunks_frame_is_refused_and_the_link_keeps_serving(
    live_hub: LiveHub, pieces: object
) -> None:
    responses: list[httpx.Response] = []

    async def ask() -> None:
        responses.append(await anyio.to_thread.run_sync(chat, live_hub, MODEL, False))

    async with raw_worker(live_hub, MODEL, name="clumsy") as ws, anyio.create_task_group() as tasks:
        tasks.start_soon(ask)
        job = await receive(ws, "job")
        await ws.send(json.dumps({"type": "chunks", "job_id": job["job_id"], "pieces": pieces}))
        refusal = await receive(ws, "error")
        assert refusal["code"] == "invalid_frame"
        assert "chunks" in refusal["message"]
        await answer(ws, job, "fine")
    assert responses[0].json()["choices"][0]["message"]["content"] == "fine"
