"""L2: a user's conversations as Fernet ciphertext under their data key, opt-in per user.

A *turn* is one exchange: the messages the client added since the last assistant message, plus
the answer. Its plaintext (``{"conversation_id", "seq", "kind", "messages"}``) exists only in the
process; the row holds the ciphertext, the key generation that made it, and an estimate of its
size in tokens (which the ciphertext's length reveals anyway). The plaintext names its own
conversation and position, so a row moved or swapped in the database fails to read instead of
showing up in the wrong place. Every query is scoped by user id in SQL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from memory.crypto import CryptoError, DecryptError, decrypt_json, encrypt_json
from memory.keys import MemoryLockedError, UserKey, open_key
from memory.settings import MemorySettings

log = structlog.get_logger()

CHARS_PER_TOKEN = 4  # a coarse estimate, good enough to decide when to compact
TOKENS_PER_MESSAGE = 4


@dataclass(frozen=True)
class Preferences:
    """A user's memory opt-in: L2 on or off, and compaction of long conversations."""

    enabled: bool = False
    compaction: bool = False


@dataclass(frozen=True)
class Turn:
    """One stored turn or summary; ``messages`` is None when an older data key made it."""

    seq: int
    kind: str
    created_at: datetime
    tokens: int
    covers_through: int | None
    messages: list[dict[str, Any]] | None


class RecordOutcome(StrEnum):
    """What happened to an exchange handed to L2."""

    STORED = "stored"
    STORED_OVER_BUDGET = "stored_over_budget"  # stored; the user wants compaction and it is due
    DISABLED = "disabled"  # the user has not opted in
    LOCKED = "locked"  # the token cannot open the user's key


def new_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages after the last assistant message: what a request adds to the conversation."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    return list(messages[last + 1 :])


def estimate_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """A rough token count: JSON characters / 4, plus a few tokens of framing per message."""
    return sum(
        len(json.dumps(m, ensure_ascii=False)) // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE
        for m in messages
    )


async def load_preferences(conn: asyncpg.Connection, user_id: UUID) -> Preferences:
    """The user's memory opt-in (both off until the user turns them on)."""
    row = await conn.fetchrow(
        "SELECT enabled, compaction FROM memory_settings WHERE user_id = $1", user_id
    )
    return Preferences(row["enabled"], row["compaction"]) if row else Preferences()


async def save_preferences(
    conn: asyncpg.Connection, user_id: UUID, preferences: Preferences
) -> Preferences:
    """Store the user's memory opt-in."""
    await conn.execute(
        "INSERT INTO memory_settings (user_id, enabled, compaction) VALUES ($1, $2, $3) "
        "ON CONFLICT (user_id) DO UPDATE SET enabled = EXCLUDED.enabled, "
        "compaction = EXCLUDED.compaction, updated_at = now()",
        user_id,
        preferences.enabled,
        preferences.compaction,
    )
    return preferences


async def next_seq(
    conn: asyncpg.Connection, user_id: UUID, conversation_id: str, now: datetime
) -> int:
    """Create the conversation if new and reserve its next turn number (row-locked until commit)."""
    await conn.execute(
        "INSERT INTO conversations (user_id, id, created_at, last_active_at) "
        "VALUES ($1, $2, $3, $3) ON CONFLICT (user_id, id) DO NOTHING",
        user_id,
        conversation_id,
        now,
    )
    seq: int = await conn.fetchval(
        "UPDATE conversations SET last_seq = last_seq + 1, "
        "last_active_at = greatest(last_active_at, $3) "
        "WHERE user_id = $1 AND id = $2 RETURNING last_seq",
        user_id,
        conversation_id,
        now,
    )
    return seq


async def append_turn(
    conn: asyncpg.Connection,
    key: UserKey,
    user_id: UUID,
    conversation_id: str,
    messages: Sequence[dict[str, Any]],
    *,
    now: datetime,
    kind: str = "turn",
    covers_through: int | None = None,
) -> int:
    """Encrypt and store one turn (or summary); return its sequence number."""
    async with conn.transaction():
        seq = await next_seq(conn, user_id, conversation_id, now)
        plaintext = {
            "conversation_id": conversation_id,
            "seq": seq,
            "kind": kind,
            "messages": list(messages),
        }
        await conn.execute(
            "INSERT INTO conversation_turns (user_id, conversation_id, seq, kind, generation, "
            "ciphertext, tokens, covers_through, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            user_id,
            conversation_id,
            seq,
            kind,
            key.generation,
            encrypt_json(key.data_key, plaintext),
            estimate_tokens(messages),
            covers_through,
            now,
        )
    return seq


async def read_turns(
    conn: asyncpg.Connection,
    key: UserKey,
    user_id: UUID,
    conversation_id: str,
    *,
    live_only: bool = False,
) -> list[Turn]:
    """The conversation's turns and summaries in order, decrypted where this key can.

    With ``live_only``: only the newest summary and the turns it does not cover.
    """
    rows = await conn.fetch(
        "SELECT t.seq, t.kind, t.generation, t.ciphertext, t.tokens, t.covers_through, "
        "t.created_at FROM conversation_turns t JOIN conversations c "
        "ON c.user_id = t.user_id AND c.id = t.conversation_id "
        "WHERE t.user_id = $1 AND t.conversation_id = $2 AND (NOT $3::boolean OR "
        "((t.kind = 'turn' AND t.seq > c.compacted_through) OR "
        "(t.kind = 'summary' AND t.covers_through = c.compacted_through))) ORDER BY t.seq",
        user_id,
        conversation_id,
        live_only,
    )
    return [_turn(row, key, conversation_id) for row in rows]


async def context_messages(
    conn: asyncpg.Connection, key: UserKey, user_id: UUID, conversation_id: str
) -> list[dict[str, Any]]:
    """What a model needs to continue the conversation: the newest summary, then later turns."""
    turns = await read_turns(conn, key, user_id, conversation_id, live_only=True)
    ordered = sorted(turns, key=lambda t: (t.kind != "summary", t.seq))
    return [m for t in ordered if t.messages is not None for m in t.messages]


async def live_tokens(conn: asyncpg.Connection, user_id: UUID, conversation_id: str) -> int:
    """Estimated tokens of :func:`context_messages`, read without decrypting anything."""
    total = await conn.fetchval(
        "SELECT coalesce(sum(t.tokens), 0) FROM conversation_turns t JOIN conversations c "
        "ON c.user_id = t.user_id AND c.id = t.conversation_id "
        "WHERE t.user_id = $1 AND t.conversation_id = $2 AND "
        "((t.kind = 'turn' AND t.seq > c.compacted_through) OR "
        "(t.kind = 'summary' AND t.covers_through = c.compacted_through))",
        user_id,
        conversation_id,
    )
    return int(total)


async def record_turn(
    conn: asyncpg.Connection,
    user_id: UUID,
    token_id: UUID,
    token: str,
    conversation_id: str,
    messages: Sequence[dict[str, Any]],
    *,
    now: datetime,
    settings: MemorySettings,
) -> RecordOutcome:
    """The chat hook's L2 write: if the user opted in, unwrap the key, encrypt, store the turn.

    Runs on the background writer's connection; the key is unwrapped here and dropped on return.
    """
    preferences = await load_preferences(conn, user_id)
    if not preferences.enabled:
        return RecordOutcome.DISABLED
    try:
        key = await open_key(conn, user_id, token_id, token)
    except MemoryLockedError:
        return RecordOutcome.LOCKED
    except CryptoError as exc:
        # The token's own wrap does not open: a damaged row. Losing this turn beats crashing.
        log.error("l2_key_unusable", code=exc.code, error=exc.message)
        return RecordOutcome.LOCKED
    await append_turn(conn, key, user_id, conversation_id, messages, now=now)
    if preferences.compaction and (
        await live_tokens(conn, user_id, conversation_id) > settings.compaction_budget_tokens
    ):
        return RecordOutcome.STORED_OVER_BUDGET
    return RecordOutcome.STORED


def _turn(row: asyncpg.Record, key: UserKey, conversation_id: str) -> Turn:
    messages: list[dict[str, Any]] | None = None
    if row["generation"] == key.generation:
        plaintext = decrypt_json(key.data_key, bytes(row["ciphertext"]))
        _check_place(plaintext, conversation_id, row["seq"], row["kind"])
        messages = plaintext["messages"]
    return Turn(
        seq=row["seq"],
        kind=row["kind"],
        created_at=row["created_at"],
        tokens=row["tokens"],
        covers_through=row["covers_through"],
        messages=messages,
    )


def _check_place(plaintext: Any, conversation_id: str, seq: int, kind: str) -> None:
    if not isinstance(plaintext, dict) or not isinstance(plaintext.get("messages"), list):
        raise DecryptError("a stored turn has an unexpected shape")
    if (plaintext.get("conversation_id"), plaintext.get("seq"), plaintext.get("kind")) != (
        conversation_id,
        seq,
        kind,
    ):
        raise DecryptError("a stored turn was moved from its place in the database")
