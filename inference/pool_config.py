"""The pool's routing policy, stored in the ``pool_config`` table and editable by the admin.

One validated document: target shares per hardware class and per worker, the model catalog,
fallback chains, the queue bound, and the sub-agent role overrides (``inference/roles.py``). It
is read at start and replaced whole by ``PUT /admin/api/pool-config``; the router uses the new
policy for the next job.
"""

from __future__ import annotations

import json
import math
from typing import Literal, Self

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, model_validator

from economy.pricing import LedgerPolicy
from inference.protocol import Hardware
from inference.roles import RoleName, RoleOverride, resolve_roles

CONFIG_KEY = "routing"

JobKind = Literal["chat", "agent", "extraction", "compaction", "red", "review"]
"""What a job is for: users' chats and sub-agents, or the hub's private work on users' data."""


def _default_min_trust() -> dict[JobKind, int]:
    return {
        "chat": 1,
        "agent": 1,
        "extraction": 2,
        "compaction": 2,
        "red": 2,
        "review": 2,
    }


class TrustPolicy(BaseModel):
    """Who may run what (docs/trust.md): the lowest worker trust level per job kind."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    min_trust: dict[JobKind, int] = Field(
        default_factory=_default_min_trust,
        description="Lowest trust level (0 new, 1 verified by canaries, 2 established, 3 granted) "
        "of a worker that may run each kind of job; kinds left out default as shown. Users may "
        "ask for more for their own chats (preferences), never less.",
    )
    established_jobs: int = Field(
        50,
        ge=1,
        description="Verified jobs (dispute window closed, no upheld dispute) after which a "
        "verified worker (1) becomes established (2).",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        for kind, level in self.min_trust.items():
            if not 0 <= level <= 3:
                raise ValueError(f"min_trust of {kind!r} must be 0–3, got {level}")
        return self

    def required(self, kind: JobKind) -> int:
        """The lowest trust level for ``kind``."""
        return self.min_trust.get(kind, _default_min_trust()[kind])


def _default_class_shares() -> dict[Hardware, float]:
    return {"gpu": 0.62, "cpu": 0.38}


class PoolConfig(BaseModel):
    """Routing policy of the pool (strict: ``"5"`` is not a number, ``false`` not a share)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    class_shares: dict[Hardware, float] = Field(
        default_factory=_default_class_shares,
        description="Target share of work per hardware class; sums to 1.",
    )
    worker_shares: dict[str, float] = Field(
        default_factory=dict,
        description="Fixed target shares of named workers, taken out of their class's share.",
    )
    catalog: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Models workers may serve; '*' allows any. Others are excluded.",
    )
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per model, the models to try in order when it has no free worker.",
    )
    queue_wait_s: float = Field(
        10.0,
        ge=0,
        le=600,
        description="Wait for a worker of the model before trying its fallbacks; also how long "
        "a model with no connected worker waits for one to return before a degraded answer.",
    )
    max_queue_wait_s: float = Field(
        300.0,
        ge=0,
        le=3600,
        description="Longest wait in the queue while the model's workers are alive but busy; a "
        "job whose predicted wait is longer gets 429 `pool_busy` with Retry-After.",
    )
    default_expected_tokens: int = Field(
        256, gt=0, description="Tokens charged for a job that sets no max_tokens."
    )
    roles: dict[RoleName, RoleOverride] = Field(
        default_factory=dict,
        description="Sub-agent roles: changes to the built-in ones, or new ones (docs/agents.md).",
    )
    trust: TrustPolicy = Field(
        default_factory=TrustPolicy, description="Worker trust required per job kind."
    )
    trial_model: str | None = Field(
        "smollm2-135m-instruct",
        min_length=1,
        max_length=200,
        description="The model anyone may try on the web trial chat (/chat) without an account, "
        "within its quotas; none closes the trial chat to visitors (signed-in users still chat).",
    )
    ledger: LedgerPolicy = Field(
        default_factory=LedgerPolicy,
        description="Prices, the worker's share, the trial grant, holds (docs/economy.md).",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        for name, share in [*self.class_shares.items(), *self.worker_shares.items()]:
            if not (0.0 <= share <= 1.0) or math.isnan(share):
                raise ValueError(f"share of {name!r} must be between 0 and 1, got {share}")
        if self.class_shares and abs(sum(self.class_shares.values()) - 1.0) > 1e-6:
            raise ValueError(
                f"class_shares must sum to 1, got {sum(self.class_shares.values()):.4f}"
            )
        if sum(self.worker_shares.values()) > 1.0 + 1e-6:
            raise ValueError("worker_shares must not sum to more than 1")
        if not self.catalog or any(not m.strip() for m in self.catalog):
            raise ValueError("catalog must list models (or '*'), without empty names")
        for model, chain in self.fallbacks.items():
            if model in chain:
                raise ValueError(f"the fallback chain of {model!r} must not contain itself")
            if len(set(chain)) != len(chain):
                raise ValueError(f"the fallback chain of {model!r} repeats a model")
        resolve_roles(self.roles)
        return self

    def allows(self, model: str) -> bool:
        """Whether the catalog admits this model."""
        return "*" in self.catalog or model in self.catalog

    def knows(self, model: str) -> bool:
        """Whether the pool has a policy for this model (explicit catalog entry or fallbacks)."""
        return model in self.catalog or model in self.fallbacks


async def load_pool_config(conn: asyncpg.Connection) -> PoolConfig:
    """Read the stored policy, or the defaults when none is stored."""
    raw = await conn.fetchval("SELECT value FROM pool_config WHERE key = $1", CONFIG_KEY)
    return PoolConfig.model_validate(json.loads(raw)) if raw is not None else PoolConfig()


async def save_pool_config(conn: asyncpg.Connection, config: PoolConfig) -> None:
    """Store the policy (replacing the previous one)."""
    await conn.execute(
        "INSERT INTO pool_config (key, value, updated_at) VALUES ($1, $2::jsonb, now()) "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        CONFIG_KEY,
        config.model_dump_json(),
    )
