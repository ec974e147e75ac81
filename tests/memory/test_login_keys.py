"""Key wraps under a web sign-in: the password's (argon2id) and a browser session's."""

from __future__ import annotations

from uuid import UUID

import asyncpg
import pytest

from hub import accounts
from memory.crypto import decrypt_text, encrypt_text
from memory.keys import UserKey, link_token, open_key
from memory.login_keys import (
    current_generation,
    drop_password_wrap,
    open_with_password,
    open_with_session,
    sign_in_key,
    wrap_for_session,
)
from tests.memory.conftest import Member, key_of

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery"
COOKIE = "c" * 43


def same_key(a: UserKey, b: UserKey) -> bool:
    """Whether two opened keys are one key (one decrypts what the other encrypted)."""
    return (
        a.generation == b.generation
        and decrypt_text(b.data_key, encrypt_text(a.data_key, "x")) == "x"
    )


async def new_user(conn: asyncpg.Connection, name: str = "web") -> UUID:
    return (await accounts.create_user(conn, name)).id


async def new_session(conn: asyncpg.Connection, user_id: UUID) -> UUID:
    session_id: UUID = await conn.fetchval(
        "INSERT INTO web_sessions (hash, user_id, method, expires_at) "
        "VALUES (sha256($1::bytea), $2, 'password', now() + interval '1 hour') RETURNING id",
        COOKIE.encode(),
        user_id,
    )
    return session_id


async def test_the_first_sign_in_starts_a_key_that_the_password_opens_again(
    conn: asyncpg.Connection,
) -> None:
    user_id = await new_user(conn)
    first = await sign_in_key(conn, user_id, PASSWORD)
    assert first is not None and first.generation == 1
    again = await sign_in_key(conn, user_id, PASSWORD)
    assert again is not None and same_key(first, again)
    assert await current_generation(conn, user_id) == 1


async def test_a_wrong_password_opens_nothing_and_starts_nothing(conn: asyncpg.Connection) -> None:
    user_id = await new_user(conn)
    await sign_in_key(conn, user_id, PASSWORD)
    assert await open_with_password(conn, user_id, "wrong password") is None
    assert await sign_in_key(conn, user_id, "wrong password") is None
    assert await current_generation(conn, user_id) == 1


async def test_a_session_wrap_opens_with_its_cookie_only_and_dies_with_the_session(
    conn: asyncpg.Connection,
) -> None:
    user_id = await new_user(conn)
    key = await sign_in_key(conn, user_id, PASSWORD)
    assert key is not None
    session_id = await new_session(conn, user_id)
    await wrap_for_session(conn, user_id, session_id, key, COOKIE)
    opened = await open_with_session(conn, user_id, session_id, COOKIE)
    assert opened is not None and same_key(key, opened)
    assert await open_with_session(conn, user_id, session_id, "d" * 43) is None
    await conn.execute("DELETE FROM web_sessions WHERE id = $1", session_id)
    assert await open_with_session(conn, user_id, session_id, COOKIE) is None


async def test_without_the_password_a_key_held_by_a_live_token_is_not_replaced(
    conn: asyncpg.Connection, alice: Member
) -> None:
    assert await sign_in_key(conn, alice.user_id, None) is None
    assert await sign_in_key(conn, alice.user_id, PASSWORD) is None
    assert await current_generation(conn, alice.user_id) == 1
    assert (await key_of(conn, alice)).generation == 1


async def test_after_a_reset_the_key_stays_with_the_tokens_and_the_session_holds_none(
    conn: asyncpg.Connection,
) -> None:
    user_id = await new_user(conn)
    key = await sign_in_key(conn, user_id, PASSWORD)
    assert key is not None
    issued = await accounts.create_token(conn, user_id=user_id, scopes=("user",))
    await link_token(conn, key, user_id, issued.record.id, issued.token)
    await drop_password_wrap(conn, user_id)
    assert await sign_in_key(conn, user_id, "a new password!") is None
    kept = await open_key(conn, user_id, issued.record.id, issued.token, provision=False)
    assert same_key(key, kept)


async def test_a_password_wrap_of_an_older_generation_opens_nothing(
    conn: asyncpg.Connection,
) -> None:
    user_id = await new_user(conn)
    await sign_in_key(conn, user_id, PASSWORD)
    await conn.execute(
        "INSERT INTO memory_key_generations (user_id, generation) VALUES ($1, 2)", user_id
    )
    assert await open_with_password(conn, user_id, PASSWORD) is None
    fresh = await sign_in_key(conn, user_id, PASSWORD)
    assert fresh is not None and fresh.generation == 3
