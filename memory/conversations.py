"""A user's conversations as a whole: record, list, delete one, and crypto-shred everything.

Ids are the client's strings (``X-Conversation-Id``) or ones the hub made; they are unique per user
only, and every query is scoped by user id in SQL. A conversation row holds metadata only (times,
counts); its text lives encrypted in ``conversation_turns`` (``memory/l2.py``) and, for a short
while, raw in L1 (``memory/l1.py``).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from memory.l1 import delete_messages

CONVERSATION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class Conversation:
    """A conversation of one user: metadata only, never text."""

    id: str
    created_at: datetime
    last_active_at: datetime
    exchanges: int
    turns: int = 0
    summaries: int = 0
    compacted_through: int = 0


@dataclass(frozen=True)
class ShredReport:
    """What :func:`shred_memory` deleted, by kind."""

    wraps: int
    generations: int
    conversations: int
    turns: int
    l1_messages: int


def new_conversation_id() -> str:
    """A fresh conversation id."""
    return f"conv_{uuid.uuid4().hex}"


def is_valid_conversation_id(value: str) -> bool:
    """Whether a client-supplied id is acceptable (1-128 of letters, digits and ``._:-``)."""
    return CONVERSATION_ID.match(value) is not None


RECORD_EXCHANGE_SQL = (
    "INSERT INTO conversations (user_id, id, created_at, last_active_at, exchanges) "
    "VALUES ($1, $2, $3, $3, 1) ON CONFLICT (user_id, id) DO UPDATE "
    "SET last_active_at = greatest(conversations.last_active_at, EXCLUDED.last_active_at), "
    "exchanges = conversations.exchanges + 1"
)


def exchange_row(user_id: UUID, conversation_id: str, at: datetime) -> tuple[UUID, str, datetime]:
    """The arguments of :data:`RECORD_EXCHANGE_SQL` for one exchange (the hub's bookkeeping
    runs a batch's exchanges as one ``executemany``)."""
    return (user_id, conversation_id, at)


async def record_exchange(
    conn: asyncpg.Connection, user_id: UUID, conversation_id: str, at: datetime
) -> None:
    """Create the conversation if new and count one more exchange in it."""
    await conn.execute(RECORD_EXCHANGE_SQL, *exchange_row(user_id, conversation_id, at))


_SELECT = (
    "SELECT c.id, c.created_at, c.last_active_at, c.exchanges, c.compacted_through, "
    "count(t.seq) FILTER (WHERE t.kind = 'turn') AS turns, "
    "count(t.seq) FILTER (WHERE t.kind = 'summary') AS summaries "
    "FROM conversations c LEFT JOIN conversation_turns t "
    "ON t.user_id = c.user_id AND t.conversation_id = c.id WHERE c.user_id = $1"
)
_GROUP = " GROUP BY c.user_id, c.id"


def _conversation(row: asyncpg.Record) -> Conversation:
    return Conversation(
        id=row["id"],
        created_at=row["created_at"],
        last_active_at=row["last_active_at"],
        exchanges=row["exchanges"],
        turns=row["turns"],
        summaries=row["summaries"],
        compacted_through=row["compacted_through"],
    )


async def list_conversations(
    conn: asyncpg.Connection, user_id: UUID, limit: int | None = 100
) -> list[Conversation]:
    """The user's conversations, most recently active first (all of them with ``limit=None``)."""
    rows = await conn.fetch(
        _SELECT + _GROUP + " ORDER BY c.last_active_at DESC, c.id LIMIT $2", user_id, limit
    )
    return [_conversation(r) for r in rows]


async def get_conversation(
    conn: asyncpg.Connection, user_id: UUID, conversation_id: str
) -> Conversation | None:
    """One of the user's conversations, or None (another user's id is None too)."""
    row = await conn.fetchrow(_SELECT + " AND c.id = $2" + _GROUP, user_id, conversation_id)
    return _conversation(row) if row else None


async def delete_conversation(
    conn: asyncpg.Connection, user_id: UUID, conversation_id: str
) -> tuple[int, int] | None:
    """Delete a conversation, its turns and its L1 messages; None if the user has no such id.

    Returns ``(turns, l1_messages)`` deleted.
    """
    async with conn.transaction():
        turns = await conn.fetchval(
            "SELECT count(*) FROM conversation_turns WHERE user_id = $1 AND conversation_id = $2",
            user_id,
            conversation_id,
        )
        deleted = await conn.fetchval(
            "DELETE FROM conversations WHERE user_id = $1 AND id = $2 RETURNING id",
            user_id,
            conversation_id,
        )
        if deleted is None:
            return None
        l1_messages = await delete_messages(conn, user_id, conversation_id)
    return int(turns), l1_messages


async def shred_memory(conn: asyncpg.Connection, user_id: UUID) -> ShredReport:
    """Crypto-shred the user's memory: delete every key wrap first, then every row.

    Once the wraps are gone no ciphertext of the user can be decrypted, even from a copy of the
    rows; the rows are deleted after, in the same transaction.
    """
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)
        turns = await conn.fetchval(
            "SELECT count(*) FROM conversation_turns WHERE user_id = $1", user_id
        )
        wraps = await conn.fetchval(
            "WITH d AS (DELETE FROM memory_key_wraps WHERE user_id = $1 RETURNING 1) "
            "SELECT count(*) FROM d",
            user_id,
        )
        conversations = await conn.fetchval(
            "WITH d AS (DELETE FROM conversations WHERE user_id = $1 RETURNING 1) "
            "SELECT count(*) FROM d",
            user_id,
        )
        l1_messages = await delete_messages(conn, user_id)
        generations = await conn.fetchval(
            "WITH d AS (DELETE FROM memory_key_generations WHERE user_id = $1 RETURNING 1) "
            "SELECT count(*) FROM d",
            user_id,
        )
    return ShredReport(
        wraps=int(wraps),
        generations=int(generations),
        conversations=int(conversations),
        turns=int(turns),
        l1_messages=l1_messages,
    )
