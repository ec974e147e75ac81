"""Misbehaving workers, driven by hand over a raw WebSocket: the hub keeps serving and the client
gets a clear answer or error."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.hub.conftest import LiveHub
from tests.hub.raw_worker import chat, hello, models, raw_worker, receive, worker_counts

pytestmark = pytest.mark.anyio


async def test_a_bad_token_in_hello_is_refused_with_an_error_frame(live_hub: LiveHub) -> None:
    async with connect(live_hub.ws_url) as ws:
        await ws.send(json.dumps(hello("iam_0000000000_" + "x" * 43, "m")))
        assert (await receive(ws, "error"))["code"] == "invalid_token"


async def test_a_user_token_cannot_join_as_a_worker(live_hub: LiveHub) -> None:
    async with connect(live_hub.ws_url) as ws:
        await ws.send(json.dumps(hello(live_hub.user_token, "m")))
        assert (await receive(ws, "error"))["code"] == "invalid_token"


async def test_a_wrong_protocol_version_is_refused(live_hub: LiveHub) -> None:
    async with connect(live_hub.ws_url) as ws:
        await ws.send(json.dumps({**hello(live_hub.worker_token, "m"), "protocol": 99}))
        assert (await receive(ws, "error"))["code"] == "unsupported_protocol"


async def test_garbage_frames_get_error_frames_and_the_link_survives(live_hub: LiveHub) -> None:
    async with raw_worker(live_hub, "garbage-model") as ws:
        await ws.send("this is not json")
        assert (await receive(ws, "error"))["code"] == "malformed_json"
        await ws.send(json.dumps({"type": "teleport"}))
        assert (await receive(ws, "error"))["code"] == "unknown_type"
        await ws.send(json.dumps({"type": "chunk", "job_id": "nope", "delta": {"content": "x"}}))
        assert (await receive(ws, "error"))["code"] == "unexpected_frame"
        await ws.send(
            json.dumps(
                {
                    "type": "job",
                    "job_id": "j",
                    "model": "m",
                    "messages": [{"role": "user"}],
                    "deadline_s": 1,
                }
            )
        )
        assert (await receive(ws, "error"))["code"] == "unexpected_frame"
        assert "garbage-model" in await models(live_hub)


async def test_a_worker_that_disconnects_mid_job_gives_the_client_a_clear_error(
    live_hub: LiveHub,
) -> None:
    async with anyio.create_task_group() as tasks, raw_worker(live_hub, "flaky-model") as ws:
        result: dict[str, httpx.Response] = {}

        async def ask() -> None:
            result["response"] = await anyio.to_thread.run_sync(chat, live_hub, "flaky-model")

        tasks.start_soon(ask)
        job = await receive(ws, "job")
        await ws.send(
            json.dumps({"type": "chunk", "job_id": job["job_id"], "delta": {"content": "Hel"}})
        )
        # leaving the context closes the socket mid-job
    response = result["response"]
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "worker_failed"
    # The model stays known (with no worker) for a while: a restarting worker is expected back.
    assert (await worker_counts(live_hub))["flaky-model"] == 0


async def test_a_streaming_client_gets_an_error_event_when_its_worker_dies(
    live_hub: LiveHub,
) -> None:
    async with anyio.create_task_group() as tasks, raw_worker(live_hub, "dying-model") as ws:
        result: dict[str, httpx.Response] = {}

        async def ask() -> None:
            result["response"] = await anyio.to_thread.run_sync(
                lambda: chat(live_hub, "dying-model", stream=True)
            )

        tasks.start_soon(ask)
        job = await receive(ws, "job")
        await ws.send(
            json.dumps({"type": "chunk", "job_id": job["job_id"], "delta": {"content": "partial"}})
        )
    text = result["response"].text
    assert "partial" in text
    assert '"worker_failed"' in text
    assert text.rstrip().endswith("data: [DONE]")


async def test_a_job_the_first_worker_drops_before_output_goes_to_another(
    live_hub: LiveHub,
) -> None:
    async with (
        raw_worker(live_hub, "pair-model") as first,
        raw_worker(live_hub, "pair-model") as second,
    ):
        result: dict[str, httpx.Response] = {}
        async with anyio.create_task_group() as tasks:

            async def ask() -> None:
                result["response"] = await anyio.to_thread.run_sync(chat, live_hub, "pair-model")

            tasks.start_soon(ask)
            taker, job = await _first_job(first, second)
            await taker.send(
                json.dumps(
                    {
                        "type": "error",
                        "job_id": job["job_id"],
                        "code": "engine_error",
                        "message": "boom",
                    }
                )
            )
            rescuer = _other(first, second, taker)
            retry = await receive(rescuer, "job")
            await rescuer.send(
                json.dumps(
                    {"type": "chunk", "job_id": retry["job_id"], "delta": {"content": "saved"}}
                )
            )
            await rescuer.send(
                json.dumps(
                    {
                        "type": "done",
                        "job_id": retry["job_id"],
                        "finish_reason": "stop",
                        "model": "pair-model",
                        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                    }
                )
            )
    response = result["response"]
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "saved"


async def _first_job(
    first: ClientConnection, second: ClientConnection
) -> tuple[ClientConnection, dict[str, Any]]:
    """Whichever worker got the job, and the job."""
    found: dict[str, tuple[ClientConnection, dict[str, Any]]] = {}
    async with anyio.create_task_group() as tasks:
        for ws in (first, second):

            async def watch(ws: ClientConnection = ws) -> None:
                job = await receive(ws, "job")
                found["job"] = (ws, job)
                tasks.cancel_scope.cancel()

            tasks.start_soon(watch)
    return found["job"]


def _other(
    first: ClientConnection, second: ClientConnection, one: ClientConnection
) -> ClientConnection:
    return second if one is first else first


async def test_a_worker_answering_with_another_model_is_excluded(live_hub: LiveHub) -> None:
    async with raw_worker(live_hub, "honest-model") as ws:
        result: dict[str, httpx.Response] = {}
        async with anyio.create_task_group() as tasks:

            async def ask() -> None:
                result["response"] = await anyio.to_thread.run_sync(chat, live_hub, "honest-model")

            tasks.start_soon(ask)
            job = await receive(ws, "job")
            await ws.send(
                json.dumps(
                    {
                        "type": "done",
                        "job_id": job["job_id"],
                        "finish_reason": "stop",
                        "model": "sneaky-model",
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                )
            )
        response = result["response"]
        assert response.status_code == 502
        assert "model_mismatch" in response.json()["error"]["message"]
        assert "honest-model" not in await models(live_hub)
