"""Sub-agents and auto-review against a live hub and a real worker on the bundled model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from inference.agents import AgentSettings
from tests.hub.conftest import BUNDLED_MODEL, LiveHub
from tests.hub.test_errors import assert_openai_error

pytestmark = pytest.mark.usefixtures("real_worker")

Event = tuple[str | None, str]


@pytest.fixture(scope="module")
def hub_overrides() -> dict[str, Any]:
    """A review budget in tokens only: on a busy test machine one second may be too short."""
    return {"agents": AgentSettings(review_wall_s=60, review_max_tokens=8)}


def user(hub: LiveHub, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.user_token}", **extra}


def events_of(response: httpx.Response) -> list[Event]:
    """The SSE events of a response as (event name, data) pairs, comments skipped."""
    events: list[Event] = []
    name: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if not line:
            if data:
                events.append((name, "\n".join(data)))
            name, data = None, []
        elif line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())
    return events


def stream(hub: LiveHub, path: str, body: dict[str, Any], **headers: str) -> list[Event]:
    with httpx.stream(
        "POST", f"{hub.url}{path}", json=body, headers=user(hub, **headers), timeout=120
    ) as response:
        assert response.status_code == 200, response.read()
        return events_of(response)


def chat_body(stream: bool = False) -> dict[str, Any]:
    return {
        "model": BUNDLED_MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8,
        "stream": stream,
    }


@pytest.fixture
def client(live_hub: LiveHub) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{live_hub.url}/v1", api_key=live_hub.user_token, max_retries=0
    ) as sdk:
        yield sdk


def test_the_roles_are_listed_with_their_budgets(live_hub: LiveHub) -> None:
    response = httpx.get(f"{live_hub.url}/v1/agents/roles", headers=user(live_hub))
    roles = {r["name"]: r for r in response.json()["data"]}
    assert set(roles) == {"scout", "coder", "tank", "reviewer"}
    assert roles["reviewer"]["tools"] == [] and roles["coder"]["tools"] == ["*"]
    assert all(r["max_tokens"] > 0 and r["wall_s"] > 0 for r in roles.values())


def test_one_role_answers_as_a_chat_completion(live_hub: LiveHub) -> None:
    response = httpx.post(
        f"{live_hub.url}/v1/agents/run",
        json={"role": "scout", "input": "Name one colour.", "max_tokens": 6},
        headers=user(live_hub),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-iamine-role"] == "scout"
    assert response.headers["x-iamine-served-model"] == BUNDLED_MODEL
    body = response.json()
    assert body["object"] == "chat.completion" and body["iamine_role"] == "scout"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert 0 < body["usage"]["completion_tokens"] <= 6


def test_a_role_streams_chunks_the_openai_sdk_reads(client: openai.OpenAI) -> None:
    chunks = client.post(
        "/agents/run",
        body={"role": "coder", "input": "Print hello in Python.", "max_tokens": 6, "stream": True},
        cast_to=ChatCompletionChunk,
        stream=True,
        stream_cls=openai.Stream[ChatCompletionChunk],
    )
    received = list(chunks)
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text.strip()
    assert received[-1].choices[0].finish_reason in {"stop", "length"}


def test_a_pipeline_of_two_roles_streams_both_stages_named(live_hub: LiveHub) -> None:
    body = {"roles": ["scout", "coder"], "input": "Add two numbers.", "max_tokens": 5}
    events = stream(live_hub, "/v1/agents/pipeline", {**body, "stream": True})
    stages = [json.loads(data) for name, data in events if name == "stage"]
    assert [(s["role"], s["index"]) for s in stages] == [("scout", 0), ("coder", 1)]
    assert all(s["model"] == BUNDLED_MODEL and s["worker"] for s in stages)
    assert events[-1] == (None, "[DONE]")
    # Between the stage events: that stage's chunks, ending with its finish reason.
    second = events.index(next(e for e in events if e[0] == "stage" and '"coder"' in e[1]))
    for part in (events[1:second], events[second + 1 : -1]):
        chunks = [json.loads(data) for name, data in part if name is None]
        assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}


def test_a_pipeline_answers_with_every_stage(live_hub: LiveHub) -> None:
    response = httpx.post(
        f"{live_hub.url}/v1/agents/pipeline",
        json={"roles": ["scout", "reviewer"], "input": "Is 7 prime?", "max_tokens": 5},
        headers=user(live_hub),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-iamine-pipeline"] == "scout,reviewer"
    body = response.json()
    assert [s["role"] for s in body["iamine_stages"]] == ["scout", "reviewer"]
    assert body["choices"][0]["message"]["content"] == body["iamine_stages"][1]["content"]
    assert body["usage"]["completion_tokens"] == sum(
        s["usage"]["completion_tokens"] for s in body["iamine_stages"]
    )


def test_a_review_event_comes_before_done_on_the_stream(live_hub: LiveHub) -> None:
    with httpx.stream(
        "POST",
        f"{live_hub.url}/v1/chat/completions",
        json=chat_body(stream=True),
        headers=user(live_hub, **{"X-Iamine-Review": "on"}),
        timeout=120,
    ) as response:
        assert response.headers["x-iamine-review"] == "on"
        events = events_of(response)
    assert events[-1] == (None, "[DONE]")
    name, data = events[-2]
    assert name == "review"
    review = json.loads(data)
    assert isinstance(review["review"], str)
    assert review["model"] == BUNDLED_MODEL
    assert isinstance(review["truncated"], bool)
    assert review["status"] in {"ok", "truncated"}
    assert review["choices"] == [] and review["object"] == "chat.completion.chunk"
    assert all(name is None for name, _ in events[:-2])


def test_the_openai_sdk_still_reads_a_reviewed_stream(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=BUNDLED_MODEL,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            stream=True,
            extra_headers={"X-Iamine-Review": "on"},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    reviews = [c.model_extra for c in chunks if c.model_extra and "review" in c.model_extra]
    assert len(reviews) == 1 and not chunks[-1].choices


def test_a_json_answer_carries_the_review_in_iamine_review(live_hub: LiveHub) -> None:
    response = httpx.post(
        f"{live_hub.url}/v1/chat/completions",
        json=chat_body(),
        headers=user(live_hub, **{"X-Iamine-Review": "on"}),
        timeout=120,
    )
    body = response.json()
    assert body["choices"][0]["message"]["content"] is not None
    assert set(body["iamine_review"]) >= {"review", "model", "truncated", "status"}


def test_a_user_who_turned_auto_review_on_gets_reviews_without_asking(live_hub: LiveHub) -> None:
    url = f"{live_hub.url}/v1/preferences"
    assert httpx.get(url, headers=user(live_hub)).json() == {
        "auto_review": False,
        "min_trust": 0,
        "federation_chat": True,
        "federation_memory": False,
    }
    assert httpx.put(url, json={"auto_review": True}, headers=user(live_hub)).status_code == 200
    try:
        chat = f"{live_hub.url}/v1/chat/completions"
        reviewed = httpx.post(chat, json=chat_body(), headers=user(live_hub), timeout=120)
        assert "iamine_review" in reviewed.json()
        off = user(live_hub, **{"X-Iamine-Review": "off"})
        plain = httpx.post(chat, json=chat_body(), headers=off, timeout=120)
        assert "iamine_review" not in plain.json()
    finally:
        httpx.put(url, json={"auto_review": False}, headers=user(live_hub))


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code", "param"),
    [
        ("/v1/agents/run", {"role": "poet", "input": "x"}, {}, 404, "role_not_found", "role"),
        ("/v1/agents/run", {"role": "scout"}, {}, 400, "invalid_value", "input"),
        ("/v1/agents/run", {"role": "scout", "input": ""}, {}, 400, "invalid_value", "input"),
        (
            "/v1/agents/run",
            {"role": "scout", "input": "x", "temperature": 2},
            {},
            400,
            "invalid_value",
            "temperature",
        ),
        (
            "/v1/agents/run",
            {"role": "scout", "input": "x", "model": "no-such-model"},
            {},
            404,
            "model_not_found",
            "model",
        ),
        (
            "/v1/agents/run",
            {
                "role": "reviewer",
                "input": "x",
                "tools": [{"type": "function", "function": {"name": "rm_rf"}}],
            },
            {},
            400,
            "tool_not_allowed",
            "tools[0].function.name",
        ),
        (
            "/v1/agents/run",
            {"role": "scout", "input": "x"},
            {"X-Iamine-Review": "maybe"},
            400,
            "invalid_request",
            "X-Iamine-Review",
        ),
        (
            "/v1/agents/pipeline",
            {"roles": ["scout", "poet"], "input": "x"},
            {},
            404,
            "role_not_found",
            "roles[1]",
        ),
        ("/v1/agents/pipeline", {"roles": [], "input": "x"}, {}, 400, "invalid_value", "roles"),
        (
            "/v1/agents/pipeline",
            {"roles": ["scout"] * 9, "input": "x"},
            {},
            400,
            "invalid_request",
            "roles",
        ),
        (
            "/v1/chat/completions",
            {"model": BUNDLED_MODEL, "messages": [{"role": "user", "content": "x"}]},
            {"X-Iamine-Review": "please"},
            400,
            "invalid_request",
            "X-Iamine-Review",
        ),
    ],
)
def test_bad_agent_requests_get_the_openai_error_shape(
    live_hub: LiveHub,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
    code: str,
    param: str,
) -> None:
    response = httpx.post(
        f"{live_hub.url}{path}", json=body, headers=user(live_hub, **headers), timeout=30
    )
    assert response.status_code == status, response.text
    assert_openai_error(response.json(), code, param)


def test_invalid_json_and_bad_preferences_get_the_error_shape(live_hub: LiveHub) -> None:
    response = httpx.post(
        f"{live_hub.url}/v1/agents/run",
        content=b"{not json",
        headers=user(live_hub, **{"Content-Type": "application/json"}),
    )
    assert response.status_code == 400
    assert_openai_error(response.json(), "invalid_json")
    response = httpx.put(
        f"{live_hub.url}/v1/preferences", json={"auto_review": "yes"}, headers=user(live_hub)
    )
    assert response.status_code == 400
    assert_openai_error(response.json(), "invalid_value", "auto_review")
