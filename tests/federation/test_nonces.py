"""The nonce table: a (pool, nonce) pair is accepted once, and forgotten once it is too old."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from federation.errors import SignatureRejected
from federation.nonces import nonce_expiry, purge_nonces, record_nonce

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def test_a_nonce_is_accepted_once_per_pool(conn: asyncpg.Connection) -> None:
    await record_nonce(conn, "iam1a", "nonce-0001", NOW)
    await record_nonce(conn, "iam1b", "nonce-0001", NOW)  # another pool's nonce is its own
    with pytest.raises(SignatureRejected) as replayed:
        await record_nonce(conn, "iam1a", "nonce-0001", NOW)
    assert replayed.value.code == "replayed_request"


async def test_expired_nonces_are_purged_and_live_ones_kept(conn: asyncpg.Connection) -> None:
    created = int(NOW.timestamp())
    expiry = nonce_expiry(created, max_age_s=300, skew_s=10)
    assert expiry == NOW + timedelta(seconds=310)
    await record_nonce(conn, "iam1a", "old-nonce", expiry)
    await record_nonce(conn, "iam1a", "new-nonce", expiry + timedelta(seconds=60))
    assert await purge_nonces(conn, expiry - timedelta(seconds=1)) == 0
    assert await purge_nonces(conn, expiry + timedelta(seconds=1)) == 1
    left = await conn.fetch("SELECT nonce FROM federation_nonces")
    assert [row["nonce"] for row in left] == ["new-nonce"]
