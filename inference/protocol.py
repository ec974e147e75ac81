"""Worker protocol v1: every frame exchanged between the hub and a worker over one WebSocket.

Frames are JSON text messages discriminated by their ``type`` field. Unknown *fields* are
ignored so that a peer may add optional data without a version bump; unknown *types* and
invalid fields are errors. ``docs/worker-protocol.md`` is the prose contract for this module.

``chunk`` frames come one per token, so the hot path is lean: frames are read with orjson (the
standard parser only for what orjson refuses) and a text-only chunk is written by orjson without
building a model, byte for byte what pydantic writes (``tests/inference/test_protocol.py``).
Tokens that are ready together travel as one ``chunks`` frame (feature ``chunks``, agreed in
``hello``/``welcome``): the hub reads it as one :class:`Chunk` of the joined text that still
counts as one token per piece, as separate frames would have.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
)

PROTOCOL_VERSION = 1
FEATURE_CHUNKS = "chunks"
"""Optional feature: the worker may send ``chunks`` frames (several text pieces in one)."""
FEATURES: frozenset[str] = frozenset({FEATURE_CHUNKS})
"""The optional features this side of the protocol implements."""
MAX_PIECES = 256
"""Most text pieces one ``chunks`` frame carries."""
# Bound of every token count on the wire: far above any context, far below float overflow.
MAX_TOKENS = 1 << 24

Hardware = Literal["gpu", "cpu"]
FinishReason = Literal["stop", "length", "tool_calls"]


class ErrorCode(StrEnum):
    """Machine-readable codes carried by ``error`` frames (and by ``InferenceError.code``)."""

    MALFORMED_JSON = "malformed_json"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FRAME = "invalid_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    UNEXPECTED_FRAME = "unexpected_frame"
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - an error code, not a secret
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    NOT_ALLOWED = "not_allowed"
    ALREADY_CONNECTED = "already_connected"
    UNKNOWN_MODEL = "unknown_model"
    SLOTS_FULL = "slots_full"
    DUPLICATE_JOB = "duplicate_job"
    CANCELLED = "cancelled"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    TOOLS_UNSUPPORTED = "tools_unsupported"
    INVALID_REQUEST = "invalid_request"
    UPSTREAM_ERROR = "upstream_error"
    MODEL_MISSING = "model_missing"
    ENGINE_ERROR = "engine_error"
    INTERNAL_ERROR = "internal_error"


class InferenceError(Exception):
    """Base of the inference package's errors; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProtocolError(InferenceError):
    """A frame that is not valid protocol v1 (bad JSON, unknown type, invalid fields)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ModelInfo(_Model):
    """One model a worker serves."""

    id: str = Field(min_length=1)
    context_size: int = Field(gt=0, le=MAX_TOKENS)
    supports_tools: bool = False


class SamplingParams(_Model):
    """Sampling parameters of a job; ``None`` means the engine's default."""

    max_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    response_format: dict[str, Any] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class FunctionDelta(_Model):
    """A piece of a function call: the name comes once, the arguments in pieces."""

    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Model):
    """A piece of one tool call; ``index`` keeps parallel calls apart."""

    index: int = Field(ge=0)
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta = FunctionDelta()


class Delta(_Model):
    """What a chunk adds to the answer: text, tool-call pieces, or both."""

    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class Usage(_Model):
    """Token counts of one job; ``estimated`` is true when they are not the model's own counts."""

    prompt_tokens: int = Field(ge=0, le=MAX_TOKENS)
    completion_tokens: int = Field(ge=0, le=MAX_TOKENS)
    total_tokens: int = Field(ge=0, le=MAX_TOKENS)
    estimated: bool = False


class Hello(_Model):
    """Worker → hub, first frame: who the worker is and what it serves."""

    type: Literal["hello"] = "hello"
    protocol: int = Field(ge=1)
    token: str = Field(min_length=1, repr=False)
    worker_name: str = Field(min_length=1)
    models: list[ModelInfo]
    hardware: Hardware
    slots: int = Field(ge=1, le=1024)
    version: str
    features: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None, max_length=32)
    """Optional features the worker implements (unknown ones are ignored)."""


class Welcome(_Model):
    """Hub → worker, answer to ``hello``: the worker's id and the heartbeat interval.

    ``features``: the optional features of the worker's ``hello`` this hub implements too;
    either side uses a feature only once it is agreed here.
    """

    type: Literal["welcome"] = "welcome"
    worker_id: str = Field(min_length=1)
    heartbeat_interval_s: float = Field(gt=0)
    protocol: int = Field(ge=1)
    features: list[str] | None = None


class Heartbeat(_Model):
    """Both ways, every heartbeat interval: the sender's wall clock in Unix seconds."""

    type: Literal["heartbeat"] = "heartbeat"
    ts: float


class Job(_Model):
    """Hub → worker: one chat completion to run; ``deadline_s`` counts from receipt.

    ``assistant_prefix`` (failover): text another worker already streamed for this answer; the
    worker continues the assistant's reply after it and streams only the continuation.
    """

    type: Literal["job"] = "job"
    job_id: str = Field(min_length=1)
    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    params: SamplingParams = SamplingParams()
    deadline_s: float = Field(gt=0)
    assistant_prefix: str | None = None

    @field_validator("messages")
    @classmethod
    def _messages_have_roles(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for position, message in enumerate(messages):
            if not isinstance(message.get("role"), str):
                raise ValueError(f"message {position} has no string 'role'")
        return messages


class Chunk(_Model):
    """Worker → hub: one streamed piece of a job's answer.

    A chunk read from a ``chunks`` frame joins that frame's pieces and keeps them
    (:attr:`parts`, set by the hub from the frame, never read from the wire): every count of
    "chunks relayed" stays one per piece the worker streamed (:attr:`pieces`), and a client's
    SSE stream still gets one event per piece.
    """

    type: Literal["chunk"] = "chunk"
    job_id: str = Field(min_length=1)
    delta: Delta
    _parts: tuple[str, ...] = PrivateAttr(default=())

    @property
    def pieces(self) -> int:
        """How many streamed pieces (one token at least each) this chunk holds."""
        return len(self._parts) or 1

    @property
    def parts(self) -> tuple[str, ...]:
        """The text pieces of a chunk read from a ``chunks`` frame (empty for any other)."""
        return self._parts


class Chunks(_Model):
    """Worker → hub (feature ``chunks``): text pieces of a job's answer that were ready together.

    Read as one :class:`Chunk` of the joined text (:meth:`as_chunk`) that counts as one chunk
    per piece: the same bound on the usage as one ``chunk`` frame per piece, one message instead.
    """

    type: Literal["chunks"] = "chunks"
    job_id: str = Field(min_length=1)
    pieces: list[str] = Field(min_length=1, max_length=MAX_PIECES)

    def as_chunk(self) -> Chunk:
        """The one chunk these pieces make, counting as ``len(pieces)`` chunks."""
        chunk = Chunk(job_id=self.job_id, delta=Delta(content="".join(self.pieces)))
        chunk._parts = tuple(self.pieces)
        return chunk


class Done(_Model):
    """Worker → hub: the job finished; the last frame of a successful job."""

    type: Literal["done"] = "done"
    job_id: str = Field(min_length=1)
    finish_reason: FinishReason
    usage: Usage
    model: str


class Error(_Model):
    """Both ways: a failure; with ``job_id`` it ends that job, without it concerns the link."""

    type: Literal["error"] = "error"
    job_id: str | None = None
    code: str = Field(min_length=1)
    message: str


class Cancel(_Model):
    """Hub → worker: stop a job; the worker answers with an ``error`` coded ``cancelled``."""

    type: Literal["cancel"] = "cancel"
    job_id: str = Field(min_length=1)


class Leave(_Model):
    """Worker → hub, last frame: the worker is going away; its in-flight jobs go elsewhere."""

    type: Literal["leave"] = "leave"
    reason: str


Frame = Annotated[
    Hello | Welcome | Heartbeat | Job | Chunk | Chunks | Done | Error | Cancel | Leave,
    Field(discriminator="type"),
]
FRAME_TYPES: frozenset[str] = frozenset(
    {"hello", "welcome", "heartbeat", "job", "chunk", "chunks", "done", "error", "cancel", "leave"}
)
_FRAME_ADAPTER: TypeAdapter[Frame] = TypeAdapter(Frame)


def parse_frame(text: str | bytes) -> Frame:
    """Parse one WebSocket message into a frame, raising ``ProtocolError`` on anything invalid."""
    data = _loads(text)
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.MALFORMED_JSON, "frame must be a JSON object")
    frame_type = data.get("type")
    if not isinstance(frame_type, str):
        raise ProtocolError(ErrorCode.INVALID_FRAME, "frame has no string 'type' field")
    if frame_type not in FRAME_TYPES:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {frame_type!r}")
    try:
        return _FRAME_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID_FRAME, _describe(frame_type, exc)) from exc


def _loads(text: str | bytes) -> Any:
    """orjson first; what it refuses (NaN, huge integers, UTF-16...) gets the standard parser."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also int literals > 4300 digits
        raise ProtocolError(ErrorCode.MALFORMED_JSON, f"frame is not valid JSON: {exc}") from exc


def encode(frame: Frame) -> str:
    """Serialise a frame to the JSON text sent on the wire (unset optional fields omitted)."""
    if isinstance(frame, Chunk) and frame.delta.tool_calls is None:
        return encode_chunk(frame.job_id, frame.delta.content).decode()
    return frame.model_dump_json(exclude_none=True)


def encode_bytes(frame: Frame) -> bytes:
    """:func:`encode` as UTF-8 bytes, for transports that send bytes as a text message."""
    if isinstance(frame, Chunk) and frame.delta.tool_calls is None:
        return encode_chunk(frame.job_id, frame.delta.content)
    return frame.model_dump_json(exclude_none=True).encode()


def encode_chunk(job_id: str, content: str | None) -> bytes:
    """The wire bytes of a text-only ``chunk`` frame, without building the frame first."""
    delta = {} if content is None else {"content": content}
    return orjson.dumps({"type": "chunk", "job_id": job_id, "delta": delta})


def encode_pieces(job_id: str, pieces: list[str]) -> bytes:
    """The wire bytes of a ``chunks`` frame (at most :data:`MAX_PIECES` pieces)."""
    return orjson.dumps({"type": "chunks", "job_id": job_id, "pieces": pieces})


def _describe(frame_type: str, exc: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'][1:]) or '(frame)'}: {error['msg']}"
        for error in exc.errors(include_url=False)
    )
    return f"invalid {frame_type!r} frame: {problems}"
