"""Fact extraction: a pool model reads a finished exchange and proposes facts, as strict JSON.

The model is injected (``extract(prompt) -> str``; the hub runs it as an ordinary pool job), so
this package stays independent of inference, as compaction's summariser does. Its answer must be
exactly ``{"facts": [{"text": …, "key": …, "tags": […], "confidence": …}]}`` (one surrounding
Markdown code fence is tolerated); anything else is rejected whole and logged by reason, never by
content. The hub asks for it with :data:`EXTRACTION_FORMAT` (a JSON schema the worker enforces
by grammar), so the shape holds even on the bundled 135M model; a rejection, a timeout or no
worker still only means no facts from that exchange. Accepted facts go through
:func:`memory.facts.add_fact` (dedup, supersede).

:class:`FactMiner` is a bounded queue of extractions, run one at a time by a loop the hub's
lifespan owns; no database connection is held while the model or the embedder works.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

import asyncpg
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memory.crypto import CryptoError
from memory.embeddings import Embedder
from memory.errors import MemoryStoreError
from memory.facts import (
    KEY_PATTERN,
    MAX_FACT_CHARS,
    TAG_PATTERN,
    FactAction,
    FactSource,
    NewFact,
    add_fact,
)
from memory.keys import MemoryLockedError, open_key
from memory.l2 import load_preferences
from memory.settings import MemorySettings

log = structlog.get_logger()

Extractor = Callable[[list[dict[str, Any]]], Awaitable[str]]

MAX_FACTS = 10
EXTRACTION_INSTRUCTIONS = (
    "You extract durable personal facts about the user from a conversation: who they are, where "
    "they live and work, what they prefer, own, plan or need remembered. Ignore questions, "
    "small talk and anything about the assistant. Answer with JSON only, exactly of this shape:\n"
    '{"facts": [{"text": "The user lives in Lyon.", "key": "home_city", "tags": ["location"], '
    '"confidence": 0.9}]}\n'
    "`text` is one short sentence about the user; `key` (optional) names what the fact is about "
    "in snake_case, so a later fact with the same key replaces it; `tags` are lower-case words; "
    'confidence is between 0 and 1. With nothing worth remembering answer {"facts": []}.'
)
_FENCE = re.compile(r"^```(?:json)?\s*\n(?P<body>.*)\n```$", re.DOTALL)

Tag = Annotated[str, Field(pattern=TAG_PATTERN)]


class ExtractionRejected(MemoryStoreError):
    """The model's answer is not the JSON asked for."""

    code = "extraction_rejected"


class ExtractionUnavailable(Exception):
    """The extractor cannot run now (no worker for the model, a failed job)."""


class ExtractedFact(BaseModel):
    """One fact as the model must write it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str = Field(min_length=3, max_length=MAX_FACT_CHARS)
    key: str | None = Field(None, pattern=KEY_PATTERN)
    tags: list[Tag] = Field(default_factory=list, max_length=8)
    confidence: float = Field(0.7, ge=0, le=1)


class ExtractionAnswer(BaseModel):
    """The whole answer."""

    model_config = ConfigDict(extra="forbid", strict=True)

    facts: list[ExtractedFact] = Field(max_length=MAX_FACTS)


EXTRACTION_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "extracted_facts", "schema": ExtractionAnswer.model_json_schema()},
}
"""The answer's JSON schema as a ``response_format``: a llama.cpp worker turns it into a grammar,
so even a small model writes the shape asked for (RED's plans are constrained the same way)."""


class ExtractionOutcome(StrEnum):
    """What became of one extraction."""

    STORED = "stored"
    NOTHING = "nothing"  # valid answer, no facts
    REJECTED = "rejected"  # the answer was not the JSON asked for
    UNAVAILABLE = "unavailable"  # no worker, a failed job, or a timeout
    DISABLED = "disabled"  # the user turned memory off meanwhile
    LOCKED = "locked"  # the token cannot open the user's key


@dataclass(frozen=True)
class ExtractionResult:
    """An extraction's outcome and what it stored."""

    outcome: ExtractionOutcome
    created: list[UUID] = field(default_factory=list)
    duplicates: list[UUID] = field(default_factory=list)
    superseded: list[UUID] = field(default_factory=list)


@dataclass(frozen=True)
class ExtractionRequest:
    """Mine one exchange with this token's key."""

    user_id: UUID
    token_id: UUID
    token: str = field(repr=False)
    conversation_id: str
    messages: list[dict[str, Any]] = field(repr=False)


def extraction_prompt(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat messages that ask a model for the facts in ``messages``."""
    lines = [f"{m.get('role', 'unknown')}: {_text(m)}" for m in messages if _text(m)]
    return [
        {"role": "system", "content": EXTRACTION_INSTRUCTIONS},
        {"role": "user", "content": "Conversation:\n" + "\n".join(lines)},
    ]


def parse_extraction(answer: str) -> list[ExtractedFact]:
    """Validate the model's answer strictly; raise :class:`ExtractionRejected` saying why."""
    text = answer.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced["body"].strip()
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise ExtractionRejected(f"not JSON: {exc}") from None
    try:
        return ExtractionAnswer.model_validate(value).facts
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        raise ExtractionRejected(f"wrong shape at {where}: {first['msg']}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def extract_facts(
    pool: asyncpg.Pool,
    embedder: Embedder,
    request: ExtractionRequest,
    settings: MemorySettings,
    extract: Extractor,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ExtractionResult:
    """Ask the model for facts in one exchange and store those that validate."""
    async with pool.acquire() as conn:
        if not (await load_preferences(conn, request.user_id)).enabled:
            return ExtractionResult(ExtractionOutcome.DISABLED)
        try:
            key = await open_key(
                conn, request.user_id, request.token_id, request.token, provision=False
            )
        except MemoryLockedError:
            return ExtractionResult(ExtractionOutcome.LOCKED)
    try:
        async with asyncio.timeout(settings.facts_extraction_timeout_s):
            answer = await extract(extraction_prompt(request.messages))
    except (ExtractionUnavailable, TimeoutError) as exc:
        log.info("fact_extraction_unavailable", reason=str(exc) or "timeout")
        return ExtractionResult(ExtractionOutcome.UNAVAILABLE)
    try:
        proposed = parse_extraction(answer)
    except ExtractionRejected as exc:
        # The reason, never the answer: it may quote the user.
        log.info("fact_extraction_rejected", reason=exc.message, chars=len(answer))
        return ExtractionResult(ExtractionOutcome.REJECTED)
    if not proposed:
        return ExtractionResult(ExtractionOutcome.NOTHING)
    vectors = await embedder.embed([f.text for f in proposed])
    result = ExtractionResult(ExtractionOutcome.STORED)
    async with pool.acquire() as conn:
        for fact, vector in zip(proposed, vectors, strict=True):
            new = NewFact(
                text=fact.text,
                key=fact.key,
                tags=tuple(fact.tags),
                confidence=fact.confidence,
                source=FactSource.EXTRACTED,
                source_conversation=request.conversation_id,
            )
            outcome = await add_fact(
                conn, key, request.user_id, new, vector, now=now(), settings=settings
            )
            target = result.created if outcome.action is FactAction.CREATED else result.duplicates
            target.append(outcome.fact.id)
            result.superseded.extend(outcome.superseded)
    return result


class FactMiner:
    """A bounded queue of extractions, run one at a time by a loop the hub's lifespan owns."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        embedder: Embedder,
        settings: MemorySettings,
        extract: Extractor,
    ) -> None:
        self._pool = pool
        self._embedder = embedder
        self._settings = settings
        self._extract = extract
        self._queue: asyncio.Queue[ExtractionRequest] = asyncio.Queue(
            settings.facts_extraction_queue_size
        )

    def submit(self, request: ExtractionRequest) -> bool:
        """Queue an extraction unless the queue is full (that exchange is then not mined)."""
        if self._queue.full():
            return False
        self._queue.put_nowait(request)
        return True

    @property
    def pending(self) -> int:
        """Extractions queued and not yet started."""
        return self._queue.qsize()

    async def run(self) -> None:
        """Run queued extractions forever (cancelled by the lifespan)."""
        while True:
            await self.run_one(await self._queue.get())

    async def run_one(self, request: ExtractionRequest) -> ExtractionResult | None:
        """Run one extraction, logging (not raising) database, key and model failures."""
        try:
            return await extract_facts(
                self._pool, self._embedder, request, self._settings, self._extract
            )
        except (asyncpg.PostgresError, OSError, CryptoError, MemoryStoreError) as exc:
            log.warning("fact_extraction_failed", error=type(exc).__name__)
            return None


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict)).strip()
    return ""
