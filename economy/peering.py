"""The books between this pool and a peer pool: chats served for it, chats forwarded to it.

A chat a peer forwarded here is held and posted on the peer's ``peer_pool`` account (the hold
names it as ``payer_peer``); a chat this pool forwarded to a peer is posted from its user to the
peer's account (the post names it as ``payee_peer``). Both pools key the chat on the origin's
job id, so one pool's "served for you" list and the other's "forwarded to you" list describe the
same chats: :func:`reconcile` compares them job by job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from economy.accounts import AccountKey
from economy.errors import InvalidLedgerInput

MAX_LINES = 10_000
"""Most chats one statement lists (a longer window is asked for in parts)."""

_SERVED = """
SELECT p.job_id, p.amount, p.created_at FROM ledger_transfers p
JOIN ledger_transfers h ON h.id = p.pending_id
WHERE p.kind = 'post' AND h.request->>'payer_peer' = $1 AND p.created_at >= $2
ORDER BY p.id LIMIT $3
"""

_FORWARDED = """
SELECT job_id, amount, created_at FROM ledger_transfers
WHERE kind = 'post' AND request->>'payee_peer' = $1 AND created_at >= $2
ORDER BY id LIMIT $3
"""


@dataclass(frozen=True)
class PeerJob:
    """One chat between the two pools and the micro-credits it was posted for."""

    job: str
    amount: int
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        """The line as a statement carries it."""
        return {"job": self.job, "amount": self.amount, "at": self.at.isoformat()}


async def _lines(conn: asyncpg.Connection, sql: str, peer: str, since: datetime) -> list[PeerJob]:
    AccountKey.peer_pool(peer)  # refuses a malformed peer name
    rows = await conn.fetch(sql, peer, since, MAX_LINES)
    return [PeerJob(r["job_id"], r["amount"], r["created_at"]) for r in rows]


async def served_for(conn: asyncpg.Connection, peer: str, since: datetime) -> list[PeerJob]:
    """Chats this pool served for ``peer`` (charged to its account) posted since ``since``."""
    return await _lines(conn, _SERVED, peer, since)


async def forwarded_to(conn: asyncpg.Connection, peer: str, since: datetime) -> list[PeerJob]:
    """Chats this pool forwarded to ``peer`` (owed to its account) posted since ``since``."""
    return await _lines(conn, _FORWARDED, peer, since)


@dataclass
class Reconciliation:
    """One direction of the books: this pool's lines against the peer's, job by job."""

    ours: int = 0
    theirs: int = 0
    jobs: int = 0
    only_ours: list[str] = field(default_factory=list)
    only_theirs: list[str] = field(default_factory=list)
    differ: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        """Whether both sides list the same chats for the same amounts."""
        return not (self.only_ours or self.only_theirs or self.differ)

    def as_dict(self) -> dict[str, Any]:
        """The comparison as the admin API shows it."""
        return {
            "ours": self.ours,
            "theirs": self.theirs,
            "jobs": self.jobs,
            "balanced": self.balanced,
            "only_ours": self.only_ours,
            "only_theirs": self.only_theirs,
            "differ": self.differ,
        }


def reconcile(ours: list[PeerJob], theirs: list[PeerJob]) -> Reconciliation:
    """Compare two lists of the same chats (totals, and which ones are missing or differ)."""
    mine = {line.job: line.amount for line in ours}
    other = {line.job: line.amount for line in theirs}
    return Reconciliation(
        ours=sum(mine.values()),
        theirs=sum(other.values()),
        jobs=len(mine.keys() & other.keys()),
        only_ours=sorted(mine.keys() - other.keys()),
        only_theirs=sorted(other.keys() - mine.keys()),
        differ=sorted(job for job in mine.keys() & other.keys() if mine[job] != other[job]),
    )


def parse_lines(data: Any) -> list[PeerJob]:
    """A peer's statement lines; :class:`InvalidLedgerInput` when they are malformed."""
    if not isinstance(data, list) or len(data) > MAX_LINES:
        raise InvalidLedgerInput("A statement's lines must be a list.", param="statement")
    try:
        return [
            PeerJob(str(d["job"]), int(d["amount"]), datetime.fromisoformat(d["at"])) for d in data
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidLedgerInput(f"Malformed statement line: {exc}", param="statement") from None
