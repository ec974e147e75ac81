"""Admitted peers and the backoff of this pool's calls to each of them.

A failed call (unreachable, 5xx, refused, an answer that does not authenticate) is not a verdict:
it adds one to the peer's consecutive failures and pushes its next try out exponentially, with
jitter, up to ``backoff_max_s`` (about an hour), so a failing peer is still probed. A success
resets both. ``state`` reads ``ok``, ``failing`` (fewer than ``down_after_failures`` in a row) or
``down``; one 5xx makes a peer ``failing``, never ``down``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

from federation.errors import InviteRefused, PeerNotFound
from federation.identity import encode_public_key

PeerState = Literal["ok", "failing", "down"]

_COLUMNS = (
    "pool_id, public_key, url, admitted_at, admitted_by, last_seen_at, last_ok_at,"
    " consecutive_failures, next_try_at, last_error"
)
# Past 2**40 × the initial delay, the cap has long been reached; no float overflow either.
_MAX_DOUBLINGS = 40


@dataclass(frozen=True)
class Peer:
    """One admitted peer pool."""

    pool_id: str
    public_key: bytes
    url: str
    admitted_at: datetime
    admitted_by: str
    last_seen_at: datetime | None
    last_ok_at: datetime | None
    consecutive_failures: int
    next_try_at: datetime | None
    last_error: str | None

    def state(self, down_after_failures: int) -> PeerState:
        """``ok``, ``failing`` or ``down`` after ``down_after_failures`` failures in a row."""
        if self.consecutive_failures == 0:
            return "ok"
        return "down" if self.consecutive_failures >= down_after_failures else "failing"

    def due(self, now: datetime) -> bool:
        """Whether its backoff lets this pool call it now."""
        return self.next_try_at is None or self.next_try_at <= now

    def as_dict(self, down_after_failures: int) -> dict[str, Any]:
        """The peer as the admin API and CLI show it (the key as base64url)."""
        return {
            "pool_id": self.pool_id,
            "public_key": encode_public_key(self.public_key),
            "url": self.url,
            "admitted_at": self.admitted_at.isoformat(),
            "admitted_by": self.admitted_by,
            "last_seen_at": _iso(self.last_seen_at),
            "last_ok_at": _iso(self.last_ok_at),
            "state": self.state(down_after_failures),
            "consecutive_failures": self.consecutive_failures,
            "next_try_at": _iso(self.next_try_at),
            "last_error": self.last_error,
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _peer(row: asyncpg.Record) -> Peer:
    return Peer(**dict(row))


def backoff_delay(
    failures: int, *, initial_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Seconds before the next try after ``failures`` consecutive failures (≥ 1).

    ``initial_s × 2^(failures-1)``, capped at ``max_s``, then scaled by a random factor in
    [0.5, 1) so that peers failing together do not all retry at the same instant.
    """
    exponent = min(max(failures, 1) - 1, _MAX_DOUBLINGS)
    ceiling = min(max_s, math.ldexp(initial_s, exponent))
    draw = rng.random() if rng is not None else random.random()
    return ceiling * (0.5 + 0.5 * draw)


async def admit_peer(
    conn: asyncpg.Connection,
    *,
    pool_id: str,
    public_key: bytes,
    url: str,
    admitted_by: str,
    now: datetime,
) -> Peer:
    """Record an admitted peer; admitting it again updates its URL and clears its backoff.

    A pool on the admin's blacklist (``hub/blacklist.py``) is refused: ``peer_blacklisted``.
    """
    banned = await conn.fetchval(
        "SELECT 1 FROM blacklist WHERE kind = 'peer' AND subject = $1", pool_id
    )
    if banned is not None:
        raise InviteRefused(
            f"The pool {pool_id} is on this pool's blacklist.", code="peer_blacklisted"
        )
    row = await conn.fetchrow(
        f"""
        INSERT INTO peers (pool_id, public_key, url, admitted_at, admitted_by)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (pool_id) DO UPDATE
           SET url = EXCLUDED.url, admitted_at = EXCLUDED.admitted_at,
               admitted_by = EXCLUDED.admitted_by, consecutive_failures = 0,
               next_try_at = NULL, last_error = NULL
        RETURNING {_COLUMNS}
        """,  # noqa: S608
        pool_id,
        public_key,
        url,
        now,
        admitted_by,
    )
    assert row is not None
    return _peer(row)


async def find_peer(conn: asyncpg.Connection, pool_id: str) -> Peer | None:
    """The admitted peer with this pool id, if any."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM peers WHERE pool_id = $1", pool_id)  # noqa: S608
    return _peer(row) if row is not None else None


async def get_peer(conn: asyncpg.Connection, pool_id: str) -> Peer:
    """The admitted peer with this pool id, or :class:`PeerNotFound`."""
    peer = await find_peer(conn, pool_id)
    if peer is None:
        raise PeerNotFound(f"No peer has pool id {pool_id}.", param="pool_id")
    return peer


async def list_peers(conn: asyncpg.Connection) -> list[Peer]:
    """Every admitted peer, oldest admission first."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM peers ORDER BY admitted_at, pool_id")  # noqa: S608
    return [_peer(row) for row in rows]


async def remove_peer(conn: asyncpg.Connection, pool_id: str) -> Peer:
    """Forget a peer (its requests are refused from now on), or :class:`PeerNotFound`."""
    row = await conn.fetchrow(f"DELETE FROM peers WHERE pool_id = $1 RETURNING {_COLUMNS}", pool_id)  # noqa: S608
    if row is None:
        raise PeerNotFound(f"No peer has pool id {pool_id}.", param="pool_id")
    return _peer(row)


async def mark_seen(conn: asyncpg.Connection, pool_id: str, now: datetime) -> None:
    """Note that the peer sent a request that authenticated."""
    await conn.execute("UPDATE peers SET last_seen_at = $2 WHERE pool_id = $1", pool_id, now)


async def record_success(conn: asyncpg.Connection, pool_id: str, now: datetime) -> None:
    """A call to the peer succeeded: its failures and backoff are reset."""
    await conn.execute(
        """
        UPDATE peers SET consecutive_failures = 0, next_try_at = NULL, last_error = NULL,
                         last_ok_at = $2
         WHERE pool_id = $1
        """,
        pool_id,
        now,
    )


async def record_failure(
    conn: asyncpg.Connection,
    pool_id: str,
    now: datetime,
    error: str,
    *,
    initial_s: float,
    max_s: float,
    rng: random.Random | None = None,
) -> Peer | None:
    """A call to the peer failed: count it and push its next try out; ``None`` if it is gone."""
    async with conn.transaction():
        failures = await conn.fetchval(
            """
            UPDATE peers SET consecutive_failures = consecutive_failures + 1, last_error = $2
             WHERE pool_id = $1
            RETURNING consecutive_failures
            """,
            pool_id,
            error[:500],
        )
        if failures is None:
            return None
        delay = backoff_delay(failures, initial_s=initial_s, max_s=max_s, rng=rng)
        row = await conn.fetchrow(
            f"UPDATE peers SET next_try_at = $2 WHERE pool_id = $1 RETURNING {_COLUMNS}",  # noqa: S608
            pool_id,
            now + timedelta(seconds=delay),
        )
    return _peer(row) if row is not None else None
