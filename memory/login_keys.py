"""The user's data key wrapped under a web sign-in: the password, and each browser session.

Tokens minted in a browser must open the same memory as the user's other tokens, yet the database
must never hold a usable key (docs/privacy.md). A browser holds no token, so the key is wrapped
under two more secrets the database never sees:

- the **password**: the wrapping secret is ``argon2id(password, password_salt)`` (raw, 32 bytes),
  derived at sign-in and dropped; a memory-hard KDF because a password, unlike a token, is
  guessable. One wrap per user.
- the **session cookie** (256 random bits, like a token): at sign-in the key opened by the password
  is wrapped again under the cookie, so that the session can wrap the key for tokens it mints
  without keeping the password. The wrap dies with the session.

Both use :func:`memory.crypto.wrap_data_key` (HKDF + AES-GCM) over that secret. A wrap of an
older generation opens nothing current and is ignored.
"""

from __future__ import annotations

import asyncio
import base64
import os
from uuid import UUID

import asyncpg
from argon2.low_level import Type, hash_secret_raw
from argon2.profiles import RFC_9106_LOW_MEMORY

from memory.crypto import KeyUnwrapError, KeyWrap, new_data_key, unwrap_data_key, wrap_data_key
from memory.keys import UserKey, has_live_wrap

PASSWORD_SALT_BYTES = 16


def password_secret(password: str, salt: bytes) -> str:
    """The wrapping secret of a password: argon2id (RFC 9106 low-memory profile), raw, base64."""
    raw = hash_secret_raw(
        password.encode(),
        salt,
        time_cost=RFC_9106_LOW_MEMORY.time_cost,
        memory_cost=RFC_9106_LOW_MEMORY.memory_cost,
        parallelism=RFC_9106_LOW_MEMORY.parallelism,
        hash_len=32,
        type=Type.ID,
    )
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def current_generation(conn: asyncpg.Connection, user_id: UUID) -> int | None:
    """The user's newest key generation, if any."""
    generation: int | None = await conn.fetchval(
        "SELECT max(generation) FROM memory_key_generations WHERE user_id = $1", user_id
    )
    return generation


async def open_with_password(
    conn: asyncpg.Connection, user_id: UUID, password: str
) -> UserKey | None:
    """Unwrap the current data key with the password, if it holds a wrap of it."""
    row = await conn.fetchrow(
        "SELECT * FROM web_key_wraps WHERE user_id = $1 AND session_id IS NULL", user_id
    )
    if row is None or row["generation"] != await current_generation(conn, user_id):
        return None
    # argon2id takes tens of milliseconds of CPU: off the event loop.
    secret = await asyncio.to_thread(password_secret, password, bytes(row["password_salt"]))
    try:
        return UserKey(unwrap_data_key(_key_wrap(row), secret), row["generation"])
    except KeyUnwrapError:
        return None


async def open_with_session(
    conn: asyncpg.Connection, user_id: UUID, session_id: UUID, session_secret: str
) -> UserKey | None:
    """Unwrap the current data key with a session's cookie, if the session holds a wrap of it."""
    row = await conn.fetchrow(
        "SELECT * FROM web_key_wraps WHERE user_id = $1 AND session_id = $2", user_id, session_id
    )
    if row is None or row["generation"] != await current_generation(conn, user_id):
        return None
    try:
        return UserKey(unwrap_data_key(_key_wrap(row), session_secret), row["generation"])
    except KeyUnwrapError:
        return None


async def wrap_for_password(
    conn: asyncpg.Connection, user_id: UUID, key: UserKey, password: str
) -> None:
    """Store (or replace) the password's wrap of ``key``."""
    salt = os.urandom(PASSWORD_SALT_BYTES)
    wrap = wrap_data_key(key.data_key, await asyncio.to_thread(password_secret, password, salt))
    await conn.execute(
        "DELETE FROM web_key_wraps WHERE user_id = $1 AND session_id IS NULL", user_id
    )
    await _insert(conn, user_id, None, salt, key.generation, wrap)


async def wrap_for_session(
    conn: asyncpg.Connection, user_id: UUID, session_id: UUID, key: UserKey, session_secret: str
) -> None:
    """Store a session's wrap of ``key`` (deleted with the session)."""
    await _insert(
        conn, user_id, session_id, None, key.generation, wrap_data_key(key.data_key, session_secret)
    )


async def drop_password_wrap(conn: asyncpg.Connection, user_id: UUID) -> None:
    """Forget the password's wrap (a reset by mail: the new password cannot open the old key)."""
    await conn.execute(
        "DELETE FROM web_key_wraps WHERE user_id = $1 AND session_id IS NULL", user_id
    )


async def sign_in_key(
    conn: asyncpg.Connection, user_id: UUID, password: str | None
) -> UserKey | None:
    """The data key a new session may hold: opened by the password, or a new generation.

    A new generation starts only when nothing live holds the user's key (no password wrap of
    the current generation, no live token wrap): the user's first sign-in, or after every wrapped
    token was revoked. Otherwise, without the password's wrap, the session holds no key and the
    tokens it mints are locked, as tokens minted by the admin are (memory/keys.py).
    """
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)
        if password is not None:
            key = await open_with_password(conn, user_id, password)
            if key is not None:
                return key
        if await has_live_wrap(conn, user_id) or await _has_current_password_wrap(conn, user_id):
            return None
        key = await _new_generation(conn, user_id)
        if password is not None:
            await wrap_for_password(conn, user_id, key, password)
        return key


async def _has_current_password_wrap(conn: asyncpg.Connection, user_id: UUID) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM web_key_wraps w WHERE w.user_id = $1 "
            "AND w.session_id IS NULL AND w.generation = "
            "(SELECT max(generation) FROM memory_key_generations WHERE user_id = $1))",
            user_id,
        )
    )


async def _new_generation(conn: asyncpg.Connection, user_id: UUID) -> UserKey:
    # Wraps left are of dead tokens or older generations: they could never open anything current.
    await conn.execute("DELETE FROM memory_key_wraps WHERE user_id = $1", user_id)
    await conn.execute("DELETE FROM web_key_wraps WHERE user_id = $1", user_id)
    generation = await conn.fetchval(
        "INSERT INTO memory_key_generations (user_id, generation) "
        "SELECT $1, coalesce(max(generation), 0) + 1 FROM memory_key_generations "
        "WHERE user_id = $1 RETURNING generation",
        user_id,
    )
    return UserKey(new_data_key(), int(generation))


async def _insert(
    conn: asyncpg.Connection,
    user_id: UUID,
    session_id: UUID | None,
    password_salt: bytes | None,
    generation: int,
    wrap: KeyWrap,
) -> None:
    await conn.execute(
        "INSERT INTO web_key_wraps (user_id, session_id, password_salt, generation, salt, "
        "wrapped, key_version, kdf, format_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        user_id,
        session_id,
        password_salt,
        generation,
        wrap.salt,
        wrap.wrapped,
        wrap.key_version,
        wrap.kdf,
        wrap.format_version,
    )


def _key_wrap(row: asyncpg.Record) -> KeyWrap:
    return KeyWrap(
        salt=bytes(row["salt"]),
        wrapped=bytes(row["wrapped"]),
        key_version=row["key_version"],
        kdf=row["kdf"],
        format_version=row["format_version"],
    )
