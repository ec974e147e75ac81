"""Compaction of long L2 conversations: older turns become one encrypted summary.

For users who turned compaction on, once a conversation's live context (its newest summary plus
the turns after it) passes ``compaction_budget_tokens``, every live turn but the newest
``compaction_keep_turns`` is summarised, with the previous summary, into a new summary turn.

The summary is written by an injected ``summarise(messages) -> str`` (the hub runs it on a pool
model), so this package stays independent of inference. No database connection is held while
the summary is written. Turns are never lost: originals are deleted (when
``compaction_keep_originals`` is false) only in the transaction that stores their summary, and a
summariser that cannot run (:class:`SummaryUnavailable`, a timeout) leaves everything as it was;
the next turn of the conversation asks again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from memory.crypto import CryptoError
from memory.keys import UserKey, open_key
from memory.l2 import append_turn, live_tokens, read_turns
from memory.settings import MemorySettings

log = structlog.get_logger()

Summariser = Callable[[list[dict[str, Any]]], Awaitable[str]]

SUMMARY_INSTRUCTIONS = (
    "Summarise the conversation below for the assistant that will continue it. Keep names, "
    "facts, decisions, numbers and open questions; drop greetings and repetition. Write plain "
    "prose, at most a few short paragraphs."
)
SUMMARY_PREFIX = "Summary of the earlier conversation: "


class SummaryUnavailable(Exception):
    """The summariser cannot run now (no worker for the model, a failed job); retry later."""


@dataclass(frozen=True)
class CompactionPlan:
    """Turns to summarise: through ``through``, on top of the summary through ``after``."""

    conversation_id: str
    after: int
    through: int
    messages: list[dict[str, Any]]


@dataclass(frozen=True)
class CompactionRequest:
    """Ask the :class:`Compactor` to compact one conversation with this token's key."""

    user_id: UUID
    token_id: UUID
    token: str = field(repr=False)
    conversation_id: str


def summary_prompt(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat messages that ask a model to summarise ``messages``."""
    lines = [f"{m.get('role', 'unknown')}: {_text(m)}" for m in messages]
    return [
        {"role": "system", "content": SUMMARY_INSTRUCTIONS},
        {"role": "user", "content": "\n\n".join(lines)},
    ]


async def plan_compaction(
    conn: asyncpg.Connection,
    key: UserKey,
    user_id: UUID,
    conversation_id: str,
    settings: MemorySettings,
) -> CompactionPlan | None:
    """What to summarise now, or None when the conversation is within budget."""
    if await live_tokens(conn, user_id, conversation_id) <= settings.compaction_budget_tokens:
        return None
    live = await read_turns(conn, key, user_id, conversation_id, live_only=True)
    summaries = [t for t in live if t.kind == "summary"]
    turns = [t for t in live if t.kind == "turn"][: -settings.compaction_keep_turns]
    if not turns:
        return None
    messages = [m for t in summaries + turns for m in t.messages or []]
    after: int = await conn.fetchval(
        "SELECT compacted_through FROM conversations WHERE user_id = $1 AND id = $2",
        user_id,
        conversation_id,
    )
    return CompactionPlan(conversation_id, after, turns[-1].seq, messages)


async def store_summary(
    conn: asyncpg.Connection,
    key: UserKey,
    user_id: UUID,
    plan: CompactionPlan,
    summary: str,
    *,
    keep_originals: bool,
    now: datetime,
) -> bool:
    """Store the summary of a plan, unless another compaction got there first."""
    async with conn.transaction():
        current = await conn.fetchval(
            "SELECT compacted_through FROM conversations WHERE user_id = $1 AND id = $2 FOR UPDATE",
            user_id,
            plan.conversation_id,
        )
        if current != plan.after:
            return False
        message = {"role": "system", "content": SUMMARY_PREFIX + summary.strip()}
        await append_turn(
            conn,
            key,
            user_id,
            plan.conversation_id,
            [message],
            now=now,
            kind="summary",
            covers_through=plan.through,
        )
        await conn.execute(
            "UPDATE conversations SET compacted_through = $3 WHERE user_id = $1 AND id = $2",
            user_id,
            plan.conversation_id,
            plan.through,
        )
        if not keep_originals:
            await conn.execute(
                "DELETE FROM conversation_turns WHERE user_id = $1 AND conversation_id = $2 "
                "AND ((kind = 'turn' AND seq <= $3) OR (kind = 'summary' AND covers_through < $3))",
                user_id,
                plan.conversation_id,
                plan.through,
            )
    return True


async def compact_conversation(
    pool: asyncpg.Pool,
    request: CompactionRequest,
    settings: MemorySettings,
    summarise: Summariser,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> bool:
    """Summarise a conversation's older turns if it is over budget; True when a summary landed."""
    async with pool.acquire() as conn:
        key = await open_key(
            conn, request.user_id, request.token_id, request.token, provision=False
        )
        plan = await plan_compaction(conn, key, request.user_id, request.conversation_id, settings)
    if plan is None:
        return False
    try:
        async with asyncio.timeout(settings.compaction_timeout_s):
            summary = await summarise(plan.messages)
    except (SummaryUnavailable, TimeoutError) as exc:
        log.info("compaction_deferred", conversation=plan.conversation_id, reason=str(exc))
        return False
    async with pool.acquire() as conn:
        return await store_summary(
            conn,
            key,
            request.user_id,
            plan,
            summary,
            keep_originals=settings.compaction_keep_originals,
            now=now(),
        )


class Compactor:
    """A bounded queue of compactions, run one at a time by a loop the hub's lifespan owns."""

    def __init__(self, pool: asyncpg.Pool, settings: MemorySettings, summarise: Summariser) -> None:
        self._pool = pool
        self._settings = settings
        self._summarise = summarise
        self._queue: asyncio.Queue[CompactionRequest] = asyncio.Queue(
            settings.compaction_queue_size
        )
        self._queued: set[tuple[UUID, str]] = set()

    def submit(self, request: CompactionRequest) -> bool:
        """Queue a compaction unless that conversation is queued already or the queue is full."""
        place = (request.user_id, request.conversation_id)
        if place in self._queued or self._queue.full():
            return False
        self._queued.add(place)
        self._queue.put_nowait(request)
        return True

    @property
    def pending(self) -> int:
        """Compactions queued and not yet started."""
        return self._queue.qsize()

    async def run(self) -> None:
        """Run queued compactions forever (cancelled by the lifespan)."""
        while True:
            request = await self._queue.get()
            self._queued.discard((request.user_id, request.conversation_id))
            await self.run_one(request)

    async def run_one(self, request: CompactionRequest) -> bool:
        """Run one compaction, logging (not raising) database and key failures."""
        try:
            return await compact_conversation(self._pool, request, self._settings, self._summarise)
        except (asyncpg.PostgresError, OSError, CryptoError) as exc:
            log.warning("compaction_failed", conversation=request.conversation_id, error=str(exc))
            return False


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    calls = message.get("tool_calls") or []
    return " ".join(f"[calls {c.get('function', {}).get('name', '?')}]" for c in calls)
