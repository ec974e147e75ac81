"""The checker against workers driven by hand: tool-call verdicts and exclusion after failures."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from inference.checker import CanarySettings, CheckerSettings
from tests.hub.conftest import LiveHub
from tests.hub.raw_worker import answer, raw_worker

pytestmark = pytest.mark.anyio

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture(scope="module")
def hub_overrides() -> dict[str, Any]:
    """Exclude after two failed runs, do not wait long for a busy worker, no spot checks.

    The workers here are trusted (2): canaries reach them only as random spot checks, which
    tests/hub/test_canaries.py covers.
    """
    checker = CheckerSettings(
        failures_to_exclude=2,
        timeout_s=10,
        queue_wait_s=2,
        canaries=CanarySettings(spot_check_rate=0),
    )
    return {"checker": checker}


NO_CANARIES = "; canaries: 0 passed, 0 failed, 0 inconclusive"


def admin(hub: LiveHub) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.admin_token}"}


async def call_tool(ws: ClientConnection, job: dict[str, Any]) -> None:
    call = {"index": 0, "id": "call_1", "type": "function"}
    call["function"] = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    chunk = {"type": "chunk", "job_id": job["job_id"], "delta": {"tool_calls": [call]}}
    await ws.send(json.dumps(chunk))
    usage = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
    done = {"type": "done", "job_id": job["job_id"], "finish_reason": "tool_calls"}
    await ws.send(json.dumps({**done, "model": job["model"], "usage": usage}))


async def serve(
    ws: ClientConnection, jobs: list[dict[str, Any]], *, capital: str, tools_work: bool
) -> None:
    """Answer every job until cancelled: tools as told, the known question with ``capital``."""
    while True:
        frame: dict[str, Any] = json.loads(await ws.recv())
        if frame["type"] != "job":
            continue
        jobs.append(frame)
        if frame.get("tools") and tools_work:
            await call_tool(ws, frame)
        elif "capital of France" in frame["messages"][-1]["content"]:
            await answer(ws, frame, capital)
        else:
            await answer(ws, frame, "I will not call any tool.")


async def run_checker(hub: LiveHub) -> dict[str, Any]:
    def post() -> dict[str, Any]:
        url = f"{hub.url}/admin/api/jobs/checker/run"
        body: dict[str, Any] = httpx.post(url, headers=admin(hub), timeout=60).json()
        return body

    return await anyio.to_thread.run_sync(post)


async def workers(hub: LiveHub) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{hub.url}/admin/api/workers", headers=admin(hub))
    return {w["name"]: w for w in response.json()["data"]}


async def chat_with_tools(hub: LiveHub) -> httpx.Response:
    body = {
        "model": "tools-model",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER_TOOL],
    }
    headers = {"Authorization": f"Bearer {hub.user_token}"}
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{hub.url}/v1/chat/completions", json=body, headers=headers)


async def test_a_worker_that_fails_the_tool_check_gets_no_tool_requests(
    live_hub: LiveHub,
) -> None:
    good_jobs: list[dict[str, Any]] = []
    bad_jobs: list[dict[str, Any]] = []
    async with (
        raw_worker(live_hub, "tools-model", name="good-tools", tools=True) as good,
        raw_worker(live_hub, "tools-model", name="bad-tools", tools=True) as bad,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(lambda: serve(good, good_jobs, capital="Paris", tools_work=True))
        tasks.start_soon(lambda: serve(bad, bad_jobs, capital="Paris", tools_work=False))
        checked = await run_checker(live_hub)
        assert checked["summary"] == (
            "checked 2: 2 passed, 0 failed; 0 skipped, 0 excluded" + NO_CANARIES
        )
        state = await workers(live_hub)
        assert state["good-tools"]["tools_ok"] is True
        assert state["bad-tools"]["tools_ok"] is False
        assert not state["bad-tools"]["excluded"], "a tool failure alone does not exclude"
        checked_on_bad = len(bad_jobs)
        for _ in range(3):
            response = await chat_with_tools(live_hub)
            assert response.headers["x-iamine-worker"] == state["good-tools"]["id"]
            assert response.json()["choices"][0]["finish_reason"] == "tool_calls"
        tasks.cancel_scope.cancel()
    assert len(bad_jobs) == checked_on_bad, "the bad worker got a request with tools"
    assert sum(1 for j in good_jobs if j.get("tools")) == 4  # the check, then three chats


async def test_repeated_failures_exclude_the_worker_with_a_reason(live_hub: LiveHub) -> None:
    jobs: list[dict[str, Any]] = []
    async with (
        raw_worker(live_hub, "wrong-model", name="wrong") as ws,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(lambda: serve(ws, jobs, capital="London", tools_work=True))
        first = await run_checker(live_hub)
        assert first["summary"] == (
            "checked 1: 0 passed, 1 failed; 0 skipped, 0 excluded" + NO_CANARIES
        )
        assert (await workers(live_hub))["wrong"]["excluded"] is None
        second = await run_checker(live_hub)
        assert second["summary"] == (
            "checked 1: 0 passed, 1 failed; 0 skipped, 1 excluded" + NO_CANARIES
        )
        listed = await workers(live_hub)
        tasks.cancel_scope.cancel()
    assert listed["wrong"]["excluded"] == "checker_failed"
    [excluded] = second["detail"]["excluded"]
    assert excluded == {
        "worker": "wrong",
        "detail": "failed 2 checks in a row; last: wrong known answer",
    }
