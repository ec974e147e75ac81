"""Per-peer backoff: exponential with jitter, capped, reset on success; one failure is not down."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from federation import peers
from federation.errors import PeerNotFound
from tests.federation.conftest import new_identity

NOW = datetime(2026, 1, 1, tzinfo=UTC)
INITIAL, CAP = 5.0, 3600.0


def test_the_delay_doubles_with_each_failure_within_its_jitter_and_stops_at_the_cap() -> None:
    rng = random.Random(7)
    for failures in range(1, 30):
        ceiling = min(CAP, INITIAL * 2 ** (failures - 1))
        delay = peers.backoff_delay(failures, initial_s=INITIAL, max_s=CAP, rng=rng)
        assert ceiling / 2 <= delay <= ceiling
    assert peers.backoff_delay(10_000, initial_s=INITIAL, max_s=CAP, rng=rng) <= CAP


async def _admitted(conn: asyncpg.Connection) -> str:
    identity = new_identity()
    await peers.admit_peer(
        conn,
        pool_id=identity.pool_id,
        public_key=identity.public_key,
        url="https://peer.example",
        admitted_by="test",
        now=NOW,
    )
    return identity.pool_id


@pytest.mark.anyio
async def test_consecutive_failures_push_the_next_try_out_and_a_success_resets(
    conn: asyncpg.Connection,
) -> None:
    pool_id = await _admitted(conn)
    waits: list[float] = []
    for _ in range(16):
        peer = await peers.record_failure(
            conn, pool_id, NOW, "peer_unreachable: refused", initial_s=INITIAL, max_s=CAP
        )
        assert peer is not None and peer.next_try_at is not None
        waits.append((peer.next_try_at - NOW).total_seconds())
    peer = await peers.get_peer(conn, pool_id)
    assert peer.consecutive_failures == 16 and peer.last_error == "peer_unreachable: refused"
    assert all(waits[i + 2] > waits[i] for i in range(8))  # exponential while under the cap
    assert max(waits) <= CAP and min(waits[-4:]) >= CAP / 2  # capped, and still probed
    assert not peer.due(NOW) and peer.due(NOW + timedelta(seconds=CAP))

    await peers.record_success(conn, pool_id, NOW)
    reset = await peers.get_peer(conn, pool_id)
    assert reset.consecutive_failures == 0 and reset.next_try_at is None
    assert reset.last_error is None and reset.last_ok_at == NOW and reset.due(NOW)


@pytest.mark.anyio
async def test_one_failure_makes_a_peer_failing_not_down(conn: asyncpg.Connection) -> None:
    pool_id = await _admitted(conn)
    assert (await peers.get_peer(conn, pool_id)).state(3) == "ok"
    states = []
    for _ in range(3):
        peer = await peers.record_failure(conn, pool_id, NOW, "503", initial_s=INITIAL, max_s=CAP)
        assert peer is not None
        states.append(peer.state(3))
    assert states == ["failing", "failing", "down"]


@pytest.mark.anyio
async def test_a_failure_of_a_removed_peer_records_nothing(conn: asyncpg.Connection) -> None:
    pool_id = await _admitted(conn)
    await peers.remove_peer(conn, pool_id)
    assert await peers.record_failure(conn, pool_id, NOW, "x", initial_s=1, max_s=2) is None
    with pytest.raises(PeerNotFound):
        await peers.remove_peer(conn, pool_id)
    assert await conn.fetchval("SELECT count(*) FROM peers") == 0
