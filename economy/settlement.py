"""Settlement: release workers' earnings once the dispute window closed, and close periods.

A job's post credits the worker's share to its unsettled earnings (``worker_earnings``). A
settlement run releases, one transaction each (so a kill -9 loses nothing and repeats nothing),
every such earning whose post is older than the policy's dispute window, not settled yet, not
refunded, with no open or upheld dispute on its job, and whose worker the caller still trusts
(the hub reads ``workers.trust`` ≥ 1: earnings are released only after canaries pass). Each is a
``settle`` transfer ``settle:<job>`` from the worker's earnings to its owner's account. The
dispute and trust checks run after the earnings account is locked, so a dispute opened, a refund
or a slash of the same worker either happened before (and is seen) or waits.

Then, once ``settlement_period_s`` has passed since the last period, the run closes a period:
every posted entry after the previous period's last one, summed per account into a statement
(opening balance, debits, credits, closing balance) in ``ledger_statements``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Self
from uuid import UUID

import asyncpg

from economy.errors import NotSettleable
from economy.ledger import Ledger
from economy.transfers import Transfer

TrustCheck = Callable[[asyncpg.Connection, UUID], Awaitable[bool]]
"""Whether a worker's earnings may be released now (run inside the settle transaction)."""

_PERIOD_LOCK = 0x1A3171E5E771E
"""Advisory lock key: one period closes at a time."""

_DUE = """
SELECT p.* FROM ledger_transfers p
WHERE p.kind = 'post' AND p.request ? 'worker_id' AND p.created_at <= $1
  AND (p.created_at, p.id) > ($2, $3)
  AND NOT EXISTS (SELECT 1 FROM ledger_transfers s WHERE s.kind = 'settle' AND s.job_id = p.job_id)
  AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.reverses_id = p.id)
  AND NOT EXISTS (SELECT 1 FROM disputes d WHERE d.job_id = p.job_id
                  AND d.status IN ('open', 'upheld'))
ORDER BY p.created_at, p.id LIMIT $4
"""

_HELD_BY_DISPUTE = "SELECT 1 FROM disputes WHERE job_id = $1 AND status IN ('open', 'upheld')"

_STATEMENTS = """
INSERT INTO ledger_statements (period_id, account_id, opening, debits, credits, closing)
SELECT $1, m.account_id, m.opening, m.debits, m.credits, m.opening + m.credits - m.debits
FROM (
    SELECT e.account_id,
           coalesce((SELECT b.balance_after FROM revenue_ledger b
                     WHERE b.account_id = e.account_id AND b.id <= $2
                     ORDER BY b.id DESC LIMIT 1), 0) AS opening,
           coalesce(sum(e.amount) FILTER (WHERE e.side = 'debit'), 0) AS debits,
           coalesce(sum(e.amount) FILTER (WHERE e.side = 'credit'), 0) AS credits
    FROM revenue_ledger e
    WHERE e.id > $2 AND e.id <= $3 AND e.phase = 'posted'
    GROUP BY e.account_id
) m
"""

_SETTLED_IN = """
SELECT count(*) AS jobs, coalesce(sum(e.amount), 0)::bigint AS amount
FROM revenue_ledger e JOIN ledger_transfers t ON t.id = e.transfer_id
WHERE t.kind = 'settle' AND e.side = 'credit' AND e.id > $1 AND e.id <= $2
"""


@dataclass
class WorkerSettlement:
    """What one run released for one worker."""

    worker_id: UUID
    owner_id: UUID
    jobs: int = 0
    amount: int = 0


@dataclass(frozen=True)
class Period:
    """A closed settlement period: entries after ``after_entry_id`` through ``through_entry_id``."""

    id: int
    after_entry_id: int
    through_entry_id: int
    settled_jobs: int
    settled_amount: int
    closed_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Self:
        """Build from a ``ledger_periods`` row."""
        return cls(
            row["id"],
            row["after_entry_id"],
            row["through_entry_id"],
            row["settled_jobs"],
            row["settled_amount"],
            row["closed_at"],
        )


@dataclass(frozen=True)
class PeriodStatement:
    """One account's posted movements in one period."""

    account: str
    opening: int
    debits: int
    credits: int
    closing: int


@dataclass
class SettlementSummary:
    """What a settlement run did: earnings released per worker, earnings held, the period."""

    workers: dict[UUID, WorkerSettlement] = field(default_factory=dict)
    held: int = 0
    """Due earnings left unsettled: their worker is not trusted (yet, or any more)."""
    period: Period | None = None

    @property
    def jobs(self) -> int:
        """Earnings settled in this run."""
        return sum(w.jobs for w in self.workers.values())

    @property
    def amount(self) -> int:
        """Micro-credits settled in this run."""
        return sum(w.amount for w in self.workers.values())

    def counts(self) -> dict[UUID, int]:
        """Settled jobs per worker (what verified-job counting needs)."""
        return {worker_id: w.jobs for worker_id, w in self.workers.items()}

    def as_dict(self) -> dict[str, Any]:
        """The summary as a job run records it."""
        return {
            "settled_jobs": self.jobs,
            "settled_amount": self.amount,
            "held": self.held,
            "workers": [
                {
                    "worker_id": str(w.worker_id),
                    "owner_id": str(w.owner_id),
                    "jobs": w.jobs,
                    "amount": w.amount,
                }
                for w in self.workers.values()
            ],
            "period_id": None if self.period is None else self.period.id,
        }


async def settle_due(
    conn: asyncpg.Connection,
    ledger: Ledger,
    trusted: TrustCheck,
    *,
    batch: int = 500,
    summary: SettlementSummary | None = None,
) -> SettlementSummary:
    """Settle every earning whose dispute window has closed (see the module docstring).

    Call it outside a transaction: each earning is its own. Running it twice settles nothing twice.
    """
    summary = summary or SettlementSummary()
    cutoff = ledger.now() - timedelta(seconds=ledger.policy.dispute_window_s)
    after: tuple[datetime, int] = (datetime.min.replace(tzinfo=cutoff.tzinfo), 0)
    while rows := await conn.fetch(_DUE, cutoff, *after, batch):
        for row in rows:
            post = Transfer.from_row(row)
            verdict, settled = await _settle_one(conn, ledger, trusted, post)
            if verdict is False:
                summary.held += 1
            if not verdict or settled is None:
                continue
            worker_id, owner_id = (
                UUID(post.request["worker_id"]),
                UUID(post.request["worker_owner"]),
            )
            entry = summary.workers.setdefault(worker_id, WorkerSettlement(worker_id, owner_id))
            entry.jobs += 1
            entry.amount += settled.amount
        last = rows[-1]
        after = (last["created_at"], last["id"])
    return summary


async def _settle_one(
    conn: asyncpg.Connection, ledger: Ledger, trusted: TrustCheck, post: Transfer
) -> tuple[bool | None, Transfer | None]:
    """Settle one earning; say whether this call did (True), held it (False) or found it done.

    ``allow`` runs only after the lock and the recheck, so its verdict is None when another run
    settled the earning first or a refund got there first.
    """
    worker_id = UUID(post.request["worker_id"])
    verdict: bool | None = None

    async def allow(locked: asyncpg.Connection) -> bool:
        nonlocal verdict
        # A dispute opened between the query and the lock holds the earning too.
        held = bool(await locked.fetchval(_HELD_BY_DISPUTE, post.job_id))
        verdict = not held and await trusted(locked, worker_id)
        return verdict

    try:
        settled = await ledger.settle(conn, post, allow=allow)
    except NotSettleable:
        return None, None  # refunded (a slash, a reversal) between the query and the lock
    return verdict, settled


async def last_period(conn: asyncpg.Connection) -> Period | None:
    """The newest closed period, if any."""
    row = await conn.fetchrow("SELECT * FROM ledger_periods ORDER BY id DESC LIMIT 1")
    return None if row is None else Period.from_row(row)


async def close_period(conn: asyncpg.Connection, ledger: Ledger) -> Period | None:
    """Close a period when one is due and entries were written since the last; else None.

    The period's last entry is read under a brief SHARE lock on the entries, so every entry up
    to it has committed (no statement misses a late commit); the statements are written after.
    Call it outside a transaction.
    """
    now = ledger.now()
    period_s = timedelta(seconds=ledger.policy.settlement_period_s)
    previous = await last_period(conn)
    if previous is not None and previous.closed_at + period_s > now:
        return None
    async with conn.transaction():
        await conn.execute("LOCK TABLE revenue_ledger IN SHARE MODE")
        through = await conn.fetchval("SELECT coalesce(max(id), 0) FROM revenue_ledger")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _PERIOD_LOCK)
        previous = await last_period(conn)
        if previous is not None and previous.closed_at + period_s > now:
            return None
        after = 0 if previous is None else previous.through_entry_id
        if through <= after:
            return None
        settled = await conn.fetchrow(_SETTLED_IN, after, through)
        row = await conn.fetchrow(
            "INSERT INTO ledger_periods (after_entry_id, through_entry_id, settled_jobs, "
            "settled_amount, closed_at) VALUES ($1, $2, $3, $4, $5) RETURNING *",
            after,
            through,
            settled["jobs"],
            settled["amount"],
            now,
        )
        await conn.execute(_STATEMENTS, row["id"], after, through)
    return Period.from_row(row)


async def run_settlement(
    conn: asyncpg.Connection, ledger: Ledger, trusted: TrustCheck, *, batch: int = 500
) -> SettlementSummary:
    """One settlement run: settle what is due, then close a period if one is due."""
    summary = await settle_due(conn, ledger, trusted, batch=batch)
    summary.period = await close_period(conn, ledger)
    return summary


async def period_statements(conn: asyncpg.Connection, period_id: int) -> list[PeriodStatement]:
    """Every account's statement of one period, in account order."""
    rows = await conn.fetch(
        "SELECT a.kind, a.ref, s.opening, s.debits, s.credits, s.closing "
        "FROM ledger_statements s JOIN ledger_accounts a ON a.id = s.account_id "
        "WHERE s.period_id = $1 ORDER BY a.id",
        period_id,
    )
    return [
        PeriodStatement(
            f"{r['kind']}:{r['ref']}" if r["ref"] else r["kind"],
            r["opening"],
            r["debits"],
            r["credits"],
            r["closing"],
        )
        for r in rows
    ]
