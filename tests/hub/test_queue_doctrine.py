"""The always-answer doctrine against a live hub: busy models wait, dead ones are remembered.

A degraded answer is a last resort: agent clients show it as if the model had said it. These
tests drive workers by hand (``raw_worker``) and talk to the hub with HTTP and the official
``openai`` client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest

from inference.settings import InferenceSettings
from tests.hub.conftest import LiveHub
from tests.hub.raw_worker import answer, chat, raw_worker, receive, worker_counts

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def hub_overrides() -> dict[str, Any]:
    """SSE comments every 0.2 s while queued, so a test sees them quickly."""
    return {
        "inference": InferenceSettings(
            local_worker=False, heartbeat_interval_s=1, first_token_timeout_s=30, queue_notice_s=0.2
        )
    }


def admin(hub: LiveHub) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.admin_token}"}


@pytest.fixture
def policy(live_hub: LiveHub) -> Iterator[None]:
    yield
    httpx.put(f"{live_hub.url}/admin/api/pool-config", json={}, headers=admin(live_hub))


def put_config(hub: LiveHub, **config: Any) -> None:
    response = httpx.put(f"{hub.url}/admin/api/pool-config", json=config, headers=admin(hub))
    assert response.status_code == 200, response.text


async def ask_in_thread(hub: LiveHub, model: str) -> None:
    """A plain chat from a thread (its answer does not matter to the caller)."""
    await anyio.to_thread.run_sync(chat, hub, model)


def client(hub: LiveHub) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{hub.url}/v1", api_key=hub.user_token, max_retries=0)


async def test_a_request_behind_a_busy_worker_waits_for_it_instead_of_degrading(
    live_hub: LiveHub, policy: None
) -> None:
    put_config(live_hub, queue_wait_s=0.2)
    async with raw_worker(live_hub, "busy-model", slots=1) as ws:
        responses: list[httpx.Response] = []
        async with anyio.create_task_group() as tasks:

            async def ask() -> None:
                responses.append(await anyio.to_thread.run_sync(chat, live_hub, "busy-model"))

            tasks.start_soon(ask)
            first = await receive(ws, "job")
            tasks.start_soon(ask)
            await anyio.sleep(1.0)  # five times queue_wait_s: today's hub had degraded by now
            await answer(ws, first, "one")
            second = await receive(ws, "job")
            await answer(ws, second, "two")
    contents = sorted(r.json()["choices"][0]["message"]["content"] for r in responses)
    assert contents == ["one", "two"]
    assert sorted(r.headers["x-iamine-route"] for r in responses) == ["direct", "queued"]


async def test_a_queued_stream_gets_sse_comments_while_it_waits(
    live_hub: LiveHub, policy: None
) -> None:
    put_config(live_hub, queue_wait_s=0.2)
    async with raw_worker(live_hub, "busy-model", slots=1) as ws:
        lines: list[str] = []
        commented = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ask_in_thread, live_hub, "busy-model")
            first = await receive(ws, "job")

            async def stream() -> None:
                body = {
                    "model": "busy-model",
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": True,
                }
                async with (
                    httpx.AsyncClient(timeout=30) as http,
                    http.stream(
                        "POST",
                        f"{live_hub.url}/v1/chat/completions",
                        json=body,
                        headers={"Authorization": f"Bearer {live_hub.user_token}"},
                    ) as response,
                ):
                    assert response.headers["x-iamine-route"] == "queued"
                    async for line in response.aiter_lines():
                        lines.append(line)
                        if line.startswith(": iamine: queued"):
                            commented.set()

            tasks.start_soon(stream)
            with anyio.fail_after(10):
                await commented.wait()
            await answer(ws, first, "one")
            second = await receive(ws, "job")
            await answer(ws, second, "two")
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in data if c["choices"]) == (
        "two"
    )
    assert lines[-1] == "" or "data: [DONE]" in lines


async def test_a_hopelessly_busy_model_is_a_429_with_retry_after(
    live_hub: LiveHub, policy: None
) -> None:
    put_config(live_hub, queue_wait_s=0.1, max_queue_wait_s=1)
    big = {
        "model": "swamped-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2000,  # 200 s of work at the unmeasured 10 tokens/s
    }

    def ask_big() -> None:
        httpx.post(
            f"{live_hub.url}/v1/chat/completions",
            json=big,
            headers={"Authorization": f"Bearer {live_hub.user_token}"},
            timeout=30,
        )

    async with (
        raw_worker(live_hub, "swamped-model", slots=1) as ws,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(anyio.to_thread.run_sync, ask_big)
        first = await receive(ws, "job")
        with pytest.raises(openai.RateLimitError) as caught:
            await anyio.to_thread.run_sync(
                lambda: client(live_hub).chat.completions.create(
                    model="swamped-model", messages=[{"role": "user", "content": "hi"}]
                )
            )
        await answer(ws, first, "done")
    assert caught.value.code == "pool_busy"
    assert int(caught.value.response.headers["retry-after"]) >= 1


async def test_a_model_whose_only_worker_died_stays_known_then_degrades(
    live_hub: LiveHub, policy: None
) -> None:
    put_config(live_hub, queue_wait_s=0.3)
    async with raw_worker(live_hub, "phoenix-model"):
        pass  # the worker dies
    assert (await worker_counts(live_hub))["phoenix-model"] == 0
    response = await anyio.to_thread.run_sync(chat, live_hub, "phoenix-model")
    assert response.status_code == 200
    assert response.headers["x-iamine-route"] == "degraded"


async def test_a_request_for_a_dead_model_is_served_when_its_worker_returns(
    live_hub: LiveHub, policy: None
) -> None:
    put_config(live_hub, queue_wait_s=10)
    async with raw_worker(live_hub, "lazarus-model"):
        pass
    result: list[httpx.Response] = []
    async with anyio.create_task_group() as tasks:

        async def ask() -> None:
            result.append(await anyio.to_thread.run_sync(chat, live_hub, "lazarus-model"))

        tasks.start_soon(ask)
        await anyio.sleep(0.3)
        async with raw_worker(live_hub, "lazarus-model") as ws:
            job = await receive(ws, "job")
            await answer(ws, job, "back")
    assert result[0].json()["choices"][0]["message"]["content"] == "back"
    assert result[0].headers["x-iamine-route"] == "queued"


async def test_the_openai_client_retrieves_a_model_and_gets_404_for_an_unknown_one(
    live_hub: LiveHub,
) -> None:
    async with raw_worker(live_hub, "retrievable-model"):
        model = await anyio.to_thread.run_sync(
            lambda: client(live_hub).models.retrieve("retrievable-model")
        )
        assert model.id == "retrievable-model"
        assert model.model_extra is not None and model.model_extra["workers"] == 1
        with pytest.raises(openai.NotFoundError) as caught:
            await anyio.to_thread.run_sync(
                lambda: client(live_hub).models.retrieve("no-such-model")
            )
    assert caught.value.code == "model_not_found"
