"""Routing against a live hub: queue, fallback, degraded answers, exclusions, the admin API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest

from tests.hub.conftest import LiveHub
from tests.hub.raw_worker import answer, chat, models, raw_worker, receive


def admin(hub: LiveHub) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.admin_token}"}


def put_config(hub: LiveHub, **config: Any) -> httpx.Response:
    return httpx.put(f"{hub.url}/admin/api/pool-config", json=config, headers=admin(hub))


@pytest.fixture
def policy(live_hub: LiveHub) -> Iterator[None]:
    """Each test sets its own routing policy; the default comes back afterwards."""
    yield
    assert put_config(live_hub).status_code == 200


def test_no_worker_at_all_gets_a_marked_degraded_answer_not_a_503(
    live_hub: LiveHub, policy: None
) -> None:
    assert put_config(live_hub, catalog=["ghost-model"], queue_wait_s=0.2).status_code == 200
    client = openai.OpenAI(base_url=f"{live_hub.url}/v1", api_key=live_hub.user_token)
    raw = client.chat.completions.with_raw_response.create(
        model="ghost-model", messages=[{"role": "user", "content": "hello?"}]
    )
    assert raw.http_response.status_code == 200
    assert raw.headers["x-iamine-route"] == "degraded"
    assert int(raw.headers["x-iamine-queue-ms"]) >= 200
    content = raw.parse().choices[0].message.content
    assert content is not None
    assert content.startswith("[iamine: degraded answer]")


def test_a_degraded_stream_is_still_a_valid_stream(live_hub: LiveHub, policy: None) -> None:
    put_config(live_hub, catalog=["ghost-model"], queue_wait_s=0)
    client = openai.OpenAI(base_url=f"{live_hub.url}/v1", api_key=live_hub.user_token)
    chunks = list(
        client.chat.completions.create(
            model="ghost-model", messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "degraded" in text


def test_a_model_outside_the_catalog_and_unserved_is_still_404(
    live_hub: LiveHub, policy: None
) -> None:
    put_config(live_hub, catalog=["ghost-model"])
    assert chat(live_hub, "never-heard-of-it").status_code == 404


@pytest.mark.anyio
async def test_a_busy_model_queues_and_says_so(live_hub: LiveHub, policy: None) -> None:
    put_config(live_hub, queue_wait_s=20)
    async with raw_worker(live_hub, "queue-model", slots=1) as ws:
        responses: list[httpx.Response] = []
        async with anyio.create_task_group() as tasks:

            async def ask() -> None:
                responses.append(await anyio.to_thread.run_sync(chat, live_hub, "queue-model"))

            tasks.start_soon(ask)
            first = await receive(ws, "job")
            tasks.start_soon(ask)
            await _wait_for_queue_depth(live_hub, 1)
            await answer(ws, first, "one")
            second = await receive(ws, "job")
            await answer(ws, second, "two")
    routes = sorted(r.headers["x-iamine-route"] for r in responses)
    assert routes == ["direct", "queued"]
    assert all(r.status_code == 200 for r in responses)


async def _wait_for_queue_depth(hub: LiveHub, depth: int) -> None:
    with anyio.fail_after(10):
        async with httpx.AsyncClient() as http:
            while True:
                queue = (await http.get(f"{hub.url}/admin/api/queue", headers=admin(hub))).json()
                if queue["depth"] == depth:
                    assert queue["data"][0]["model"] == "queue-model"
                    return
                await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_the_fallback_chain_serves_when_the_model_has_no_worker(
    live_hub: LiveHub, policy: None
) -> None:
    put_config(live_hub, fallbacks={"big-model": ["small-model"]}, queue_wait_s=0.1)
    async with raw_worker(live_hub, "small-model") as ws:
        result: list[httpx.Response] = []
        async with anyio.create_task_group() as tasks:

            async def ask() -> None:
                result.append(await anyio.to_thread.run_sync(chat, live_hub, "big-model"))

            tasks.start_soon(ask)
            job = await receive(ws, "job")
            assert job["model"] == "small-model"
            await answer(ws, job, "small but here")
    response = result[0]
    assert response.headers["x-iamine-route"] == "fallback"
    assert response.headers["x-iamine-served-model"] == "small-model"
    assert response.json()["choices"][0]["message"]["content"] == "small but here"


@pytest.mark.anyio
async def test_a_worker_announcing_a_model_outside_the_catalog_is_excluded_and_recorded(
    live_hub: LiveHub, policy: None
) -> None:
    put_config(live_hub, catalog=["smollm2-135m-instruct"])
    async with raw_worker(live_hub, "rogue-model", name="rogue"):
        assert "rogue-model" not in await models(live_hub)
        async with httpx.AsyncClient() as http:
            workers = (
                await http.get(f"{live_hub.url}/admin/api/workers", headers=admin(live_hub))
            ).json()
        rogue = [w for w in workers["data"] if w["name"] == "rogue"]
        assert rogue[0]["excluded"] == "unknown_model"
        with anyio.fail_after(10):
            while True:
                async with httpx.AsyncClient() as http:
                    workers = (
                        await http.get(f"{live_hub.url}/admin/api/workers", headers=admin(live_hub))
                    ).json()
                if any(e["worker_name"] == "rogue" for e in workers["exclusions"]):
                    break
                await anyio.sleep(0.02)
    assert "rogue-model" in {
        e["detail"].split("'")[1] for e in workers["exclusions"] if e["worker_name"] == "rogue"
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"class_shares": {"gpu": 0.5, "cpu": 0.6}}, None),
        ({"queue_wait_s": "soon"}, "queue_wait_s"),
        ({"queue_wait_s": "5"}, "queue_wait_s"),
        ({"default_expected_tokens": True}, "default_expected_tokens"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_an_invalid_pool_config_is_400_and_changes_nothing(
    live_hub: LiveHub, body: dict[str, Any], param: str | None
) -> None:
    before = httpx.get(f"{live_hub.url}/admin/api/pool-config", headers=admin(live_hub)).json()
    response = put_config(live_hub, **body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    if param:
        assert response.json()["error"]["param"] == param
    after = httpx.get(f"{live_hub.url}/admin/api/pool-config", headers=admin(live_hub)).json()
    assert after == before


@pytest.mark.parametrize(
    "path", ["/admin/api/workers", "/admin/api/queue", "/admin/api/pool-config"]
)
def test_the_pool_admin_api_needs_the_admin_token(live_hub: LiveHub, path: str) -> None:
    user = {"Authorization": f"Bearer {live_hub.user_token}"}
    assert httpx.get(f"{live_hub.url}{path}", headers=user).status_code == 403
    assert httpx.get(f"{live_hub.url}{path}").status_code == 401


def _ask_stream(hub: LiveHub) -> httpx.Response:
    body = {
        "model": "relay-model",
        "messages": [{"role": "user", "content": "greet"}],
        "stream": True,
        "max_tokens": 10,
        "stream_options": {"include_usage": True},
    }
    return httpx.post(
        f"{hub.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {hub.user_token}"},
        timeout=30,
    )


async def _send(ws: Any, frame: dict[str, Any]) -> None:
    await ws.send(json.dumps(frame))


@pytest.mark.anyio
async def test_a_worker_dying_mid_stream_is_replaced_without_a_seam(live_hub: LiveHub) -> None:
    result: list[httpx.Response] = []
    async with (
        raw_worker(live_hub, "relay-model", name="one") as one,
        raw_worker(live_hub, "relay-model", name="two") as two,
        anyio.create_task_group() as tasks,
    ):

        async def run() -> None:
            result.append(await anyio.to_thread.run_sync(_ask_stream, live_hub))

        tasks.start_soon(run)
        taker, job = await _first_job_of(one, two)
        rescuer = two if taker is one else one
        for piece in ("Hello", ", "):
            await _send(
                taker, {"type": "chunk", "job_id": job["job_id"], "delta": {"content": piece}}
            )
        await taker.close()
        retry = await receive(rescuer, "job")
        assert retry["assistant_prefix"] == "Hello, "
        assert retry["params"]["max_tokens"] == 8
        await _send(
            rescuer, {"type": "chunk", "job_id": retry["job_id"], "delta": {"content": "world"}}
        )
        await _send(
            rescuer,
            {
                "type": "done",
                "job_id": retry["job_id"],
                "finish_reason": "stop",
                "model": "relay-model",
                "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
            },
        )
    lines = [line[6:] for line in result[0].text.splitlines() if line.startswith("data: {")]
    chunks = [json.loads(line) for line in lines]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello, world"
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert chunks[-1]["usage"]["prompt_tokens"] == 7


async def _first_job_of(a: Any, b: Any) -> tuple[Any, dict[str, Any]]:
    found: list[tuple[Any, dict[str, Any]]] = []
    async with anyio.create_task_group() as tasks:
        for ws in (a, b):

            async def watch(ws: Any = ws) -> None:
                found.append((ws, await receive(ws, "job")))
                tasks.cancel_scope.cancel()

            tasks.start_soon(watch)
    return found[0]
