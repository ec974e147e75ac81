"""A user's preferences (``user_preferences``): auto-review of every answer, the least worker
trust their chats may run on, and whether their chats may overflow to peer pools.

Read on every chat, so :class:`PreferenceCache` keeps them in memory for a few seconds; a change
made through this hub is seen at once, one made elsewhere within ``ttl_s`` (and one more chat,
answered from the stale entry while it is reloaded).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from uuid import UUID

import asyncpg
import structlog

log = structlog.get_logger()


@dataclass(frozen=True)
class Preferences:
    """What a user chose; everything is off (or the pool's default) until the user says so."""

    auto_review: bool = False
    # The least trust level of a worker this user's chats may run on; the pool's minimum for
    # chats applies when it is higher.
    min_trust: int = 0
    # A chat this pool cannot serve soon may be served by a peer pool (docs/federation.md).
    federation_chat: bool = True
    # Recalled memory and the user's identity travel with a chat forwarded to a peer.
    federation_memory: bool = False


async def load_preferences(conn: asyncpg.Connection, user_id: UUID) -> Preferences:
    """The user's preferences (the defaults when never set)."""
    row = await conn.fetchrow(
        "SELECT auto_review, min_trust, federation_chat, federation_memory "
        "FROM user_preferences WHERE user_id = $1",
        user_id,
    )
    if row is None:
        return Preferences()
    return Preferences(**dict(row))


async def save_preferences(
    conn: asyncpg.Connection, user_id: UUID, preferences: Preferences
) -> Preferences:
    """Store the user's preferences, replacing earlier ones."""
    await conn.execute(
        "INSERT INTO user_preferences (user_id, auto_review, min_trust, federation_chat, "
        "federation_memory) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (user_id) DO UPDATE SET auto_review = EXCLUDED.auto_review, "
        "min_trust = EXCLUDED.min_trust, federation_chat = EXCLUDED.federation_chat, "
        "federation_memory = EXCLUDED.federation_memory, updated_at = now()",
        user_id,
        preferences.auto_review,
        preferences.min_trust,
        preferences.federation_chat,
        preferences.federation_memory,
    )
    return preferences


class PreferenceCache:
    """Users' preferences kept ``ttl_s`` seconds, so a chat does not wait on the database.

    Only a user's first chat (since the hub started, or since the cache was full) waits for the
    load. A stale entry is answered at once while one reload runs beside it, and concurrent
    chats of a user share one load: a burst of chats costs one query, not one each.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        ttl_s: float = 5.0,
        max_users: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._max_users = max_users
        self._clock = clock
        self._entries: dict[UUID, tuple[float, Preferences]] = {}
        self._loading: dict[UUID, asyncio.Future[Preferences]] = {}

    async def get(self, user_id: UUID) -> Preferences:
        """The user's preferences, from memory when known (reloaded beside when stale)."""
        entry = self._entries.get(user_id)
        if entry is None:
            return await asyncio.shield(self._load(user_id))
        if self._clock() - entry[0] >= self._ttl_s:
            self._load(user_id)
        return entry[1]

    def _load(self, user_id: UUID) -> asyncio.Future[Preferences]:
        """The user's load under way, started if there is none (one per user at a time)."""
        loading = self._loading.get(user_id)
        if loading is None:
            loading = asyncio.ensure_future(self._read(user_id))
            self._loading[user_id] = loading
            loading.add_done_callback(partial(self._loaded, user_id))
        return loading

    async def _read(self, user_id: UUID) -> Preferences:
        started = self._clock()
        async with self._pool.acquire() as conn:
            preferences = await load_preferences(conn, user_id)
        entry = self._entries.get(user_id)
        if entry is None or entry[0] <= started:  # else saved meanwhile: that is newer
            if len(self._entries) >= self._max_users:
                self._entries.clear()
            self._entries[user_id] = (self._clock(), preferences)
        return preferences

    def _loaded(self, user_id: UUID, loading: asyncio.Future[Preferences]) -> None:
        self._loading.pop(user_id, None)
        if not loading.cancelled() and (error := loading.exception()) is not None:
            # The chats that waited got the error; a reload nobody waited for keeps the old entry.
            log.warning("preferences_load_failed", user_id=str(user_id), error=repr(error))

    async def save(self, user_id: UUID, preferences: Preferences) -> Preferences:
        """Store the user's preferences and remember them."""
        async with self._pool.acquire() as conn:
            await save_preferences(conn, user_id, preferences)
        self._entries[user_id] = (self._clock(), preferences)
        return preferences
