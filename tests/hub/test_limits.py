"""Bounds a live hub enforces: request numbers, prompt size, worker output and frame sizes.

Each test drives a worker by hand over the real protocol (``raw_worker``) and a client through
HTTP or the official ``openai`` client, the way a misbehaving worker or a careless agent would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.hub.conftest import LiveHub
from tests.hub.raw_worker import hello, raw_worker, receive

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True, scope="module")
def short_queue(live_hub: LiveHub) -> Iterator[None]:
    """Failovers find no second worker here: give up on one after half a second, not ten."""
    admin = {"Authorization": f"Bearer {live_hub.admin_token}"}
    url = f"{live_hub.url}/admin/api/pool-config"
    assert httpx.put(url, json={"queue_wait_s": 0.5}, headers=admin).status_code == 200
    yield
    assert httpx.put(url, json={}, headers=admin).status_code == 200


def user(hub: LiveHub) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.user_token}"}


def in_flight(hub: LiveHub) -> int:
    workers = httpx.get(
        f"{hub.url}/admin/api/workers",
        headers={"Authorization": f"Bearer {hub.admin_token}"},
        timeout=10,
    ).json()["data"]
    return sum(w["in_flight"] for w in workers)


def post_chat(hub: LiveHub, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(f"{hub.url}/v1/chat/completions", json=body, headers=user(hub), timeout=30)


async def asked(hub: LiveHub, model: str) -> None:
    """Post a chat from a thread (the answer does not matter to the caller)."""
    await anyio.to_thread.run_sync(post_chat, hub, model)


def client(hub: LiveHub) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{hub.url}/v1", api_key=hub.user_token, max_retries=0)


async def test_an_absurd_max_tokens_is_refused_and_leaks_no_slot(live_hub: LiveHub) -> None:
    async with raw_worker(live_hub, "bounded-model", slots=1) as ws:
        for _ in range(4):
            response = await anyio.to_thread.run_sync(
                lambda: post_chat(live_hub, "bounded-model", max_tokens=10**30)
            )
            assert response.status_code == 400
            assert response.json()["error"]["param"] == "max_tokens"
        assert in_flight(live_hub) == 0
        # The one slot is still free: a normal request gets the worker.
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(asked, live_hub, "bounded-model")
            job = await receive(ws, "job")
            assert job["model"] == "bounded-model"
            await ws.send(
                json.dumps(
                    {"type": "error", "job_id": job["job_id"], "code": "cancelled", "message": ""}
                )
            )


async def test_max_tokens_beyond_the_models_context_is_a_400_on_max_tokens(
    live_hub: LiveHub,
) -> None:
    async with raw_worker(live_hub, "ctx-model"):
        with pytest.raises(openai.BadRequestError) as caught:
            await anyio.to_thread.run_sync(
                lambda: client(live_hub).chat.completions.create(
                    model="ctx-model",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=4096,  # the raw worker's context is 2048
                )
            )
    assert caught.value.body["param"] == "max_tokens"  # type: ignore[index]


async def test_a_prompt_no_worker_can_hold_is_context_length_exceeded_before_dispatch(
    live_hub: LiveHub,
) -> None:
    long_prompt = "word " * 20_000  # 100 kB: far past a 2,048-token context by any count
    async with raw_worker(live_hub, "ctx-model") as ws:
        with pytest.raises(openai.BadRequestError) as caught:
            await anyio.to_thread.run_sync(
                lambda: client(live_hub).chat.completions.create(
                    model="ctx-model", messages=[{"role": "user", "content": long_prompt}]
                )
            )
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.5):
                await receive(ws, "job")
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.body["param"] == "messages"  # type: ignore[index]


async def test_a_workers_context_error_is_a_400_not_a_502(live_hub: LiveHub) -> None:
    async with anyio.create_task_group() as tasks, raw_worker(live_hub, "ctx-model") as ws:
        result: list[httpx.Response] = []

        async def ask() -> None:
            result.append(await anyio.to_thread.run_sync(post_chat, live_hub, "ctx-model"))

        tasks.start_soon(ask)
        job = await receive(ws, "job")
        await ws.send(
            json.dumps(
                {
                    "type": "error",
                    "job_id": job["job_id"],
                    "code": "context_length_exceeded",
                    "message": "Requested tokens (3000) exceed context window of 2048",
                }
            )
        )
    assert result[0].status_code == 400
    assert result[0].json()["error"]["code"] == "context_length_exceeded"


async def test_a_worker_flooding_an_answer_is_cut_off_and_the_client_gets_a_bounded_answer(
    live_hub: LiveHub,
) -> None:
    async with anyio.create_task_group() as tasks, raw_worker(live_hub, "flood-model") as ws:
        result: list[httpx.Response] = []

        async def ask() -> None:
            result.append(
                await anyio.to_thread.run_sync(
                    lambda: post_chat(live_hub, "flood-model", max_tokens=20)
                )
            )

        tasks.start_soon(ask)
        job = await receive(ws, "job")
        chunk = json.dumps(
            {"type": "chunk", "job_id": job["job_id"], "delta": {"content": "x" * 60_000}}
        )
        for _ in range(10):  # 600 kB for a 20-token answer
            await ws.send(chunk)
        error = await receive(ws, "error")
        assert error["code"] == "output_limit_exceeded"
        with pytest.raises(ConnectionClosed), anyio.fail_after(10):
            await receive(ws, "anything")
    response = result[0]
    assert response.status_code == 502
    assert len(response.content) < 10_000
    assert in_flight(live_hub) == 0


async def test_an_oversized_hello_is_refused_before_authentication(live_hub: LiveHub) -> None:
    frame = hello("iam_not_even_checked", "big-hello-model")
    frame["worker_name"] = "x" * 200_000
    async with connect(live_hub.ws_url, max_size=None) as ws:
        await ws.send(json.dumps(frame))
        error = await receive(ws, "error")
    assert error["code"] == "frame_too_large"


async def test_an_oversized_frame_cuts_the_worker_off(live_hub: LiveHub) -> None:
    async with raw_worker(live_hub, "big-frame-model") as ws:
        await ws.send(json.dumps({"type": "heartbeat", "ts": 0, "pad": "x" * (2 << 20)}))
        error = await receive(ws, "error")
        assert error["code"] == "frame_too_large"
        with pytest.raises(ConnectionClosed):
            with anyio.fail_after(10):
                await ws.recv()
