"""PreferenceCache on a real database: one load per user however many chats ask at once, stale
entries answered at once while one reload runs beside them, and failures that lose nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import pytest

from hub import accounts
from hub.preferences import PreferenceCache, Preferences, save_preferences

pytestmark = pytest.mark.anyio


@dataclass
class Clock:
    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=4) as created:
        yield created


async def new_user(pool: asyncpg.Pool, name: str) -> UUID:
    async with pool.acquire() as conn:
        return (await accounts.create_user(conn, name)).id


async def changed_elsewhere(pool: asyncpg.Pool, user: UUID, preferences: Preferences) -> None:
    """A change written by another replica: straight to the table, this cache not told."""
    async with pool.acquire() as conn:
        await save_preferences(conn, user, preferences)


async def reloaded(cache: PreferenceCache, user: UUID, expected: Preferences) -> None:
    """Ask until the reload beside the stale answers has landed (bounded)."""
    with anyio.fail_after(10):
        while True:
            if await cache.get(user) == expected:
                return
            await anyio.sleep(0.01)


async def test_concurrent_first_chats_of_a_user_share_one_load(pool: asyncpg.Pool) -> None:
    user = await new_user(pool, "burst")
    await changed_elsewhere(pool, user, Preferences(auto_review=True))
    cache = PreferenceCache(pool)
    answers = await asyncio.gather(*(cache.get(user) for _ in range(20)))
    assert answers[0] == Preferences(auto_review=True)
    assert len({id(answer) for answer in answers}) == 1  # one load made one object


async def test_a_stale_entry_is_answered_at_once_and_reloaded_beside(pool: asyncpg.Pool) -> None:
    user, clock = await new_user(pool, "stale"), Clock()
    cache = PreferenceCache(pool, ttl_s=5, clock=clock)
    assert await cache.get(user) == Preferences()
    await changed_elsewhere(pool, user, Preferences(min_trust=2))
    assert await cache.get(user) == Preferences()  # fresh still: not read again
    clock.now += 5
    assert await cache.get(user) == Preferences()  # stale: answered now, reloaded beside
    await reloaded(cache, user, Preferences(min_trust=2))


async def test_a_change_made_here_is_seen_at_once(pool: asyncpg.Pool) -> None:
    user = await new_user(pool, "saver")
    cache = PreferenceCache(pool, ttl_s=3600)
    assert await cache.get(user) == Preferences()
    await cache.save(user, Preferences(federation_chat=False))
    assert await cache.get(user) == Preferences(federation_chat=False)


async def test_a_failed_reload_keeps_the_entry_and_a_failed_first_load_is_the_callers(
    database_url: str, captured_logs: list[dict[str, Any]]
) -> None:
    clock = Clock()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    user = await new_user(pool, "outage")
    cache = PreferenceCache(pool, ttl_s=5, clock=clock)
    assert await cache.get(user) == Preferences()
    await pool.close()  # the database is gone from this cache's point of view
    clock.now += 5
    assert await cache.get(user) == Preferences()
    with anyio.fail_after(10):
        while True:
            if any(e["event"] == "preferences_load_failed" for e in captured_logs):
                break
            await anyio.sleep(0.01)
    assert await cache.get(user) == Preferences()  # still served
    with pytest.raises(asyncpg.InterfaceError):
        await cache.get(UUID(int=7))  # nothing to fall back on: the caller sees the failure
