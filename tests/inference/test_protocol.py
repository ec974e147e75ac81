"""Protocol v1 frames: round trips, and every way a frame can be malformed."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from inference.protocol import (
    MAX_PIECES,
    PROTOCOL_VERSION,
    Cancel,
    Chunk,
    Chunks,
    Delta,
    Done,
    Error,
    ErrorCode,
    Frame,
    FunctionDelta,
    Heartbeat,
    Hello,
    Job,
    Leave,
    ModelInfo,
    ProtocolError,
    SamplingParams,
    ToolCallDelta,
    Usage,
    Welcome,
    encode,
    encode_bytes,
    encode_chunk,
    encode_pieces,
    parse_frame,
)

FRAMES: list[Frame] = [
    Hello(
        protocol=PROTOCOL_VERSION,
        token="iam_secret",
        worker_name="desk",
        models=[ModelInfo(id="smollm2", context_size=4096, supports_tools=True)],
        hardware="cpu",
        slots=2,
        version="0.1.0",
    ),
    Welcome(worker_id="w-1", heartbeat_interval_s=10, protocol=PROTOCOL_VERSION),
    Heartbeat(ts=1_700_000_000.5),
    Job(
        job_id="j-1",
        model="smollm2",
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
        ],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        tool_choice="auto",
        params=SamplingParams(max_tokens=64, temperature=0.2, top_p=0.9, stop=["\n"], seed=7),
        deadline_s=30,
    ),
    Chunk(job_id="j-1", delta=Delta(content="Hel")),
    Chunks(job_id="j-1", pieces=["Hel", "lo", ""]),
    Chunk(
        job_id="j-1",
        delta=Delta(
            tool_calls=[
                ToolCallDelta(
                    index=1,
                    id="call_1",
                    type="function",
                    function=FunctionDelta(name="get_weather", arguments='{"ci'),
                )
            ]
        ),
    ),
    Done(
        job_id="j-1",
        finish_reason="tool_calls",
        usage=Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15),
        model="smollm2",
    ),
    Error(job_id="j-1", code=ErrorCode.CANCELLED, message="cancelled"),
    Error(code=ErrorCode.INVALID_TOKEN, message="unknown token"),
    Cancel(job_id="j-1"),
    Leave(reason="shutdown"),
    Hello(
        protocol=PROTOCOL_VERSION,
        token="iam_secret",
        worker_name="desk",
        models=[],
        hardware="gpu",
        slots=1,
        version="0.2.0",
        features=["chunks"],
    ),
    Welcome(worker_id="w-1", heartbeat_interval_s=10, protocol=PROTOCOL_VERSION, features=[]),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda frame: frame.type)
def test_every_frame_survives_encode_and_parse(frame: Frame) -> None:
    assert parse_frame(encode(frame)) == frame


def test_encode_omits_unset_optional_fields_but_keeps_nulls_inside_messages() -> None:
    job = FRAMES[3]
    wire = json.loads(encode(job))
    assert wire["type"] == "job"
    assert wire["messages"][1]["content"] is None
    chunk = json.loads(encode(Chunk(job_id="j", delta=Delta(content="x"))))
    assert chunk == {"type": "chunk", "job_id": "j", "delta": {"content": "x"}}


TEXTS = ["Hello", "", None, 'é\u2028\x00\x1f"\\/😀', "\x7f<b>&amp;", "line\nbreak\ttab"]


@pytest.mark.parametrize("content", TEXTS)
def test_a_text_chunk_is_written_byte_for_byte_as_pydantic_writes_it(content: str | None) -> None:
    chunk = Chunk(job_id="j-1", delta=Delta(content=content))
    wire = chunk.model_dump_json(exclude_none=True)
    assert encode(chunk) == wire
    assert encode_bytes(chunk) == wire.encode()
    assert encode_chunk("j-1", content) == wire.encode()
    assert parse_frame(encode_bytes(chunk)) == chunk


@pytest.mark.parametrize("frame", FRAMES, ids=lambda frame: frame.type)
def test_encode_bytes_is_encode_in_utf8(frame: Frame) -> None:
    assert encode_bytes(frame) == encode(frame).encode()


def test_what_orjson_refuses_is_read_as_the_standard_parser_reads_it() -> None:
    nan = parse_frame('{"type": "heartbeat", "ts": NaN}')
    huge = parse_frame('{"type": "heartbeat", "ts": 1e400}')
    assert isinstance(nan, Heartbeat)
    assert math.isnan(nan.ts)
    assert huge == Heartbeat(ts=math.inf)


def test_parse_frame_reads_utf16_as_the_standard_parser_does() -> None:
    assert parse_frame('{"type": "cancel", "job_id": "j"}'.encode("utf-16")) == Cancel(job_id="j")


def test_parse_frame_accepts_utf8_bytes() -> None:
    assert parse_frame(b'{"type": "cancel", "job_id": "j"}') == Cancel(job_id="j")


def test_parse_frame_ignores_unknown_fields_for_forward_compatibility() -> None:
    frame = parse_frame('{"type": "heartbeat", "ts": 1, "load": 0.5}')
    assert frame == Heartbeat(ts=1)


def test_a_single_stop_string_becomes_a_list() -> None:
    assert SamplingParams.model_validate({"stop": "END"}).stop == ["END"]


def test_the_worker_token_is_not_in_the_hello_repr() -> None:
    assert "iam_secret" not in repr(FRAMES[0])


MALFORMED: list[tuple[str, Any, str]] = [
    ("not json", "{nope", ErrorCode.MALFORMED_JSON),
    ("empty text", "", ErrorCode.MALFORMED_JSON),
    ("invalid utf-8", b"\xff\xfe", ErrorCode.MALFORMED_JSON),
    ("json array", "[1, 2]", ErrorCode.MALFORMED_JSON),
    ("absurdly deep nesting", "[" * 100_000 + "]" * 100_000, ErrorCode.MALFORMED_JSON),
    ("json string", '"hello"', ErrorCode.MALFORMED_JSON),
    ("no type", '{"job_id": "j"}', ErrorCode.INVALID_FRAME),
    ("type not a string", '{"type": 3}', ErrorCode.INVALID_FRAME),
    ("unknown type", '{"type": "reboot"}', ErrorCode.UNKNOWN_TYPE),
    ("missing field", '{"type": "cancel"}', ErrorCode.INVALID_FRAME),
    ("empty job id", '{"type": "cancel", "job_id": ""}', ErrorCode.INVALID_FRAME),
    ("wrong field type", '{"type": "heartbeat", "ts": "noon"}', ErrorCode.INVALID_FRAME),
    (
        "bad hardware",
        '{"type": "hello", "protocol": 1, "token": "t", "worker_name": "w", "models": [],'
        ' "hardware": "tpu", "slots": 1, "version": "1"}',
        ErrorCode.INVALID_FRAME,
    ),
    (
        "zero slots",
        '{"type": "hello", "protocol": 1, "token": "t", "worker_name": "w", "models": [],'
        ' "hardware": "cpu", "slots": 0, "version": "1"}',
        ErrorCode.INVALID_FRAME,
    ),
    (
        "no messages",
        '{"type": "job", "job_id": "j", "model": "m", "messages": [], "deadline_s": 5}',
        ErrorCode.INVALID_FRAME,
    ),
    (
        "message without role",
        '{"type": "job", "job_id": "j", "model": "m", "messages": [{"content": "hi"}],'
        ' "deadline_s": 5}',
        ErrorCode.INVALID_FRAME,
    ),
    (
        "temperature out of range",
        '{"type": "job", "job_id": "j", "model": "m", "messages": [{"role": "user"}],'
        ' "params": {"temperature": 9}, "deadline_s": 5}',
        ErrorCode.INVALID_FRAME,
    ),
    (
        "no deadline",
        '{"type": "job", "job_id": "j", "model": "m", "messages": [{"role": "user"}]}',
        ErrorCode.INVALID_FRAME,
    ),
    (
        "tool call delta without index",
        '{"type": "chunk", "job_id": "j", "delta": {"tool_calls": [{"id": "c"}]}}',
        ErrorCode.INVALID_FRAME,
    ),
    (
        "unknown finish reason",
        '{"type": "done", "job_id": "j", "finish_reason": "tired", "model": "m",'
        ' "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}',
        ErrorCode.INVALID_FRAME,
    ),
    (
        "negative usage",
        '{"type": "done", "job_id": "j", "finish_reason": "stop", "model": "m",'
        ' "usage": {"prompt_tokens": -1, "completion_tokens": 1, "total_tokens": 0}}',
        ErrorCode.INVALID_FRAME,
    ),
    ("error without code", '{"type": "error", "message": "x"}', ErrorCode.INVALID_FRAME),
    ("chunks without pieces", '{"type": "chunks", "job_id": "j", "pieces": []}', "invalid_frame"),
    (
        "chunks with a piece that is not text",
        '{"type": "chunks", "job_id": "j", "pieces": ["a", null]}',
        ErrorCode.INVALID_FRAME,
    ),
    (
        "chunks with too many pieces",
        json.dumps({"type": "chunks", "job_id": "j", "pieces": ["a"] * (MAX_PIECES + 1)}),
        ErrorCode.INVALID_FRAME,
    ),
    (
        "hello with too many features",
        json.dumps({"type": "hello", "features": ["f"] * 33}),
        ErrorCode.INVALID_FRAME,
    ),
    (
        "welcome with zero interval",
        '{"type": "welcome", "worker_id": "w", "heartbeat_interval_s": 0, "protocol": 1}',
        ErrorCode.INVALID_FRAME,
    ),
]


@pytest.mark.parametrize(
    ("text", "code"), [(t, c) for _, t, c in MALFORMED], ids=[name for name, _, _ in MALFORMED]
)
def test_malformed_frames_raise_protocol_error_with_a_code(text: str | bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_frame(text)
    assert caught.value.code == code
    assert caught.value.message


def test_invalid_field_errors_name_the_field() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_frame('{"type": "heartbeat", "ts": "noon"}')
    assert "ts" in caught.value.message
    assert "heartbeat" in caught.value.message


def test_a_chunks_frame_reads_as_one_chunk_that_counts_each_piece() -> None:
    frame = parse_frame(encode_pieces("j-1", ["Once", " upon", ""]))
    assert isinstance(frame, Chunks)
    chunk = frame.as_chunk()
    assert (chunk.job_id, chunk.delta.content) == ("j-1", "Once upon")
    assert chunk.pieces == 3
    assert chunk.parts == ("Once", " upon", "")
    assert encode_pieces("j-1", ["a"]) == encode(Chunks(job_id="j-1", pieces=["a"])).encode()


def test_a_chunk_from_the_wire_counts_as_one_whatever_it_claims() -> None:
    frame = parse_frame(
        '{"type": "chunk", "job_id": "j", "delta": {"content": "abc"}, "_parts": ["a", "b"],'
        ' "parts": ["a", "b"], "pieces": 9}'
    )
    assert isinstance(frame, Chunk)
    assert (frame.pieces, frame.parts) == (1, ())
