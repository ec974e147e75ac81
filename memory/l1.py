"""L1: every chat message as raw JSON, kept for a short TTL, then purged.

L1 is plaintext by design (observability, hot context) and can be turned off with
``IAMINE_MEMORY__L1_ENABLED=false``. Rows past ``expires_at`` are never returned, even before the
purge (:func:`purge_expired_l1`, run by ``iamine memory purge-l1`` and later by the scheduler)
deletes them. Every query is scoped by user id in SQL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg


@dataclass(frozen=True)
class L1Message:
    """One raw message of a user's conversation."""

    id: int
    conversation_id: str
    role: str
    message: dict[str, Any]
    created_at: datetime
    expires_at: datetime


APPEND_SQL = (
    "INSERT INTO l1_messages (user_id, conversation_id, role, message, created_at, expires_at) "
    "VALUES ($1, $2, $3, $4::jsonb, $5, $6)"
)


def message_rows(
    user_id: UUID,
    conversation_id: str,
    messages: Sequence[dict[str, Any]],
    *,
    now: datetime,
    ttl_s: int,
) -> list[tuple[UUID, str, str, str, datetime, datetime]]:
    """The arguments of :data:`APPEND_SQL` for ``messages`` (raw JSON, in order), expiring
    ``ttl_s`` seconds after ``now``: the hub's bookkeeping runs a batch's rows as one
    ``executemany``."""
    expires = now + timedelta(seconds=ttl_s)
    return [
        (user_id, conversation_id, str(m.get("role", "")), json.dumps(m), now, expires)
        for m in messages
    ]


async def append_messages(
    conn: asyncpg.Connection,
    user_id: UUID,
    conversation_id: str,
    messages: Sequence[dict[str, Any]],
    *,
    now: datetime,
    ttl_s: int,
) -> int:
    """Append messages (raw JSON, in order) that expire ``ttl_s`` seconds after ``now``."""
    if not messages:
        return 0
    rows = message_rows(user_id, conversation_id, messages, now=now, ttl_s=ttl_s)
    await conn.executemany(APPEND_SQL, rows)
    return len(rows)


async def list_messages(
    conn: asyncpg.Connection,
    user_id: UUID,
    *,
    now: datetime,
    conversation_id: str | None = None,
) -> list[L1Message]:
    """The user's unexpired L1 messages, oldest first; one conversation's when given."""
    rows = await conn.fetch(
        "SELECT id, conversation_id, role, message, created_at, expires_at FROM l1_messages "
        "WHERE user_id = $1 AND expires_at > $2 AND ($3::text IS NULL OR conversation_id = $3) "
        "ORDER BY id",
        user_id,
        now,
        conversation_id,
    )
    return [
        L1Message(
            id=r["id"],
            conversation_id=r["conversation_id"],
            role=r["role"],
            message=json.loads(r["message"]),
            created_at=r["created_at"],
            expires_at=r["expires_at"],
        )
        for r in rows
    ]


async def delete_messages(
    conn: asyncpg.Connection, user_id: UUID, conversation_id: str | None = None
) -> int:
    """Delete the user's L1 messages (one conversation's when given); return how many."""
    count = await conn.fetchval(
        "WITH d AS (DELETE FROM l1_messages WHERE user_id = $1 "
        "AND ($2::text IS NULL OR conversation_id = $2) RETURNING 1) SELECT count(*) FROM d",
        user_id,
        conversation_id,
    )
    return int(count)


async def purge_expired_l1(conn: asyncpg.Connection, now: datetime, batch: int = 5_000) -> int:
    """Delete every L1 message expired at ``now``, in batches of ``batch`` rows; return how many.

    Batches keep each statement's locks and WAL short on a large backlog.
    """
    total = 0
    while True:
        deleted = await conn.fetchval(
            "WITH d AS (DELETE FROM l1_messages WHERE id IN (SELECT id FROM l1_messages "
            "WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2) RETURNING 1) "
            "SELECT count(*) FROM d",
            now,
            batch,
        )
        total += int(deleted)
        if deleted < batch:
            return total
