"""The ledger's policy: prices, the worker's share, the trial grant, holds, overdraft, settlement.

Everything is in integer micro-credits (``MICRO`` of them make one ``$IAMINE``) so that sums are
exact. The pool config (``inference/pool_config.py``) carries one as ``PoolConfig.ledger``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from economy.errors import InvalidLedgerInput

MICRO = 1_000_000
"""Micro-credits in one $IAMINE."""

BPS = 10_000
"""Basis points in a whole."""


class ModelPrice(BaseModel):
    """What 1,000 tokens of one model cost, in micro-credits, prompt and completion apart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_per_1k: int = Field(ge=0, description="Micro-credits per 1,000 prompt tokens.")
    completion_per_1k: int = Field(ge=0, description="Micro-credits per 1,000 completion tokens.")


@dataclass(frozen=True)
class Usage:
    """The tokens one job used, as the hub counted them."""

    model: str
    prompt_tokens: int
    completion_tokens: int

    def __post_init__(self) -> None:
        if not self.model:
            raise InvalidLedgerInput("A usage needs a model.", param="model")
        if self.prompt_tokens < 0 or self.completion_tokens < 0:
            raise InvalidLedgerInput("Token counts cannot be negative.", param="usage")

    def as_request(self) -> dict[str, str | int]:
        """The usage as stored with the posting (and compared on a retry)."""
        return {
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


class LedgerPolicy(BaseModel):
    """Prices, the worker's share, the trial grant, holds, overdraft, settlement and slashing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_price: ModelPrice = Field(
        default_factory=lambda: ModelPrice(prompt_per_1k=1_000, completion_per_1k=2_000),
        description="Price of a model that `prices` does not name.",
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict, description="Price per model id, overriding `default_price`."
    )
    worker_share_bps: int = Field(
        9_000,
        ge=0,
        le=BPS,
        description="Basis points of a job's cost the worker's owner earns; the rest is the pool "
        "fee (the fee takes the rounding).",
    )
    trial_grant: int = Field(
        10 * MICRO, ge=0, description="Micro-credits a new user is granted, once."
    )
    overdraft: int = Field(
        0,
        ge=0,
        description="Micro-credits a user's available balance may go below zero and a hold still "
        "count as funded; past it holds are recorded unfunded (served at the lowest priority, "
        "never refused).",
    )
    hold_ttl_s: int = Field(
        3_600,
        ge=1,
        description="Seconds a hold lives; an expired hold reads as voided and cannot be posted, "
        "so it must outlast the longest job.",
    )

    dispute_window_s: int = Field(
        86_400,
        ge=0,
        description="Seconds after a job's posting during which its user may dispute it; its "
        "earning is settled to the worker's owner only once this window has closed.",
    )
    settlement_period_s: int = Field(
        86_400,
        ge=60,
        description="Seconds a settlement period lasts: a settlement run closes one (writes every "
        "active account's statement) once this long has passed since the last.",
    )
    slash_penalty: int = Field(
        MICRO,
        ge=0,
        description="Micro-credits a slash takes from the worker owner's account to the pool "
        "treasury, beside forfeiting the worker's unsettled earnings (the account may go "
        "negative: the owner's debt).",
    )

    def price(self, model: str) -> ModelPrice:
        """The price of ``model``."""
        return self.prices.get(model, self.default_price)

    def cost(self, usage: Usage) -> int:
        """Micro-credits a job's usage costs (rounded up: a started thousandth is due)."""
        price = self.price(usage.model)
        raw = usage.prompt_tokens * price.prompt_per_1k
        raw += usage.completion_tokens * price.completion_per_1k
        return _ceil_div(raw, 1_000)

    def expected_cost(self, model: str, prompt_tokens: int, max_tokens: int) -> int:
        """What to hold at placement: the prompt and the most tokens the job may write."""
        return self.cost(Usage(model, prompt_tokens, max_tokens))

    def split(self, cost: int) -> tuple[int, int]:
        """Split a cost into (the worker owner's share, the pool fee)."""
        if cost < 0:
            raise InvalidLedgerInput("A cost cannot be negative.", param="cost")
        worker = cost * self.worker_share_bps // BPS
        return worker, cost - worker
