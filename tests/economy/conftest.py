"""Fixtures of the ledger tests: a fake clock and a ledger on the test's fresh database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from economy.ledger import Ledger
from economy.pricing import LedgerPolicy, ModelPrice

START = datetime(2026, 1, 1, tzinfo=UTC)

POLICY = LedgerPolicy(
    default_price=ModelPrice(prompt_per_1k=1_000, completion_per_1k=2_000),
    prices={"big": ModelPrice(prompt_per_1k=7_000, completion_per_1k=9_000)},
    worker_share_bps=9_000,
    trial_grant=50_000,
    overdraft=0,
    hold_ttl_s=600,
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
