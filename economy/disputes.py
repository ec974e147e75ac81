"""Disputes: a user's (or the admin's) claim that a charged job was bad, and its resolution.

A job is found by its id in the ledger: its hold names the user, its post the worker and owner.
A user may dispute only their own job (another's reads as not found, never revealed), while its
dispute window is open and its earning unsettled; the admin may dispute any unsettled job. One
dispute per job. While it is open, settlement leaves the job's earning alone. Resolved:

- **upheld**: the worker is slashed (economy/slashing.py): the disputed job and every other
  unsettled earning of the worker refunded, the penalty taken from its owner; the caller resets
  the worker's trust in the same transaction (the hub does);
- **rejected**: the earning settles at the next settlement run like any other.

Opening locks the worker's earnings account, as settlement and slashing do, so a dispute and a
settlement of the same job cannot both happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Self
from uuid import UUID

import asyncpg

from economy.accounts import AccountKey, lock_accounts
from economy.errors import (
    DisputeNotFound,
    DisputeRefused,
    InvalidLedgerInput,
    JobNotFound,
)
from economy.ledger import Ledger
from economy.slashing import SlashingEvent, slash
from economy.transfers import TransferKind, check_job_id, find_transfer, job_key

TEXT_MAX = 2_000


class DisputeStatus(StrEnum):
    """Where a dispute stands."""

    OPEN = "open"
    UPHELD = "upheld"
    REJECTED = "rejected"


class Decision(StrEnum):
    """What the admin decided."""

    UPHELD = "upheld"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Dispute:
    """One dispute, as stored."""

    id: int
    job_id: str
    post_id: int
    user_id: UUID
    worker_id: UUID
    owner_id: UUID
    opened_by: str
    reason: str
    status: DisputeStatus
    note: str
    slashing_event_id: int | None
    created_at: datetime
    resolved_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Self:
        """Build from a ``disputes`` row."""
        return cls(
            id=row["id"],
            job_id=row["job_id"],
            post_id=row["post_id"],
            user_id=row["user_id"],
            worker_id=row["worker_id"],
            owner_id=row["owner_id"],
            opened_by=row["opened_by"],
            reason=row["reason"],
            status=DisputeStatus(row["status"]),
            note=row["note"],
            slashing_event_id=row["slashing_event_id"],
            created_at=row["created_at"],
            resolved_at=row["resolved_at"],
        )

    def as_dict(self, *, admin: bool) -> dict[str, Any]:
        """The dispute as the API shows it (a user does not see the worker or its owner)."""
        shown: dict[str, Any] = {
            "id": self.id,
            "job_id": self.job_id,
            "reason": self.reason,
            "status": self.status.value,
            "note": self.note,
            "opened_by": self.opened_by,
            "created_at": self.created_at.isoformat(),
            "resolved_at": None if self.resolved_at is None else self.resolved_at.isoformat(),
        }
        if admin:
            shown |= {
                "user_id": str(self.user_id),
                "worker_id": str(self.worker_id),
                "owner_id": str(self.owner_id),
                "slashing_event_id": self.slashing_event_id,
            }
        return shown


def check_text(text: str, param: str, *, required: bool) -> str:
    """Refuse a reason or note that is empty (when required), too long, or holds NUL."""
    if not isinstance(text, str) or len(text) > TEXT_MAX or "\x00" in text:
        raise InvalidLedgerInput(f"{param} is text of at most {TEXT_MAX} characters.", param=param)
    if required and not text.strip():
        raise InvalidLedgerInput(f"A dispute needs a {param}.", param=param)
    return text


async def open_dispute(
    conn: asyncpg.Connection,
    ledger: Ledger,
    job_id: str,
    reason: str,
    *,
    user_id: UUID | None,
) -> Dispute:
    """Open a dispute on a charged job: its user's, within the window; the admin's, any time.

    ``user_id`` None is the admin, who may dispute any job whose earning is not settled.
    Raises :class:`JobNotFound` (no such job, or not the user's), :class:`DisputeRefused` (not
    charged, already disputed, window closed, settled or refunded), :class:`InvalidLedgerInput`.
    """
    check_job_id(job_id)
    check_text(reason, "reason", required=True)
    hold = await find_transfer(conn, job_key(TransferKind.HOLD, job_id))
    if hold is None or (user_id is not None and hold.request.get("user") != str(user_id)):
        raise JobNotFound(f"No job {job_id} of yours.", param="job_id")
    if "user" not in hold.request:
        raise DisputeRefused(
            f"Job {job_id} was served for a peer pool: its disputes are between the pools.",
            param="job_id",
        )
    post = await find_transfer(conn, job_key(TransferKind.POST, job_id))
    if post is None:
        raise DisputeRefused(f"Job {job_id} was not charged.", param="job_id")
    if "worker_id" not in post.request:
        raise DisputeRefused(f"Job {job_id}'s earning was settled at posting.", param="job_id")
    worker_id = UUID(post.request["worker_id"])
    async with conn.transaction():
        await lock_accounts(conn, [AccountKey.worker_earnings(worker_id)], create=True)
        now = ledger.now()
        if await conn.fetchval("SELECT 1 FROM disputes WHERE job_id = $1", job_id):
            raise DisputeRefused(f"Job {job_id} is disputed already.", param="job_id")
        if await find_transfer(conn, job_key(TransferKind.SETTLE, job_id)) is not None:
            raise DisputeRefused(f"Job {job_id}'s earning was settled.", param="job_id")
        if await conn.fetchval("SELECT 1 FROM ledger_transfers WHERE reverses_id = $1", post.id):
            raise DisputeRefused(f"Job {job_id} was refunded.", param="job_id")
        window = timedelta(seconds=ledger.policy.dispute_window_s)
        if user_id is not None and post.created_at + window <= now:
            raise DisputeRefused(f"Job {job_id}'s dispute window has closed.", param="job_id")
        try:
            async with conn.transaction():
                row = await conn.fetchrow(
                    "INSERT INTO disputes (job_id, post_id, user_id, worker_id, owner_id, "
                    "opened_by, reason, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                    "RETURNING *",
                    job_id,
                    post.id,
                    UUID(hold.request["user"]),
                    worker_id,
                    UUID(post.request["worker_owner"]),
                    "user" if user_id is not None else "admin",
                    reason,
                    now,
                )
        except asyncpg.UniqueViolationError as exc:
            raise DisputeRefused(f"Job {job_id} is disputed already.", param="job_id") from exc
    return Dispute.from_row(row)


async def get_dispute(conn: asyncpg.Connection, dispute_id: int) -> Dispute:
    """One dispute by id; raises :class:`DisputeNotFound`."""
    row = await conn.fetchrow("SELECT * FROM disputes WHERE id = $1", dispute_id)
    if row is None:
        raise DisputeNotFound(f"No dispute {dispute_id}.", param="id")
    return Dispute.from_row(row)


async def resolve_dispute(
    conn: asyncpg.Connection, ledger: Ledger, dispute_id: int, decision: Decision, note: str
) -> tuple[Dispute, SlashingEvent | None]:
    """Uphold (slash the worker, refunding the job) or reject (release the earning) a dispute.

    The same decision again returns the dispute as resolved; another raises
    :class:`DisputeRefused`. Upholding uses the policy's ``slash_penalty`` and the slash key
    ``dispute-<id>``; the caller resets the worker's trust in the same transaction.
    """
    check_text(note, "note", required=False)
    async with conn.transaction():
        row = await conn.fetchrow("SELECT * FROM disputes WHERE id = $1 FOR UPDATE", dispute_id)
        if row is None:
            raise DisputeNotFound(f"No dispute {dispute_id}.", param="id")
        dispute = Dispute.from_row(row)
        if dispute.status is not DisputeStatus.OPEN:
            if dispute.status.value != decision.value:
                raise DisputeRefused(
                    f"Dispute {dispute_id} was {dispute.status.value} already.", param="decision"
                )
            return dispute, None
        event = None
        if decision is Decision.UPHELD:
            evidence = {"dispute_id": dispute.id, "job_id": dispute.job_id}
            evidence |= {"reason": dispute.reason, "note": note}
            event = await slash(
                conn,
                ledger,
                dispute.worker_id,
                dispute.owner_id,
                f"dispute {dispute.id} upheld",
                evidence,
                ledger.policy.slash_penalty,
                key=f"dispute-{dispute.id}",
            )
        row = await conn.fetchrow(
            "UPDATE disputes SET status = $2, note = $3, resolved_at = now(), "
            "slashing_event_id = $4 WHERE id = $1 RETURNING *",
            dispute_id,
            decision.value,
            note,
            None if event is None else event.id,
        )
    return Dispute.from_row(row), event


async def list_disputes(
    conn: asyncpg.Connection,
    *,
    user_id: UUID | None = None,
    status: DisputeStatus | None = None,
    limit: int = 50,
    before: int | None = None,
) -> list[Dispute]:
    """Disputes, newest first, of one user or all; ``before`` (a dispute id) pages back."""
    rows = await conn.fetch(
        "SELECT * FROM disputes WHERE ($1::uuid IS NULL OR user_id = $1) "
        "AND ($2::text IS NULL OR status = $2) AND ($3::bigint IS NULL OR id < $3) "
        "ORDER BY id DESC LIMIT $4",
        user_id,
        None if status is None else status.value,
        before,
        limit,
    )
    return [Dispute.from_row(row) for row in rows]
