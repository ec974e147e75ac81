"""The record of excluded workers, kept so the admin can see who was excluded and why."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg


@dataclass(frozen=True)
class Exclusion:
    """One exclusion of a worker."""

    worker_id: str
    worker_name: str
    owner_id: UUID | None
    reason: str
    detail: str
    created_at: datetime | None = None


async def record_exclusion(conn: asyncpg.Connection, exclusion: Exclusion) -> None:
    """Store an exclusion."""
    await conn.execute(
        "INSERT INTO worker_exclusions (worker_id, worker_name, owner_id, reason, detail) "
        "VALUES ($1, $2, $3, $4, $5)",
        exclusion.worker_id,
        exclusion.worker_name,
        exclusion.owner_id,
        exclusion.reason,
        exclusion.detail,
    )


async def recent_exclusions(conn: asyncpg.Connection, limit: int = 100) -> list[Exclusion]:
    """The latest exclusions, newest first."""
    rows = await conn.fetch(
        "SELECT worker_id, worker_name, owner_id, reason, detail, created_at "
        "FROM worker_exclusions ORDER BY created_at DESC, id DESC LIMIT $1",
        limit,
    )
    return [Exclusion(**dict(row)) for row in rows]
