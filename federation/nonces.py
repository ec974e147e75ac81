"""The nonce table: each signed request's (pool id, nonce) is accepted once.

A nonce is kept until its signature could no longer pass the age check (``created`` +
``max_age_s`` + the allowed skew); after that the age check alone refuses a replay, and the row
is purged.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from federation.errors import SignatureRejected


async def record_nonce(
    conn: asyncpg.Connection, pool_id: str, nonce: str, expires_at: datetime
) -> None:
    """Remember a request's nonce, or refuse it (``replayed_request``) if it was seen."""
    inserted = await conn.fetchval(
        """
        INSERT INTO federation_nonces (pool_id, nonce, expires_at) VALUES ($1, $2, $3)
        ON CONFLICT DO NOTHING
        RETURNING true
        """,
        pool_id,
        nonce,
        expires_at,
    )
    if inserted is None:
        raise SignatureRejected(
            "This request was seen already (its nonce is used).", code="replayed_request"
        )


async def purge_nonces(conn: asyncpg.Connection, now: datetime) -> int:
    """Delete the nonces whose requests are too old to pass the age check; return how many."""
    result = await conn.execute("DELETE FROM federation_nonces WHERE expires_at < $1", now)
    return int(result.split()[-1])


def nonce_expiry(created: int, *, max_age_s: float, skew_s: float) -> datetime:
    """When a nonce may be forgotten: its request can no longer pass the age check."""
    return datetime.fromtimestamp(created, UTC) + timedelta(seconds=max_age_s + skew_s)
