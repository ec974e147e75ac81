"""The OpenAI-compatible API through the official `openai` SDK, against a live hub and a real
worker process running the bundled SmolLM2 model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import asyncpg
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionNamedToolChoiceParam

from tests.hub.conftest import BUNDLED_MODEL, LiveHub, wait_until

pytestmark = pytest.mark.usefixtures("real_worker")

WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

FORCE_WEATHER: ChatCompletionNamedToolChoiceParam = {
    "type": "function",
    "function": {"name": "get_weather"},
}


@pytest.fixture
def client(live_hub: LiveHub) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_hub.url}/v1", api_key=live_hub.user_token, max_retries=0)


@pytest.fixture
async def async_client(live_hub: LiveHub) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        base_url=f"{live_hub.url}/v1", api_key=live_hub.user_token, max_retries=0
    )
    async with client:
        yield client


def test_models_lists_the_bundled_model_with_its_worker_count(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert BUNDLED_MODEL in models
    extra = models[BUNDLED_MODEL].model_extra
    assert extra is not None
    assert extra["workers"] == 1


def test_a_chat_completion_returns_text_and_consistent_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        seed=1,
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 8
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_max_completion_tokens_limits_the_answer(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_completion_tokens=5,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5


def test_a_stream_yields_chunks_and_a_final_usage_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


@pytest.mark.anyio
async def test_the_async_client_streams_too(async_client: openai.AsyncOpenAI) -> None:
    with anyio.fail_after(60):
        stream = await async_client.chat.completions.create(
            model=BUNDLED_MODEL,
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=6,
            stream=True,
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces)


@pytest.mark.anyio
async def test_the_async_client_gets_a_whole_completion(async_client: openai.AsyncOpenAI) -> None:
    with anyio.fail_after(60):
        completion = await async_client.chat.completions.create(
            model=BUNDLED_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert completion.choices[0].message.content is not None


def test_a_forced_tool_call_comes_back_in_openai_format(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice=FORCE_WEATHER,
        max_tokens=40,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].id
    assert calls[0].function.name == "get_weather"


def test_a_streamed_tool_call_carries_index_and_id(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL],
        tool_choice=FORCE_WEATHER,
        max_tokens=40,
        stream=True,
    )
    deltas = [tc for c in stream if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas
    assert all(d.index == 0 for d in deltas)
    assert deltas[0].id
    assert "".join(d.function.name or "" for d in deltas if d.function) == "get_weather"


def test_an_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": -1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 3}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
    ],
)
def test_invalid_parameters_are_400_naming_the_param(
    live_hub: LiveHub, extra: dict[str, object], param: str
) -> None:
    body = {"model": BUNDLED_MODEL, "messages": [{"role": "user", "content": "x"}], **extra}
    response = httpx.post(
        f"{live_hub.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {live_hub.user_token}"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"].startswith(param)


def test_a_bad_token_is_an_authentication_error(live_hub: LiveHub) -> None:
    bad = openai.OpenAI(base_url=f"{live_hub.url}/v1", api_key="iam_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(
            model=BUNDLED_MODEL, messages=[{"role": "user", "content": "x"}]
        )


def test_a_worker_token_cannot_chat(live_hub: LiveHub) -> None:
    worker = openai.OpenAI(
        base_url=f"{live_hub.url}/v1", api_key=live_hub.worker_token, max_retries=0
    )
    with pytest.raises(openai.PermissionDeniedError):
        worker.models.list()


async def _conversation(database_url: str, conversation_id: str) -> int | None:
    conn = await asyncpg.connect(database_url)
    try:
        count: int | None = await conn.fetchval(
            "SELECT exchanges FROM conversations WHERE id = $1", conversation_id
        )
        return count
    finally:
        await conn.close()


def test_a_conversation_id_is_echoed_created_and_stored(
    client: openai.OpenAI, live_hub: LiveHub
) -> None:
    given = client.chat.completions.with_raw_response.create(
        model=BUNDLED_MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2,
        extra_headers={"X-Conversation-Id": "trip-planning-1"},
    )
    assert given.headers["x-conversation-id"] == "trip-planning-1"
    created = client.chat.completions.with_raw_response.create(
        model=BUNDLED_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert created.headers["x-conversation-id"].startswith("conv_")
    wait_until(
        lambda: asyncio.run(_conversation(live_hub.database_url, "trip-planning-1")) == 1,
        10,
        "the conversation to be recorded",
    )


def test_a_client_that_disconnects_frees_the_worker_for_the_next_request(
    client: openai.OpenAI,
) -> None:
    stream = client.chat.completions.create(
        model=BUNDLED_MODEL,
        messages=[{"role": "user", "content": "Write a very long essay about the sea."}],
        max_tokens=3900,
        stream=True,
    )
    for count, _ in enumerate(stream):
        if count == 3:
            break
    stream.close()
    # The worker runs one job at a time: had the cancelled job gone on to its 3900 tokens (about a
    # minute here), this one would wait past the hub's 30 s first-token timeout and fail.
    completion = client.chat.completions.create(
        model=BUNDLED_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert completion.choices[0].message.content is not None
