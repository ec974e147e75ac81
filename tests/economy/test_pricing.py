"""The ledger's policy: prices per model, rounding, and the worker/pool split."""

from __future__ import annotations

import pytest

from economy.errors import InvalidLedgerInput
from economy.pricing import LedgerPolicy, ModelPrice, Usage
from tests.economy.conftest import POLICY


def test_cost_is_priced_per_thousand_tokens_and_rounded_up() -> None:
    assert POLICY.cost(Usage("small", 1_000, 500)) == 1_000 + 1_000
    assert POLICY.cost(Usage("small", 1, 0)) == 1
    assert POLICY.cost(Usage("small", 0, 0)) == 0


def test_a_model_price_overrides_the_default() -> None:
    assert POLICY.cost(Usage("big", 1_000, 1_000)) == 16_000


def test_the_pool_fee_takes_the_rounding_of_the_split() -> None:
    assert POLICY.split(1_000) == (900, 100)
    assert POLICY.split(7) == (6, 1)
    worker, fee = POLICY.split(12_345)
    assert worker + fee == 12_345


def test_expected_cost_holds_the_prompt_and_the_most_tokens_the_job_may_write() -> None:
    assert POLICY.expected_cost("small", 2_000, 1_000) == 4_000


def test_negative_token_counts_are_refused() -> None:
    with pytest.raises(InvalidLedgerInput):
        Usage("small", -1, 0)


def test_a_worker_share_above_the_whole_is_refused() -> None:
    with pytest.raises(ValueError, match="worker_share_bps"):
        LedgerPolicy(worker_share_bps=10_001)


def test_negative_prices_are_refused() -> None:
    with pytest.raises(ValueError, match="prompt_per_1k"):
        ModelPrice(prompt_per_1k=-1, completion_per_1k=0)
