"""Storage of users' data keys: key generations and one wrap per token, in SQL.

The data key exists in clear only in the process, for one request: :func:`open_key` unwraps it
with the caller's token text. Policy, the price of zero knowledge:

- A user's **first** wrapped token starts a generation: a fresh random data key.
- ``POST /v1/tokens`` from a token that opens the key wraps the **same** key for the new token
  (:func:`extend_key`).
- A token the hub mints without one of the user's tokens in hand (admin API, CLI) cannot get the
  existing key. If no live token of the user holds a wrap, it starts a **new generation** and the
  memory of older generations stays unreadable for good; otherwise it is issued **locked** (no
  memory access) until a token with memory links it (:func:`link_token`).
- Revoking a token deletes its wrap (a trigger in migration 003).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

import asyncpg

from memory.crypto import (
    CryptoError,
    DataKey,
    KeyWrap,
    new_data_key,
    unwrap_data_key,
    wrap_data_key,
)

LOCKED_MESSAGE = (
    "This token has no access to your memory: it was issued while another of your tokens held "
    "the memory key, which the pool cannot copy without that token. Create tokens with "
    "POST /v1/tokens from a token that has memory access, or link this one with "
    "POST /v1/memory/link from such a token."
)


class MemoryLockedError(CryptoError):
    """The calling token holds no wrap of the user's data key and may not start a new one."""

    code = "memory_locked"


class KeyIssue(StrEnum):
    """What a newly issued token can do with its user's memory."""

    LINKED = "linked"  # wraps the same data key as the issuing token
    NEW_KEY = "new_key"  # the user's first data key
    NEW_KEY_OLD_MEMORY_UNREADABLE = "new_key_old_memory_unreadable"
    LOCKED = "locked"  # no memory access until linked
    NONE = "none"  # not a `user`-scope token: memory routes are not for it


@dataclass(frozen=True, slots=True)
class UserKey:
    """An unwrapped data key and its generation; keep it for one request, never store it."""

    data_key: DataKey
    generation: int


async def open_key(
    conn: asyncpg.Connection, user_id: UUID, token_id: UUID, token: str, *, provision: bool = True
) -> UserKey:
    """Unwrap the user's data key with this token; start a generation if nothing opens it.

    With ``provision`` a token without a wrap gets a fresh key when no live token of the user
    holds one; otherwise (or without ``provision``) raise :class:`MemoryLockedError`.
    """
    found = await _unwrap(conn, user_id, token_id, token)
    if found is not None:
        return found
    if not provision:
        raise MemoryLockedError(LOCKED_MESSAGE)
    async with conn.transaction():
        await _lock_user(conn, user_id)
        found = await _unwrap(conn, user_id, token_id, token)
        if found is not None:
            return found
        if await has_live_wrap(conn, user_id):
            raise MemoryLockedError(LOCKED_MESSAGE)
        return await _start_generation(conn, user_id, token_id, token)


async def issue_key(
    conn: asyncpg.Connection, user_id: UUID, token_id: UUID, token: str, scopes: tuple[str, ...]
) -> KeyIssue:
    """Give a token minted without the user's key (admin, CLI) a new key, or leave it locked."""
    if "user" not in scopes:
        return KeyIssue.NONE
    async with conn.transaction():
        await _lock_user(conn, user_id)
        if await has_live_wrap(conn, user_id):
            return KeyIssue.LOCKED
        had_memory = await _has_ciphertexts(conn, user_id)
        await _start_generation(conn, user_id, token_id, token)
    return KeyIssue.NEW_KEY_OLD_MEMORY_UNREADABLE if had_memory else KeyIssue.NEW_KEY


async def extend_key(
    conn: asyncpg.Connection,
    user_id: UUID,
    caller: tuple[UUID, str],
    new_token: tuple[UUID, str],
    scopes: tuple[str, ...],
) -> KeyIssue:
    """Wrap the caller's data key for a token the caller just issued (``POST /v1/tokens``)."""
    if "user" not in scopes:
        return KeyIssue.NONE
    try:
        key = await open_key(conn, user_id, *caller)
    except MemoryLockedError:
        return KeyIssue.LOCKED
    await link_token(conn, key, user_id, *new_token)
    return KeyIssue.LINKED


async def link_token(
    conn: asyncpg.Connection, key: UserKey, user_id: UUID, token_id: UUID, token: str
) -> None:
    """Store (or replace) the wrap of ``key`` for one of the user's tokens.

    A token of another user is refused: by the foreign key, or with ValueError when it has a wrap.
    """
    wrap = wrap_data_key(key.data_key, token)
    stored = await conn.fetchval(
        "INSERT INTO memory_key_wraps "
        "(token_id, user_id, generation, salt, wrapped, key_version, kdf, format_version) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (token_id) DO UPDATE SET "
        "generation = EXCLUDED.generation, salt = EXCLUDED.salt, wrapped = EXCLUDED.wrapped, "
        "key_version = EXCLUDED.key_version, kdf = EXCLUDED.kdf, "
        "format_version = EXCLUDED.format_version, created_at = now() "
        "WHERE memory_key_wraps.user_id = EXCLUDED.user_id RETURNING token_id",
        token_id,
        user_id,
        key.generation,
        wrap.salt,
        wrap.wrapped,
        wrap.key_version,
        wrap.kdf,
        wrap.format_version,
    )
    if stored is None:
        raise ValueError("the token belongs to another user")


async def has_live_wrap(conn: asyncpg.Connection, user_id: UUID) -> bool:
    """Whether a live (unrevoked, unexpired) token of the user holds a wrap."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM memory_key_wraps w JOIN tokens t ON t.id = w.token_id "
            "WHERE w.user_id = $1 AND t.revoked_at IS NULL "
            "AND (t.expires_at IS NULL OR t.expires_at > now()))",
            user_id,
        )
    )


async def has_wrap(conn: asyncpg.Connection, user_id: UUID, token_id: UUID) -> bool:
    """Whether this token of the user holds a wrap."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM memory_key_wraps WHERE user_id = $1 AND token_id = $2)",
            user_id,
            token_id,
        )
    )


async def load_wraps(conn: asyncpg.Connection, user_id: UUID) -> list[KeyWrap]:
    """Every stored wrap of the user (for audits and tests; each opens only with its token)."""
    rows = await conn.fetch(
        "SELECT salt, wrapped, key_version, kdf, format_version FROM memory_key_wraps "
        "WHERE user_id = $1",
        user_id,
    )
    return [_key_wrap(r) for r in rows]


async def _unwrap(
    conn: asyncpg.Connection, user_id: UUID, token_id: UUID, token: str
) -> UserKey | None:
    row = await conn.fetchrow(
        "SELECT generation, salt, wrapped, key_version, kdf, format_version "
        "FROM memory_key_wraps WHERE user_id = $1 AND token_id = $2",
        user_id,
        token_id,
    )
    if row is None:
        return None
    return UserKey(unwrap_data_key(_key_wrap(row), token), row["generation"])


async def _start_generation(
    conn: asyncpg.Connection, user_id: UUID, token_id: UUID, token: str
) -> UserKey:
    # Wraps of expired tokens could never be used again; drop them with the old generation's key.
    await conn.execute("DELETE FROM memory_key_wraps WHERE user_id = $1", user_id)
    generation = await conn.fetchval(
        "INSERT INTO memory_key_generations (user_id, generation) "
        "SELECT $1, coalesce(max(generation), 0) + 1 FROM memory_key_generations "
        "WHERE user_id = $1 RETURNING generation",
        user_id,
    )
    key = UserKey(new_data_key(), int(generation))
    await link_token(conn, key, user_id, token_id, token)
    return key


async def _lock_user(conn: asyncpg.Connection, user_id: UUID) -> None:
    # Serialises key provisioning per user, so two first requests cannot start two generations.
    await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)


async def _has_ciphertexts(conn: asyncpg.Connection, user_id: UUID) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM conversation_turns WHERE user_id = $1)", user_id
        )
    )


def _key_wrap(row: asyncpg.Record) -> KeyWrap:
    return KeyWrap(
        salt=bytes(row["salt"]),
        wrapped=bytes(row["wrapped"]),
        key_version=row["key_version"],
        kdf=row["kdf"],
        format_version=row["format_version"],
    )
