"""Fixtures for memory's library tests: a user with tokens on the test's real database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import pytest
from pgvector.asyncpg import register_vector

from hub import accounts
from memory.keys import KeyIssue, UserKey, issue_key, open_key
from memory.l2 import Preferences, save_preferences

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Token:
    """A token's id and text."""

    id: UUID
    text: str


@dataclass(frozen=True)
class Member:
    """A user and the first token the admin issued them (which holds their data key)."""

    user_id: UUID
    token: Token


async def new_token(conn: asyncpg.Connection, user_id: UUID, *, wrap: bool = True) -> Token:
    """Issue a user-scope token as the admin/CLI does (``wrap=False``: as before migration 003)."""
    issued = await accounts.create_token(conn, user_id=user_id, scopes=("user",))
    if wrap:
        await issue_key(conn, user_id, issued.record.id, issued.token, ("user",))
    return Token(issued.record.id, issued.token)


async def new_member(conn: asyncpg.Connection, name: str, *, memory: bool = True) -> Member:
    """A user with one token holding a fresh data key, memory on unless ``memory=False``."""
    user = await accounts.create_user(conn, name)
    issued = await accounts.create_token(conn, user_id=user.id, scopes=("user",))
    assert await issue_key(conn, user.id, issued.record.id, issued.token, ("user",)) == (
        KeyIssue.NEW_KEY
    )
    if memory:
        await save_preferences(conn, user.id, Preferences(enabled=True, compaction=True))
    return Member(user.id, Token(issued.record.id, issued.token))


async def key_of(conn: asyncpg.Connection, member: Member, token: Token | None = None) -> UserKey:
    """The member's data key, opened with one of their tokens."""
    token = token or member.token
    return await open_key(conn, member.user_id, token.id, token.text, provision=False)


@pytest.fixture
async def alice(conn: asyncpg.Connection) -> Member:
    """A user whose memory is on (compaction too)."""
    return await new_member(conn, "alice")


@pytest.fixture
async def vconn(conn: asyncpg.Connection) -> asyncpg.Connection:
    """The test's connection with pgvector's codec, as the hub's pool has it."""
    await register_vector(conn)
    return conn
