"""Pools learned through gossip: candidates until an admin, or a quorum of peers, admits them.

A peer's gossip lists the peers it admitted, with their keys and URLs. A pool this one has not
admitted becomes a *candidate*, and the peer that listed it *vouches* for it (only the peer's
own signed message counts). A candidate is never trusted on gossip alone: the admin admits it
(`iamine federation candidates admit`), or — when ``admit_quorum`` is set — it is admitted once
that many admitted peers vouch for it. Its pool id must be the fingerprint of the key it is
listed with, so nobody can vouch a key under another pool's id.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from federation import peers
from federation.errors import PeerNotFound
from federation.identity import encode_public_key, pool_id_of

_COLUMNS = "pool_id, public_key, url, vouched_by, first_seen_at, last_seen_at"
MAX_CANDIDATES = 1_000


@dataclass(frozen=True)
class Candidate:
    """A pool named by peers' gossip and not admitted here."""

    pool_id: str
    public_key: bytes
    url: str
    vouched_by: tuple[str, ...]
    first_seen_at: datetime
    last_seen_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """The candidate as the admin API and CLI show it."""
        return {
            "pool_id": self.pool_id,
            "public_key": encode_public_key(self.public_key),
            "url": self.url,
            "vouched_by": list(self.vouched_by),
            "first_seen_at": self.first_seen_at.isoformat(),
            "last_seen_at": self.last_seen_at.isoformat(),
        }


def _candidate(row: asyncpg.Record) -> Candidate:
    return Candidate(
        pool_id=row["pool_id"],
        public_key=bytes(row["public_key"]),
        url=row["url"],
        vouched_by=tuple(row["vouched_by"]),
        first_seen_at=row["first_seen_at"],
        last_seen_at=row["last_seen_at"],
    )


@dataclass(frozen=True)
class Listed:
    """A pool as a peer's gossip lists it."""

    pool_id: str
    public_key: bytes
    url: str


async def vouch(
    conn: asyncpg.Connection, by: str, listed: Collection[Listed], now: datetime
) -> int:
    """``by`` vouches for exactly the pools in ``listed`` that are not admitted here.

    Pools whose id is not their key's fingerprint are ignored; ``by``'s vouch is withdrawn from
    candidates it no longer lists. Returns how many candidates it vouches for.
    """
    fair = [entry for entry in listed if pool_id_of(entry.public_key) == entry.pool_id]
    total = int(await conn.fetchval("SELECT count(*) FROM peer_candidates"))
    kept = 0
    for entry in fair:
        known = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM peer_candidates WHERE pool_id = $1)", entry.pool_id
        )
        if not known and total >= MAX_CANDIDATES:
            continue
        written = await conn.fetchval(
            """
            INSERT INTO peer_candidates (pool_id, public_key, url, vouched_by,
                                         first_seen_at, last_seen_at)
            SELECT $1, $2, $3, ARRAY[$4], $5, $5
             WHERE NOT EXISTS (SELECT 1 FROM peers WHERE pool_id = $1)
            ON CONFLICT (pool_id) DO UPDATE
               SET last_seen_at = $5,
                   vouched_by = CASE
                     WHEN peer_candidates.public_key <> EXCLUDED.public_key
                       THEN peer_candidates.vouched_by
                     WHEN $4 = ANY(peer_candidates.vouched_by) THEN peer_candidates.vouched_by
                     ELSE array_append(peer_candidates.vouched_by, $4)
                   END
            RETURNING 1
            """,
            entry.pool_id,
            entry.public_key,
            entry.url,
            by,
            now,
        )
        if written is not None:
            kept += 1
            total += 0 if known else 1
    await conn.execute(
        "UPDATE peer_candidates SET vouched_by = array_remove(vouched_by, $1) "
        "WHERE $1 = ANY(vouched_by) AND NOT pool_id = ANY($2::text[])",
        by,
        [entry.pool_id for entry in fair],
    )
    return kept


async def list_candidates(conn: asyncpg.Connection) -> list[Candidate]:
    """Every candidate, most vouched for first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM peer_candidates "  # noqa: S608
        "ORDER BY cardinality(vouched_by) DESC, first_seen_at, pool_id"
    )
    return [_candidate(row) for row in rows]


async def admit_candidate(
    conn: asyncpg.Connection, pool_id: str, now: datetime, admitted_by: str = "admin"
) -> peers.Peer:
    """Admit a candidate as a peer (its key and URL as gossiped), or :class:`PeerNotFound`."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"DELETE FROM peer_candidates WHERE pool_id = $1 RETURNING {_COLUMNS}",  # noqa: S608
            pool_id,
        )
        if row is None:
            raise PeerNotFound(f"No candidate has pool id {pool_id}.", param="pool_id")
        candidate = _candidate(row)
        return await peers.admit_peer(
            conn,
            pool_id=candidate.pool_id,
            public_key=candidate.public_key,
            url=candidate.url,
            admitted_by=admitted_by,
            now=now,
        )


async def admit_by_quorum(
    conn: asyncpg.Connection, quorum: int, admitted: Collection[str], now: datetime
) -> list[peers.Peer]:
    """Admit every candidate that ``quorum`` (> 0) admitted peers vouch for."""
    if quorum <= 0:
        return []
    voters = set(admitted)
    admitted_now = []
    for candidate in await list_candidates(conn):
        vouchers = sorted(set(candidate.vouched_by) & voters)
        if len(vouchers) >= quorum:
            by = "quorum " + ",".join(v[:12] for v in vouchers)
            admitted_now.append(await admit_candidate(conn, candidate.pool_id, now, by))
    return admitted_now
