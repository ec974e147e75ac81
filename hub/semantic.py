"""The hub's wiring of semantic memory: the embedder, the chat's recall step, fact extraction.

The chat path stays lean: a user's memory opt-in is cached for ``recall_cache_ttl_s`` (a change
through this hub's API clears it at once), so a user with memory off costs a dictionary lookup;
with memory on, the last user message is embedded (about 5 ms; twice, in one batch, when it
names someone: notes are searched without the names, :func:`memory.recall.note_query_text`),
then on one connection the data key is unwrapped (one primary-key lookup) and one search
statement (:func:`memory.recall.recall`) finds facts and notes: the user's own, and those of
the shared namespaces they are subscribed to (checked in that statement; whether the notes'
keyword side is BM25 is asked once per hub, :meth:`SemanticMemory.notes_bm25`). The injected
message quotes them as reference data, each labelled in words (never a user, token or namespace
id: the worker reads it).
A recall that cannot run (model not installed, a database error) never fails the chat: it
injects nothing, and says so in the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from hub.auth import Principal
from hub.config import Settings
from inference.dispatch import JobFailed, complete_text
from inference.registry import WorkerRegistry
from memory.crypto import CryptoError
from memory.embeddings import MODEL_DIR_NAME, Embedder
from memory.errors import EmbeddingModelMissing, MemoryStoreError
from memory.extraction import (
    EXTRACTION_FORMAT,
    ExtractionRequest,
    ExtractionUnavailable,
    Extractor,
    FactMiner,
)
from memory.keys import UserKey, open_key
from memory.l2 import load_preferences
from memory.recall import (
    Injection,
    RecallQuery,
    context_message,
    has_bm25,
    query_vectors,
    recall,
)
from memory.settings import MemorySettings

log = structlog.get_logger()


def embedding_model_dir(settings: Settings) -> Path:
    """Where the embedding model is installed: the setting, else ``<data_dir>/models/...``."""
    return settings.memory.embedding_model_dir or settings.data_dir / "models" / MODEL_DIR_NAME


def pool_extractor(registry: WorkerRegistry, settings: MemorySettings) -> Extractor:
    """Fact extraction's model: one job on a pool worker serving ``facts_extraction_model``."""

    async def extract(messages: list[dict[str, Any]]) -> str:
        try:
            return await complete_text(
                registry,
                settings.facts_extraction_model,
                messages,
                max_tokens=settings.facts_extraction_tokens,
                temperature=0.0,
                kind="extraction",
                response_format=EXTRACTION_FORMAT,
            )
        except JobFailed as exc:
            raise ExtractionUnavailable(exc.message) from exc

    return extract


class OptInCache:
    """Users' memory opt-in, cached for a few seconds, cleared by this hub's own changes."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[UUID, tuple[bool, float]] = {}

    def get(self, user_id: UUID) -> bool | None:
        """The cached opt-in, or None when unknown or stale."""
        entry = self._entries.get(user_id)
        if entry is None or self._clock() - entry[1] >= self._ttl_s:
            return None
        return entry[0]

    def put(self, user_id: UUID, enabled: bool) -> None:
        """Remember a user's opt-in (bounded: the cache is cleared when it grows past 100k)."""
        if len(self._entries) >= 100_000:
            self._entries.clear()
        self._entries[user_id] = (enabled, self._clock())

    def forget(self, user_id: UUID) -> None:
        """Drop a user's entry (their opt-in just changed)."""
        self._entries.pop(user_id, None)


@dataclass(frozen=True)
class ChatMemory:
    """What memory did for one chat: the system message to inject (if any) and the opt-in."""

    injection: Injection
    enabled: bool


NO_MEMORY = ChatMemory(Injection(None, 0), enabled=False)


class SemanticMemory:
    """The long-lived parts of semantic memory, built once in the lifespan."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: MemorySettings,
        embedder: Embedder,
        miner: FactMiner | None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.embedder = embedder
        self.miner = miner
        self.opt_in = OptInCache(settings.recall_cache_ttl_s)
        self._warned_missing = False
        self._bm25: bool | None = None

    async def notes_bm25(self, conn: asyncpg.Connection) -> bool:
        """Whether the database has the notes' BM25 index (:func:`memory.recall.has_bm25`).

        Asked on the first search, then kept: only the migrations, which run before the hub
        serves, create or drop it; a round trip per search spared.
        """
        if self._bm25 is None:
            self._bm25 = await has_bm25(conn)
        return self._bm25

    async def memory_on(self, user_id: UUID) -> bool:
        """Whether the user turned memory on (cached)."""
        cached = self.opt_in.get(user_id)
        if cached is not None:
            return cached
        async with self.pool.acquire() as conn:
            enabled = (await load_preferences(conn, user_id)).enabled
        self.opt_in.put(user_id, enabled)
        return enabled

    async def for_chat(
        self, principal: Principal, token: str, messages: Sequence[dict[str, Any]]
    ) -> ChatMemory:
        """Recall what is relevant to the last user message, if the user has memory on."""
        user_id = principal.user_id
        if user_id is None or not await self.memory_on(user_id):
            return NO_MEMORY
        query = _last_user_text(messages)
        if not query:
            return ChatMemory(Injection(None, 0), enabled=True)
        try:
            # before a connection is taken: the query as asked (facts) and without names (notes)
            vector, note_vector = await query_vectors(self.embedder, query)
            n = self.settings.recall_candidates
            search = RecallQuery(query, vector, note_vector=note_vector, facts=n, notes=n)
            async with self.pool.acquire() as conn:
                key = await _key(conn, principal, user_id, token)
                found = await recall(conn, key, user_id, search, bm25=await self.notes_bm25(conn))
        except EmbeddingModelMissing as exc:
            if not self._warned_missing:  # once, not on every chat
                log.warning("chat_recall_skipped", code=exc.code, error=exc.message)
                self._warned_missing = True
            return ChatMemory(Injection(None, 0), enabled=True)
        except (MemoryStoreError, asyncpg.PostgresError, OSError) as exc:
            log.warning("chat_recall_skipped", error=str(exc))
            return ChatMemory(Injection(None, 0), enabled=True)
        injection = context_message(
            found,
            min_score=self.settings.recall_min_score,
            budget_tokens=self.settings.recall_budget_tokens,
        )
        return ChatMemory(injection, enabled=True)

    def mine(
        self,
        principal: Principal,
        token: str,
        conversation_id: str,
        messages: list[dict[str, Any]],
    ) -> None:
        """Queue a finished exchange for fact extraction (when extraction is on)."""
        if self.miner is None or principal.user_id is None:
            return
        request = ExtractionRequest(
            principal.user_id, principal.token_id, token, conversation_id, messages
        )
        if not self.miner.submit(request):
            log.info("fact_extraction_queue_full")


async def _key(
    conn: asyncpg.Connection, principal: Principal, user_id: UUID, token: str
) -> UserKey | None:
    try:
        return await open_key(conn, user_id, principal.token_id, token, provision=False)
    except CryptoError as exc:  # a locked token (or a damaged wrap) recalls notes only
        log.info("chat_recall_without_facts", code=exc.code)
        return None


def _last_user_text(messages: Sequence[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content.strip()
        if isinstance(content, list):
            parts = [str(p.get("text", "")) for p in content if isinstance(p, dict)]
            return " ".join(parts).strip()
        return ""
    return ""
