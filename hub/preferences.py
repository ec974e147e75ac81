"""A user's agent preferences (``user_preferences``): for now, auto-review of every answer."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg


@dataclass(frozen=True)
class Preferences:
    """What a user chose; everything is off until the user turns it on."""

    auto_review: bool = False


async def load_preferences(conn: asyncpg.Connection, user_id: UUID) -> Preferences:
    """The user's preferences (the defaults when never set)."""
    auto_review = await conn.fetchval(
        "SELECT auto_review FROM user_preferences WHERE user_id = $1", user_id
    )
    return Preferences(auto_review=bool(auto_review))


async def save_preferences(
    conn: asyncpg.Connection, user_id: UUID, preferences: Preferences
) -> Preferences:
    """Store the user's preferences, replacing earlier ones."""
    await conn.execute(
        "INSERT INTO user_preferences (user_id, auto_review) VALUES ($1, $2) "
        "ON CONFLICT (user_id) DO UPDATE SET auto_review = EXCLUDED.auto_review, "
        "updated_at = now()",
        user_id,
        preferences.auto_review,
    )
    return preferences
