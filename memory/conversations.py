"""Conversation ids per user: recorded on every exchange, listed newest first.

Ids are the client's strings (``X-Conversation-Id``) or ones the hub made; they are unique per user
only, and every query is scoped by user id in SQL.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

CONVERSATION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class Conversation:
    """A conversation of one user."""

    id: str
    created_at: datetime
    last_active_at: datetime
    exchanges: int


def new_conversation_id() -> str:
    """A fresh conversation id."""
    return f"conv_{uuid.uuid4().hex}"


def is_valid_conversation_id(value: str) -> bool:
    """Whether a client-supplied id is acceptable (1-128 of letters, digits and ``._:-``)."""
    return CONVERSATION_ID.match(value) is not None


async def record_exchange(
    conn: asyncpg.Connection, user_id: UUID, conversation_id: str, at: datetime
) -> None:
    """Create the conversation if new and count one more exchange in it."""
    await conn.execute(
        "INSERT INTO conversations (user_id, id, created_at, last_active_at, exchanges) "
        "VALUES ($1, $2, $3, $3, 1) ON CONFLICT (user_id, id) DO UPDATE "
        "SET last_active_at = greatest(conversations.last_active_at, EXCLUDED.last_active_at), "
        "exchanges = conversations.exchanges + 1",
        user_id,
        conversation_id,
        at,
    )


async def list_conversations(
    conn: asyncpg.Connection, user_id: UUID, limit: int = 100
) -> list[Conversation]:
    """The user's conversations, most recently active first."""
    rows = await conn.fetch(
        "SELECT id, created_at, last_active_at, exchanges FROM conversations "
        "WHERE user_id = $1 ORDER BY last_active_at DESC LIMIT $2",
        user_id,
        limit,
    )
    return [
        Conversation(r["id"], r["created_at"], r["last_active_at"], r["exchanges"]) for r in rows
    ]
