"""OpenAI chat-completions request validation and response shapes.

Unknown request fields are ignored, as OpenAI-compatible servers do, so newer SDKs keep working;
known fields are checked strictly (pydantic's strict mode: ``"1"`` is not an integer, ``0`` is not
``false``) and a bad one is reported with its ``param``.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inference.protocol import MAX_TOKENS, Delta, Done, SamplingParams, ToolCallDelta


class _Lenient(BaseModel):
    # Unknown fields pass (newer SDKs send more); known ones are strict like the request's.
    model_config = ConfigDict(extra="allow", strict=True)


class ChatMessage(_Lenient):
    """One message of the conversation so far."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class FunctionSpec(_Lenient):
    """A function the model may call."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(_Lenient):
    """A tool offered to the model (only functions exist)."""

    type: Literal["function"]
    function: FunctionSpec


class NamedToolChoice(_Lenient):
    """Force a call of one named function."""

    type: Literal["function"]
    function: dict[str, str]

    @field_validator("function")
    @classmethod
    def _has_name(cls, value: dict[str, str]) -> dict[str, str]:
        if not isinstance(value.get("name"), str):
            raise ValueError("function.name is required")
        return value


class StreamOptions(_Lenient):
    """Streaming extras."""

    include_usage: bool = False


class ResponseFormat(_Lenient):
    """Structured output request."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    max_tokens: Annotated[int, Field(gt=0, le=MAX_TOKENS)] | None = None
    max_completion_tokens: Annotated[int, Field(gt=0, le=MAX_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    response_format: ResponseFormat | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None

    def sampling(self) -> SamplingParams:
        """The job's sampling parameters."""
        return SamplingParams(
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=[self.stop] if isinstance(self.stop, str) else self.stop,
            seed=self.seed,
            response_format=self.response_format.model_dump(exclude_none=True)
            if self.response_format
            else None,
        )

    def wants_tools(self) -> bool:
        """Whether the job needs a worker that supports tool calls."""
        return bool(self.tools) and self.tool_choice != "none"


def completion_id() -> str:
    """A fresh ``chatcmpl-…`` id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


class Answer:
    """Accumulates streamed deltas into a whole assistant message."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, delta: Delta) -> None:
        """Fold one delta in; tool-call pieces are joined by their index."""
        if delta.content:
            self.content.append(delta.content)
        for piece in delta.tool_calls or []:
            self._add_call(piece)

    def _add_call(self, piece: ToolCallDelta) -> None:
        call = self.calls.setdefault(
            piece.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if piece.id:
            call["id"] = piece.id
        if piece.function.name:
            call["function"]["name"] += piece.function.name
        if piece.function.arguments:
            call["function"]["arguments"] += piece.function.arguments

    def message(self) -> dict[str, Any]:
        """The assistant message in OpenAI's shape."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) or None}
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        elif message["content"] is None:
            message["content"] = ""
        return message


def completion_body(cid: str, model: str, answer: Answer, done: Done) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": answer.message(),
                "finish_reason": done.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage_body(done),
    }


def usage_body(done: Done) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": done.usage.prompt_tokens,
        "completion_tokens": done.usage.completion_tokens,
        "total_tokens": done.usage.total_tokens,
    }


def chunk_body(
    cid: str,
    created: int,
    model: str,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta=None`` makes the usage-only final chunk."""
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    if usage is not None:
        body["usage"] = usage
    return body
