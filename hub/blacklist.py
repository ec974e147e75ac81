"""The admin's blacklist: workers, users and peer pools this pool refuses (table ``blacklist``).

Listing is the record; each kind also has its effect, applied in the same transaction:
a worker's tokens are revoked (its live link closes once the caller drops them from the token
cache, see :func:`hub.auth.TokenResolver.forget`) and its record can no longer open a link
(``hub/routes/workers.py`` asks :func:`is_blacklisted`); a user is disabled; a peer is removed.
Lifting a worker's or a peer's entry lets it back (a worker with a newly issued token, a peer
through a new invite); a disabled user stays disabled, as ``iamine users disable`` is final.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg

from federation.errors import PeerNotFound
from federation.peers import remove_peer
from hub import accounts
from hub.auth import TokenResolver
from hub.errors import InvalidRequestError, NotFoundError
from inference import identity

Kind = Literal["worker", "user", "peer"]
KINDS: tuple[Kind, ...] = ("worker", "user", "peer")


@dataclass(frozen=True)
class Entry:
    """One blacklisted subject: its kind, id, the name it had, why and since when."""

    kind: Kind
    subject: str
    label: str
    reason: str
    created_at: datetime


@dataclass(frozen=True)
class Banned:
    """What blacklisting did: the entry, and the tokens revoked (to drop from the cache)."""

    entry: Entry
    revoked_tokens: list[UUID]
    user_id: UUID | None = None

    def drop_from(self, tokens: TokenResolver) -> None:
        """End at once, in this process, what the ban revoked: tokens, leases, worker links."""
        for token_id in self.revoked_tokens:
            tokens.forget(token_id, "worker_blacklisted")
        if self.user_id is not None:
            tokens.forget_user(self.user_id)


def _check_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason or len(reason) > 500:
        raise InvalidRequestError("Give a reason of 1 to 500 characters.", param="reason")
    return reason


async def _record(
    conn: asyncpg.Connection, kind: Kind, subject: str, label: str, reason: str
) -> Entry:
    row = await conn.fetchrow(
        "INSERT INTO blacklist (kind, subject, label, reason) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (kind, subject) DO UPDATE SET reason = EXCLUDED.reason RETURNING *",
        kind,
        subject,
        label,
        reason,
    )
    return Entry(**dict(row))


async def ban_worker(conn: asyncpg.Connection, name: str, reason: str) -> Banned:
    """Blacklist the worker record ``name`` and revoke every token that speaks for it."""
    reason = _check_reason(reason)
    record = await identity.find_worker(conn, name)
    if record is None:
        raise NotFoundError(f"No worker named {name!r}.", param="name")
    async with conn.transaction():
        rows = await conn.fetch(
            "UPDATE tokens SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE worker_id = $1 RETURNING id",
            record.id,
        )
        entry = await _record(conn, "worker", str(record.id), record.name, reason)
    return Banned(entry, [row["id"] for row in rows])


async def ban_user(conn: asyncpg.Connection, name: str, reason: str) -> Banned:
    """Blacklist the user ``name``: disable them (their tokens stop working)."""
    reason = _check_reason(reason)
    async with conn.transaction():
        user = await accounts.disable_user(conn, name)
        entry = await _record(conn, "user", str(user.id), user.name, reason)
    return Banned(entry, [], user_id=user.id)


async def ban_peer(conn: asyncpg.Connection, pool_id: str, reason: str) -> Banned:
    """Blacklist a peer pool: remove it if admitted; its later hellos are refused."""
    reason = _check_reason(reason)
    pool_id = pool_id.strip().lower()
    if not pool_id or len(pool_id) > 200:
        raise InvalidRequestError("Give the peer's pool id.", param="pool_id")
    async with conn.transaction():
        with suppress(PeerNotFound):  # a pool not admitted (yet) may be refused in advance
            await remove_peer(conn, pool_id)
        entry = await _record(conn, "peer", pool_id, pool_id, reason)
    return Banned(entry, [])


async def ban(conn: asyncpg.Connection, kind: Kind, subject: str, reason: str) -> Banned:
    """Blacklist a worker or a user (by name) or a peer (by pool id)."""
    bans = {"worker": ban_worker, "user": ban_user, "peer": ban_peer}
    return await bans[kind](conn, subject.strip(), reason)


async def lift(conn: asyncpg.Connection, kind: Kind, subject: str) -> Entry:
    """Remove an entry (a user stays disabled); 404 when there is none."""
    row = await conn.fetchrow(
        "DELETE FROM blacklist WHERE kind = $1 AND subject = $2 RETURNING *", kind, subject
    )
    if row is None:
        raise NotFoundError(f"No {kind} {subject!r} on the blacklist.", param="subject")
    return Entry(**dict(row))


async def list_entries(conn: asyncpg.Connection) -> list[Entry]:
    """Every entry, newest first."""
    rows = await conn.fetch("SELECT * FROM blacklist ORDER BY created_at DESC, kind, subject")
    return [Entry(**dict(row)) for row in rows]


async def is_blacklisted(conn: asyncpg.Connection, kind: Kind, subject: str) -> bool:
    """Whether ``subject`` (a worker or user id, a pool id) is on the blacklist."""
    found = await conn.fetchval(
        "SELECT 1 FROM blacklist WHERE kind = $1 AND subject = $2", kind, subject
    )
    return found is not None
