"""One-time invites: how an admin lets another pool peer with this one.

An invite is a random secret (``iaminv1_`` + 43 base64url characters, 256 bits) shown once; only
its sha256 is stored. It is bound to this pool's fingerprint twice over: the row records the pool
id it was minted under (a new key voids it), and a hello must name that same pool id — the
fingerprint the joining admin was given out of band — or the invite is refused without being
used. It may also be bound to the joining pool (``for_pool_id``). It works once, before it
expires.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from federation.errors import InvalidFederationInput, InviteRefused

PREFIX = "iaminv1_"
CODE_PATTERN = re.compile(r"^iaminv1_[A-Za-z0-9_-]{43}$")
_COLUMNS = "id, pool_id, for_pool_id, created_at, expires_at, used_at, used_by"


@dataclass(frozen=True)
class Invite:
    """A minted invite (never its secret)."""

    id: int
    pool_id: str
    for_pool_id: str | None
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    used_by: str | None

    def as_dict(self) -> dict[str, Any]:
        """The invite as the admin API shows it."""
        return {
            "id": self.id,
            "pool_id": self.pool_id,
            "for_pool_id": self.for_pool_id,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "used_at": self.used_at.isoformat() if self.used_at else None,
            "used_by": self.used_by,
        }


def parse_invite_code(text: str) -> str:
    """An invite code as typed (spaces trimmed), or :class:`InvalidFederationInput`."""
    code = text.strip()
    if not CODE_PATTERN.match(code):
        raise InvalidFederationInput(
            "Not an invite code (iaminv1_ followed by 43 characters).", param="invite"
        )
    return code


def _hash(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


async def create_invite(
    conn: asyncpg.Connection,
    *,
    pool_id: str,
    now: datetime,
    ttl: timedelta,
    for_pool_id: str | None = None,
) -> tuple[str, Invite]:
    """Mint an invite for this pool; return its code (shown once) and its record."""
    if ttl <= timedelta(0):
        raise InvalidFederationInput("An invite must expire in the future.", param="expires")
    code = PREFIX + secrets.token_urlsafe(32)
    row = await conn.fetchrow(
        f"""
        INSERT INTO federation_invites (secret_hash, pool_id, for_pool_id, created_at, expires_at)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING {_COLUMNS}
        """,  # noqa: S608
        _hash(code),
        pool_id,
        for_pool_id,
        now,
        now + ttl,
    )
    assert row is not None
    return code, Invite(**dict(row))


async def redeem_invite(
    conn: asyncpg.Connection, code: str, *, pool_id: str, joiner: str, now: datetime
) -> Invite:
    """Use an invite for ``joiner``, inside the caller's transaction; refuse a bad one.

    The row is locked, so two hellos racing with one invite cannot both succeed.
    """
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM federation_invites WHERE secret_hash = $1 FOR UPDATE",  # noqa: S608
        _hash(code),
    )
    if row is None or row["pool_id"] != pool_id:
        raise InviteRefused("This pool issued no such invite (or under another key).")
    if row["used_at"] is not None:
        raise InviteRefused("This invite was used already.", code="invite_used")
    if row["expires_at"] <= now:
        raise InviteRefused("This invite has expired.", code="invite_expired")
    if row["for_pool_id"] not in (None, joiner):
        raise InviteRefused("This invite is meant for another pool.")
    used = await conn.fetchrow(
        f"""
        UPDATE federation_invites SET used_at = $2, used_by = $3 WHERE id = $1
        RETURNING {_COLUMNS}
        """,  # noqa: S608
        row["id"],
        now,
        joiner,
    )
    assert used is not None
    return Invite(**dict(used))
