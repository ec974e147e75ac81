"""Who in the federation is alive: heartbeats, suspicion, and death by quorum (SWIM's lesson).

Every pool counts its own heartbeat up once per gossip round under an *incarnation* (its start
time in ms, so a restarted pool never goes backwards). Heartbeats spread by gossip: a peer's
message carries its own and the latest it knows of every other peer, so a pool hears that X is
alive even when its own link to X is down. A pool *suspects* a peer whose heartbeat it has not
seen rise for ``suspect_after_s``; it says so in its gossip, and each suspicion counts only when
the suspecting pool says it itself (a signed message from that pool), never when relayed. A
peer is declared **dead** only when this pool suspects it and so do a quorum of pools — by
default a majority of this pool and its other live peers — so one flaky link, or one lying
peer, cannot evict anybody. A higher heartbeat clears every suspicion at once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

Status = Literal["alive", "suspect", "dead"]
Heartbeat = tuple[int, int]
"""``(incarnation, counter)``: compared as a tuple."""

_COLUMNS = "pool_id, incarnation, heartbeat, heartbeat_at, suspected_by, status, status_at"
# Arbitrary constant shared by every hub process on one database: membership writes take it.
MEMBERSHIP_LOCK_KEY = 0x1A3F0551


@dataclass(frozen=True)
class Member:
    """This pool's view of one admitted peer's liveness."""

    pool_id: str
    incarnation: int
    heartbeat: int
    heartbeat_at: datetime | None
    suspected_by: tuple[str, ...]
    status: Status
    status_at: datetime | None

    @property
    def beat(self) -> Heartbeat:
        """The heartbeat as a comparable pair."""
        return (self.incarnation, self.heartbeat)

    def as_dict(self) -> dict[str, Any]:
        """The member as the admin API shows it."""
        return {
            "pool_id": self.pool_id,
            "heartbeat": [self.incarnation, self.heartbeat],
            "heartbeat_at": self.heartbeat_at.isoformat() if self.heartbeat_at else None,
            "suspected_by": list(self.suspected_by),
            "status": self.status,
            "status_at": self.status_at.isoformat() if self.status_at else None,
        }


def _member(row: asyncpg.Record) -> Member:
    return Member(
        pool_id=row["pool_id"],
        incarnation=row["incarnation"],
        heartbeat=row["heartbeat"],
        heartbeat_at=row["heartbeat_at"],
        suspected_by=tuple(row["suspected_by"]),
        status=row["status"],
        status_at=row["status_at"],
    )


def parse_heartbeat(value: Any) -> Heartbeat | None:
    """A ``[incarnation, counter]`` pair of non-negative integers from a message, else None."""
    if not isinstance(value, list) or len(value) != 2:
        return None
    incarnation, counter = value
    for part in (incarnation, counter):
        if not isinstance(part, int) or isinstance(part, bool) or not 0 <= part < 2**62:
            return None
    return (incarnation, counter)


async def lock_membership(conn: asyncpg.Connection) -> None:
    """Serialise this transaction's membership writes with every other one on the database.

    A gossip answer being applied, a peer's gossip being received and a round's verdicts all
    touch several peers' rows in their own order; without one lock they deadlock each other.
    Gossip is a few messages a second, so waiting costs nothing. Call inside a transaction.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1)", MEMBERSHIP_LOCK_KEY)


def dead_quorum(configured: int, live_others: int) -> int:
    """Pools that must suspect a peer before it is dead.

    ``configured`` when set; otherwise a majority of this pool and its ``live_others`` (live
    admitted peers other than the one judged): with a single peer, this pool's view decides.
    """
    if configured > 0:
        return configured
    return (live_others + 1) // 2 + 1


async def ensure_members(conn: asyncpg.Connection, pool_ids: Iterable[str]) -> None:
    """A state row for each admitted peer (new ones start alive with no heartbeat seen)."""
    await conn.execute(
        "INSERT INTO federation_state (pool_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
        list(pool_ids),
    )


async def list_members(conn: asyncpg.Connection) -> list[Member]:
    """Every admitted peer's liveness, by pool id."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM federation_state ORDER BY pool_id")  # noqa: S608
    return [_member(row) for row in rows]


async def observe_heartbeat(
    conn: asyncpg.Connection, pool_id: str, beat: Heartbeat, now: datetime
) -> bool:
    """Record ``beat`` for an admitted peer if it is higher than the one known; clear suspicion.

    Returns whether it rose (an unknown pool id changes nothing).
    """
    status = await conn.fetchval(
        """
        UPDATE federation_state
           SET incarnation = $2, heartbeat = $3, heartbeat_at = $4, suspected_by = '{}',
               status = 'alive',
               status_at = CASE WHEN status = 'alive' THEN status_at ELSE $4 END
         WHERE pool_id = $1 AND (incarnation, heartbeat) < ($2::bigint, $3::bigint)
        RETURNING status
        """,
        pool_id,
        beat[0],
        beat[1],
        now,
    )
    return status is not None


async def record_suspicions(
    conn: asyncpg.Connection, by: str, suspects: Collection[str], me: str
) -> None:
    """Set ``by``'s own suspicions: it suspects exactly ``suspects`` among this pool's peers.

    ``by`` never counts as suspecting itself, and nobody's suspicion of this pool is kept (this
    pool knows it is alive).
    """
    named = [s for s in suspects if s not in (by, me)]
    await conn.execute(
        """
        UPDATE federation_state
           SET suspected_by = CASE
                 WHEN pool_id = ANY($2::text[])
                   THEN (SELECT array_agg(DISTINCT x ORDER BY x)
                           FROM unnest(array_append(suspected_by, $1)) AS x)
                 ELSE array_remove(suspected_by, $1)
               END
         WHERE pool_id <> $1
        """,
        by,
        named,
    )


async def judge(
    conn: asyncpg.Connection,
    me: str,
    *,
    suspect_after: timedelta,
    configured_quorum: int,
    admitted_at: dict[str, datetime],
    now: datetime,
) -> dict[str, Status]:
    """This pool's verdicts for this round; returns the peers whose status changed.

    A peer not heard from (its heartbeat not risen) for ``suspect_after`` — counted from its
    admission if it never beat — is suspected by this pool; it is dead when this pool's suspicion
    and the others' reach :func:`dead_quorum`. Only the votes of pools this pool still hears
    count: cut off from the rest, a pool keeps their last suspicions but cannot use them, so the
    minority side of a partition never declares the majority dead.
    """
    changed: dict[str, Status] = {}
    async with conn.transaction():
        await lock_membership(conn)
        members = {
            m.pool_id: m
            for m in map(
                _member,
                await conn.fetch(f"SELECT {_COLUMNS} FROM federation_state FOR UPDATE"),  # noqa: S608
            )
        }
        live = {pool_id for pool_id, m in members.items() if m.status != "dead"}
        unheard = {
            pool_id
            for pool_id, m in members.items()
            if now - (m.heartbeat_at or admitted_at.get(pool_id, now)) > suspect_after
        }
        for pool_id, member in members.items():
            mine = pool_id in unheard
            suspected = set(member.suspected_by) - {me}
            if mine:
                suspected.add(me)
            voters = (live - unheard - {pool_id}) | {me}
            votes = len(suspected & voters)
            quorum = dead_quorum(configured_quorum, len(live - {pool_id}))
            status: Status = "alive"
            if mine:
                status = "dead" if votes >= quorum else "suspect"
            if status != member.status or tuple(sorted(suspected)) != member.suspected_by:
                await conn.execute(
                    """
                    UPDATE federation_state
                       SET suspected_by = $2, status = $3,
                           status_at = CASE WHEN status = $3 THEN status_at ELSE $4 END
                     WHERE pool_id = $1
                    """,
                    pool_id,
                    sorted(suspected),
                    status,
                    now,
                )
            if status != member.status:
                changed[pool_id] = status
    return changed


async def suspected_by_me(conn: asyncpg.Connection, me: str) -> list[str]:
    """The peers this pool suspects (what its gossip says)."""
    rows = await conn.fetch(
        "SELECT pool_id FROM federation_state WHERE $1 = ANY(suspected_by) ORDER BY pool_id", me
    )
    return [row["pool_id"] for row in rows]
