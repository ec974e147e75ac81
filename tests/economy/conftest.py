"""Fixtures of the ledger tests: a fake clock and a ledger on the test's fresh database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import pytest

from economy.ledger import Ledger
from economy.pricing import LedgerPolicy, ModelPrice, Usage
from economy.transfers import Transfer

START = datetime(2026, 1, 1, tzinfo=UTC)

POLICY = LedgerPolicy(
    default_price=ModelPrice(prompt_per_1k=1_000, completion_per_1k=2_000),
    prices={"big": ModelPrice(prompt_per_1k=7_000, completion_per_1k=9_000)},
    worker_share_bps=9_000,
    trial_grant=50_000,
    overdraft=0,
    hold_ttl_s=600,
    dispute_window_s=3_600,
    settlement_period_s=7_200,
    slash_penalty=10_000,
)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at ``START``."""
    return FakeClock()


@pytest.fixture
def ledger(clock: FakeClock) -> Ledger:
    """The ledger under the test policy and the fake clock."""
    return Ledger(POLICY, clock)


SMALL_JOB = Usage("small", 1_000, 500)
"""Costs 2,000: 1,800 to the worker's share, 200 to the pool fee."""


async def charge(
    conn: asyncpg.Connection,
    ledger: Ledger,
    job_id: str,
    user: UUID,
    worker: UUID | None,
    owner: UUID,
    usage: Usage = SMALL_JOB,
) -> Transfer:
    """Hold and post one job (2,000 by default: 1,800 to the worker's share, 200 pool fee)."""
    await ledger.hold(conn, job_id, user, 5_000)
    return await ledger.post(conn, job_id, usage, owner, worker_id=worker)


class Trust:
    """Worker trust levels as settlement reads them (the hub reads ``workers.trust``)."""

    def __init__(self, levels: dict[UUID, int] | None = None) -> None:
        self.levels = dict(levels or {})

    async def __call__(self, conn: asyncpg.Connection, worker_id: UUID) -> bool:
        return self.levels.get(worker_id, 0) >= 1
