"""Slashing: a caught worker forfeits its unsettled earnings and its owner pays a penalty.

A slash, in one transaction: every post of the worker whose earning is not settled yet is
refunded (``refund:<job>``: the user repaid, the earning and the pool fee taken back), the penalty
moves from the owner's ``worker_owner`` account to the pool treasury (``slash:<key>``; the account
may go negative, which is the owner's debt, or stake), and a ``slashing_events`` row keeps the
reason and the evidence. Idempotent by the caller's key: the same key again returns the first
event. Resetting the worker's trust is the caller's part (the hub does it in the same transaction).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self
from uuid import UUID

import asyncpg

from economy.accounts import POOL_FEE, POOL_TREASURY, AccountKey, lock_accounts
from economy.errors import IdempotencyConflict, InvalidLedgerInput
from economy.ledger import Ledger
from economy.transfers import check_key

_KEY_MAX = 190
_TRIES = 4


@dataclass(frozen=True)
class SlashingEvent:
    """One slash as recorded: what was forfeited, the penalty, and the transfers that did it."""

    id: int
    key: str
    worker_id: UUID
    owner_id: UUID
    reason: str
    evidence: dict[str, Any]
    amount: int
    forfeited: int
    penalty_transfer_id: int | None
    reversal_ids: tuple[int, ...]
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Self:
        """Build from a ``slashing_events`` row."""
        return cls(
            id=row["id"],
            key=row["key"],
            worker_id=row["worker_id"],
            owner_id=row["owner_id"],
            reason=row["reason"],
            evidence=json.loads(row["evidence"]),
            amount=row["amount"],
            forfeited=row["forfeited"],
            penalty_transfer_id=row["penalty_transfer_id"],
            reversal_ids=tuple(row["reversal_ids"]),
            created_at=row["created_at"],
        )

    def as_dict(self) -> dict[str, Any]:
        """The event as the admin API shows it."""
        return {
            "id": self.id,
            "key": self.key,
            "worker_id": str(self.worker_id),
            "owner_id": str(self.owner_id),
            "reason": self.reason,
            "evidence": self.evidence,
            "penalty": self.amount,
            "forfeited": self.forfeited,
            "penalty_transfer_id": self.penalty_transfer_id,
            "reversal_ids": list(self.reversal_ids),
            "created_at": self.created_at.isoformat(),
        }


_UNSETTLED = """
SELECT p.job_id, h.request->>'user' AS user_id
FROM ledger_transfers p JOIN ledger_transfers h ON h.id = p.pending_id
WHERE p.kind = 'post' AND p.request->>'worker_id' = $1
  AND NOT EXISTS (SELECT 1 FROM ledger_transfers s WHERE s.kind = 'settle' AND s.job_id = p.job_id)
  AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.reverses_id = p.id)
ORDER BY p.id
"""


def _check(key: str, reason: str, penalty: int, evidence: dict[str, Any]) -> str:
    """Refuse bad input before any lock; return the evidence as JSON."""
    if len(check_key(key)) > _KEY_MAX:
        raise InvalidLedgerInput(f"A slash key has at most {_KEY_MAX} characters.", param="key")
    if not reason.strip() or len(reason) > 500 or "\x00" in reason:
        raise InvalidLedgerInput("A slash needs a reason (1 to 500 characters).", param="reason")
    if isinstance(penalty, bool) or not isinstance(penalty, int) or penalty < 0:
        raise InvalidLedgerInput("A penalty is whole, non-negative micro-credits.", param="penalty")
    try:
        text = json.dumps(evidence)
    except (TypeError, ValueError) as exc:
        raise InvalidLedgerInput("Evidence must be a JSON object.", param="evidence") from exc
    if not isinstance(evidence, dict) or "\\u0000" in text:
        raise InvalidLedgerInput("Evidence is a JSON object without NUL.", param="evidence")
    return text


async def find_event(conn: asyncpg.Connection, key: str) -> SlashingEvent | None:
    """The slash recorded under ``key``, if any."""
    row = await conn.fetchrow("SELECT * FROM slashing_events WHERE key = $1", key)
    return None if row is None else SlashingEvent.from_row(row)


def _same(event: SlashingEvent, worker_id: UUID, owner_id: UUID) -> SlashingEvent:
    if (event.worker_id, event.owner_id) != (worker_id, owner_id):
        raise IdempotencyConflict(
            f"Slash key {event.key} was used for worker {event.worker_id}; the first stands.",
            param="key",
        )
    return event


async def slash(
    conn: asyncpg.Connection,
    ledger: Ledger,
    worker_id: UUID,
    owner_id: UUID,
    reason: str,
    evidence: dict[str, Any],
    penalty: int,
    *,
    key: str,
) -> SlashingEvent:
    """Forfeit a worker's unsettled earnings and take ``penalty`` from its owner; once per key.

    All of it is one transaction (a savepoint when the caller already has one, so the hub can
    reset trust beside it). Every account it touches is locked up front, in id order, as every
    ledger operation does, so it cannot deadlock with them: when a job of a user not locked was
    posted for the worker before the lock, it rolls back and starts again (the last try locks
    that user late instead, and a deadlock then, which PostgreSQL breaks, is retried).
    """
    text = _check(key, reason, penalty, evidence)
    for attempt in range(_TRIES):
        if (done := await find_event(conn, key)) is not None:
            return _same(done, worker_id, owner_id)
        last = attempt == _TRIES - 1
        try:
            return await _slash_once(
                conn, ledger, worker_id, owner_id, reason, text, penalty, key, strict=not last
            )
        except asyncpg.UniqueViolationError:
            if (done := await find_event(conn, key)) is None:
                raise
            return _same(done, worker_id, owner_id)
        except (_Relock, asyncpg.DeadlockDetectedError):
            if last:
                raise
    raise AssertionError("unreachable")


class _Relock(Exception):
    """A post of a user not locked committed before the lock: roll back and lock again."""


async def _slash_once(
    conn: asyncpg.Connection,
    ledger: Ledger,
    worker_id: UUID,
    owner_id: UUID,
    reason: str,
    evidence: str,
    penalty: int,
    key: str,
    *,
    strict: bool,
) -> SlashingEvent:
    earnings = AccountKey.worker_earnings(worker_id)
    owner = AccountKey.worker_owner(owner_id)
    async with conn.transaction():
        posts = await conn.fetch(_UNSETTLED, str(worker_id))
        users = {AccountKey.user(UUID(row["user_id"])) for row in posts}
        await lock_accounts(conn, [owner, POOL_TREASURY, earnings, POOL_FEE, *users], create=True)
        # Posts that committed before the lock are seen now; settled or refunded ones are gone.
        # No new post of the worker can commit while its earnings account is locked.
        posts = await conn.fetch(_UNSETTLED, str(worker_id))
        if strict and any(AccountKey.user(UUID(row["user_id"])) not in users for row in posts):
            raise _Relock
        memo = f"slash {key}: {reason}"[:200]
        reversals = [await ledger.refund(conn, row["job_id"], memo=memo) for row in posts]
        forfeited = 0
        for reversal in reversals:
            forfeited += await _earning_of(conn, reversal.id, earnings)
        penalty_id = None
        if penalty:
            penalty_id = (await ledger.penalize(conn, key, owner_id, penalty, memo=memo)).id
        row = await conn.fetchrow(
            "INSERT INTO slashing_events (key, worker_id, owner_id, reason, evidence, amount, "
            "forfeited, penalty_transfer_id, reversal_ids, created_at) "
            "VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10) RETURNING *",
            key,
            worker_id,
            owner_id,
            reason,
            evidence,
            penalty,
            forfeited,
            penalty_id,
            [r.id for r in reversals],
            ledger.now(),
        )
    return SlashingEvent.from_row(row)


async def _earning_of(conn: asyncpg.Connection, transfer_id: int, earnings: AccountKey) -> int:
    """What a reversal took back from the worker's earnings account."""
    value = await conn.fetchval(
        "SELECT coalesce(sum(e.amount), 0)::bigint FROM revenue_ledger e "
        "JOIN ledger_accounts a ON a.id = e.account_id "
        "WHERE e.transfer_id = $1 AND a.kind = $2 AND a.ref = $3",
        transfer_id,
        earnings.kind.value,
        earnings.ref,
    )
    return int(value)


async def list_events(
    conn: asyncpg.Connection,
    *,
    worker_id: UUID | None = None,
    limit: int = 50,
    before: int | None = None,
) -> list[SlashingEvent]:
    """Slashing events, newest first; ``before`` (an event id) pages back."""
    rows = await conn.fetch(
        "SELECT * FROM slashing_events WHERE ($1::uuid IS NULL OR worker_id = $1) "
        "AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        worker_id,
        before,
        limit,
    )
    return [SlashingEvent.from_row(row) for row in rows]
