"""Typed (structured) outputs of the MCP tools, so agents get JSON with a published schema."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from memory.context import MAX_CONTEXT_CHARS
from memory.facts import TAG_PATTERN
from memory.notes import MAX_AGENT_CHARS, MAX_BODY_CHARS, MAX_TITLE_CHARS, NAMESPACE_PATTERN


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ModelEntry(_Out):
    """A model the pool serves."""

    id: str
    context_length: int | None = None
    supports_tools: bool = False
    workers: int = 0

    @classmethod
    def of(cls, body: dict[str, Any]) -> ModelEntry:
        """From an entry of ``/v1/models``."""
        return cls.model_validate(body)


class ModelList(_Out):
    """Models the pool serves now."""

    models: list[ModelEntry]


class PoolStatus(_Out):
    """What the pool can do right now."""

    workers: int = Field(description="Connected workers that take jobs.")
    free_slots: int = Field(description="Jobs that could start at once.")
    queue_depth: int = Field(description="Jobs waiting for a worker.")
    models: list[ModelEntry]


class ChatAnswer(_Out):
    """A pool model's answer."""

    content: str
    model: str = Field(description="The model that answered.")
    route: str = Field(description="direct, queued, fallback, forwarded or degraded.")
    conversation_id: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def of(cls, body: dict[str, Any], headers: httpx.Headers) -> ChatAnswer:
        """From a ``chat.completion`` body and its ``X-*`` headers."""
        choice = body["choices"][0]
        return cls(
            content=choice["message"].get("content") or "",
            model=headers.get("x-iamine-served-model", body["model"]),
            route=headers.get("x-iamine-route", "direct"),
            conversation_id=headers.get("x-conversation-id", ""),
            finish_reason=choice["finish_reason"],
            prompt_tokens=body["usage"]["prompt_tokens"],
            completion_tokens=body["usage"]["completion_tokens"],
        )


class ConversationSummary(_Out):
    """A conversation as listed (no text)."""

    id: str
    created_at: str
    last_active_at: str
    exchanges: int
    turn_count: int = 0


class ConversationList(_Out):
    """The user's conversations, newest first."""

    conversations: list[ConversationSummary]


class ConversationDetail(ConversationSummary):
    """A conversation with its decrypted turns."""

    turns: list[dict[str, Any]]
    unreadable_turns: int = Field(0, description="Turns sealed under a lost key.")


class Fact(_Out):
    """A personal fact (L3)."""

    id: str
    text: str
    key: str | None = None
    tags: list[str] = Field(default_factory=list)
    confidence: float = 1.0
    valid_from: str
    valid_to: str | None = None
    score: float | None = Field(None, description="Cosine similarity to the query.")
    status: str | None = Field(None, description="On remember: stored, duplicate, ...")


class Note(_Out):
    """An agent note (L4)."""

    id: str
    namespace: str
    title: str
    body: str
    tags: list[str] = Field(default_factory=list)
    author_agent: str = ""
    created_at: str
    updated_at: str
    score: float | None = Field(None, description="Fused (reciprocal-rank) search score.")
    snippet: str | None = None


_PLAIN = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL


class NoteInput(BaseModel):
    """One note of a batch (``note_write_batch``)."""

    model_config = ConfigDict(extra="forbid")

    body: str = Field(min_length=1, max_length=MAX_BODY_CHARS, pattern=_PLAIN)
    title: str = Field("", max_length=MAX_TITLE_CHARS, pattern=_PLAIN)
    namespace: str = Field(
        "user:me",
        pattern=NAMESPACE_PATTERN,
        description="`user:me`, `pool:<name>` or `fed:<name>`.",
    )
    tags: list[Annotated[str, Field(pattern=TAG_PATTERN)]] = Field(
        default_factory=list, max_length=16
    )
    author_agent: str = Field("", max_length=MAX_AGENT_CHARS, pattern=_PLAIN)
    speaker: str = Field("", max_length=MAX_AGENT_CHARS, pattern=_PLAIN, description="Who said it.")
    said_at: datetime | None = Field(None, description="When it was said (with a time zone).")
    context: str = Field(
        "", max_length=MAX_CONTEXT_CHARS, pattern=_PLAIN, description="What situates the note."
    )


class FactList(_Out):
    """Facts, best or newest first."""

    facts: list[Fact]


class NoteList(_Out):
    """Notes, best or newest first."""

    notes: list[Note]


class Recall(_Out):
    """What memory holds about a query: facts (L3) and notes (L4), best first."""

    query: str
    facts: list[Fact]
    notes: list[Note]


class Forgotten(_Out):
    """The outcome of forgetting one fact."""

    id: str
    deleted: bool


class SubagentAnswer(_Out):
    """A sub-agent role's answer."""

    role: str
    content: str
    model: str
    finish_reason: str
    completion_tokens: int
    review: dict[str, Any] | None = Field(None, description="The reviewer's critique, if on.")


class MemoryExport(BaseModel):
    """Everything the pool stores for the user, decrypted (fields the hub adds later kept)."""

    model_config = ConfigDict(extra="allow")

    object: str = "memory.export"
    user: str
    exported_at: str
    settings: dict[str, Any]
    conversations: list[dict[str, Any]] = Field(description="Each with its decrypted turns.")
    l1_messages: list[dict[str, Any]] = Field(description="Short-term (L1) messages.")
    facts: list[dict[str, Any]] = Field(description="Facts (L3), with superseded ones.")
    notes: list[dict[str, Any]] = Field(description="The user's private notes (L4).")
