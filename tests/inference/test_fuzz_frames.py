"""Fuzz ``parse_frame``: whatever a worker sends, the only exception is ``ProtocolError``.

The hub's link loop answers a ``ProtocolError`` with an ``error`` frame and keeps the link; any
other exception would end the link (or the hello) outside the bad-frame rule. Budget: see
``tests/fuzzing.py``.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from inference.protocol import (
    FRAME_TYPES,
    Cancel,
    Chunk,
    Done,
    Error,
    Frame,
    Heartbeat,
    Hello,
    Job,
    Leave,
    ProtocolError,
    Welcome,
    parse_frame,
)
from tests.fuzzing import fuzz_settings

FUZZ = fuzz_settings(200)

FRAME_CLASSES = (Hello, Welcome, Heartbeat, Job, Chunk, Done, Error, Cancel, Leave)
FIELDS = sorted({name for cls in FRAME_CLASSES for name in cls.model_fields} - {"type"})

VALID: list[dict[str, Any]] = [
    {
        "type": "hello",
        "protocol": 1,
        "token": "iam_x",
        "worker_name": "w",
        "models": [{"id": "m", "context_size": 2048, "supports_tools": False}],
        "hardware": "cpu",
        "slots": 1,
        "version": "1",
    },
    {"type": "heartbeat", "ts": 1.5},
    {
        "type": "job",
        "job_id": "j",
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "params": {"max_tokens": 8, "stop": ["\n"], "seed": 1},
        "deadline_s": 5,
    },
    {"type": "chunk", "job_id": "j", "delta": {"content": "x"}},
    {
        "type": "chunk",
        "job_id": "j",
        "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]},
    },
    {
        "type": "done",
        "job_id": "j",
        "finish_reason": "stop",
        "model": "m",
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    },
    {"type": "error", "job_id": "j", "code": "engine_error", "message": "x"},
    {"type": "cancel", "job_id": "j"},
    {"type": "leave", "reason": "bye"},
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)

frame_shaped = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(FRAME_TYPES))},
    optional={name: json_values for name in FIELDS},
)

# Number literals JSON allows but Python may not hold: thousands of digits, huge exponents.
_digits = st.integers(min_value=1, max_value=6000).map(lambda count: "9" * count)
number_literals = _digits | st.builds(
    "".join,
    st.tuples(
        st.sampled_from(["", "-"]),
        _digits,
        st.sampled_from(["", ".5", "." + "1" * 400]),
        st.sampled_from(["e5", "e400", "E-400", "e+999999"]),
    ),
)


def _mutations(draw: st.DrawFn) -> dict[str, Any]:
    frame = dict(draw(st.sampled_from(VALID)))
    key = draw(st.sampled_from(sorted(frame)))
    frame[key] = draw(json_values)
    return frame


mutated_frames = st.composite(_mutations)()


def _parse_or_refuse(text: str | bytes) -> Frame | None:
    """The frame, or ``None`` when ``parse_frame`` refused it with a ``ProtocolError``."""
    try:
        return parse_frame(text)
    except ProtocolError as exc:
        refusal = exc
    assert refusal.code and refusal.message
    return None


@FUZZ
@given(st.text())
def test_any_text_is_a_frame_or_a_protocol_error(text: str) -> None:
    _parse_or_refuse(text)


@FUZZ
@given(st.binary())
def test_any_bytes_are_a_frame_or_a_protocol_error(data: bytes) -> None:
    _parse_or_refuse(data)


@FUZZ
@given(json_values)
def test_any_json_value_is_a_frame_or_a_protocol_error(value: object) -> None:
    _parse_or_refuse(json.dumps(value))


@FUZZ
@given(frame_shaped)
def test_frame_shaped_objects_parse_to_their_own_type_or_are_refused(value: dict[str, Any]) -> None:
    frame = _parse_or_refuse(json.dumps(value))
    assert frame is None or frame.type == value["type"]


@FUZZ
@given(mutated_frames)
def test_valid_frames_with_one_field_replaced_parse_or_are_refused(value: dict[str, Any]) -> None:
    frame = _parse_or_refuse(json.dumps(value))
    assert frame is None or frame.type == value["type"]


@FUZZ
@given(st.sampled_from(VALID), number_literals)
@example(VALID[1], "9" * 4301)  # int() refuses more than 4300 digits with a ValueError
def test_huge_number_literals_in_any_field_parse_or_are_refused(
    valid: dict[str, Any], number: str
) -> None:
    for key in sorted(set(valid) - {"type"}):
        text = json.dumps({**valid, key: "@"}).replace('"@"', number)
        _parse_or_refuse(text)


@FUZZ
@given(st.sampled_from(VALID), st.integers(min_value=1, max_value=50_000))
def test_deeply_nested_json_in_any_field_is_refused_or_parsed(
    valid: dict[str, Any], depth: int
) -> None:
    for key in sorted(set(valid) - {"type"}):
        text = json.dumps({**valid, key: "@"}).replace('"@"', "[" * depth + "]" * depth)
        _parse_or_refuse(text)


@FUZZ
@given(st.sampled_from(VALID), st.binary(min_size=1, max_size=8))
def test_valid_frames_with_invalid_utf8_bytes_are_refused(
    valid: dict[str, Any], garbage: bytes
) -> None:
    data = json.dumps(valid).encode() + b"\xff" + garbage
    assert _parse_or_refuse(data) is None
