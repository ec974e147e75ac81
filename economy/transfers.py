"""Transfers and their entries: writing one (double entry, balances after) and reading them back.

A transfer is a header (``ledger_transfers``) and its entries (``revenue_ledger``), written in
the caller's transaction after :func:`economy.accounts.lock_accounts` locked every account they
touch. Nothing here updates or deletes a transfer: a correction is a new transfer.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

import asyncpg

from economy.accounts import Account, AccountKey, AccountKind, Phase, Side
from economy.errors import IdempotencyConflict, InvalidLedgerInput

_KEY = re.compile(r"^[A-Za-z0-9_.:@-]{1,200}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class TransferKind(StrEnum):
    """What a transfer does."""

    HOLD = "hold"
    POST = "post"
    VOID = "void"
    EXPIRE = "expire"
    GRANT = "grant"
    MINT = "mint"
    CORRECTION = "correction"
    REVERSAL = "reversal"
    SETTLE = "settle"
    SLASH = "slash"


JOB_KINDS = (TransferKind.HOLD, TransferKind.POST, TransferKind.VOID, TransferKind.EXPIRE)
RESERVED_PREFIXES = (
    *(f"{kind.value}:" for kind in (*JOB_KINDS, TransferKind.SETTLE, TransferKind.SLASH)),
    "trial:",
    "refund:",
)


def check_key(key: str) -> str:
    """Refuse a malformed idempotency key."""
    if not _KEY.match(key):
        raise InvalidLedgerInput(f"Invalid transfer key {key!r}.", param="key")
    return key


def check_job_id(job_id: str) -> str:
    """Refuse a malformed job id (letters, digits, ``_.-``; at most 128)."""
    if not _JOB_ID.match(job_id):
        raise InvalidLedgerInput(f"Invalid job id {job_id!r}.", param="job_id")
    return job_id


def check_amount(amount: int, param: str = "amount") -> int:
    """Refuse a negative (or non-integer) amount of micro-credits."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise InvalidLedgerInput(
            f"Amounts are whole, non-negative micro-credits, not {amount!r}.", param=param
        )
    return amount


def job_key(kind: TransferKind, job_id: str) -> str:
    """The idempotency key of a job's hold, post, void, expiry or settlement."""
    return f"{kind.value}:{check_job_id(job_id)}"


@dataclass(frozen=True)
class Leg:
    """One entry to write: ``amount`` is negative only to release a pending amount."""

    account: AccountKey
    side: Side
    phase: Phase
    amount: int


@dataclass(frozen=True)
class NewTransfer:
    """A transfer before it is written."""

    key: str
    kind: TransferKind
    legs: Sequence[Leg]
    amount: int
    request: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    pending_id: int | None = None
    reverses_id: int | None = None
    funded: bool | None = None
    expires_at: datetime | None = None
    memo: str = ""
    holds: AccountKey | None = None
    """For a hold: the account it reserves on (entered in the open-hold index)."""


@dataclass(frozen=True)
class Transfer:
    """A written transfer (its entries are read apart, by :func:`entries_of`)."""

    id: int
    key: str
    kind: TransferKind
    amount: int
    request: dict[str, Any]
    job_id: str | None
    pending_id: int | None
    reverses_id: int | None
    funded: bool | None
    expires_at: datetime | None
    memo: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Self:
        """Build from a ``ledger_transfers`` row."""
        return cls(
            id=row["id"],
            key=row["key"],
            kind=TransferKind(row["kind"]),
            amount=row["amount"],
            request=json.loads(row["request"]),
            job_id=row["job_id"],
            pending_id=row["pending_id"],
            reverses_id=row["reverses_id"],
            funded=row["funded"],
            expires_at=row["expires_at"],
            memo=row["memo"],
            created_at=row["created_at"],
        )


def same_request(existing: Transfer, kind: TransferKind, request: dict[str, Any]) -> Transfer:
    """Return the first transfer of a key when the request matches; a different one conflicts."""
    if existing.kind is not kind or existing.request != request:
        raise IdempotencyConflict(
            f"Key {existing.key} was used for another request ({existing.kind.value} "
            f"{existing.request}); the first one stands.",
            param="key",
        )
    return existing


async def find_transfer(conn: asyncpg.Connection, key: str) -> Transfer | None:
    """The transfer with this key, if any."""
    row = await conn.fetchrow("SELECT * FROM ledger_transfers WHERE key = $1", key)
    return None if row is None else Transfer.from_row(row)


async def transfer_by_id(conn: asyncpg.Connection, transfer_id: int) -> Transfer | None:
    """The transfer with this id, if any."""
    row = await conn.fetchrow("SELECT * FROM ledger_transfers WHERE id = $1", transfer_id)
    return None if row is None else Transfer.from_row(row)


async def resolution_of(conn: asyncpg.Connection, hold_id: int) -> Transfer | None:
    """The post, void or expiry that resolved a hold, if any."""
    row = await conn.fetchrow("SELECT * FROM ledger_transfers WHERE pending_id = $1", hold_id)
    return None if row is None else Transfer.from_row(row)


async def entries_of(conn: asyncpg.Connection, transfer_id: int) -> list[tuple[Leg, int]]:
    """A transfer's entries as legs with their account ids, in the order written."""
    rows = await conn.fetch(
        "SELECT a.id AS account_id, a.kind, a.ref, e.side, e.phase, e.amount "
        "FROM revenue_ledger e JOIN ledger_accounts a ON a.id = e.account_id "
        "WHERE e.transfer_id = $1 ORDER BY e.id",
        transfer_id,
    )
    return [
        (
            Leg(
                AccountKey(AccountKind(r["kind"]), r["ref"]),
                Side(r["side"]),
                Phase(r["phase"]),
                r["amount"],
            ),
            r["account_id"],
        )
        for r in rows
    ]


_WRITE = """
WITH t AS (
    INSERT INTO ledger_transfers (key, kind, job_id, pending_id, reverses_id, amount, funded,
                                  expires_at, request, memo, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11) RETURNING *
), entries AS (
    INSERT INTO revenue_ledger (transfer_id, account_id, side, phase, amount, balance_after,
                                pending_after, created_at)
    SELECT t.id, e.account_id, e.side, e.phase, e.amount, e.balance_after, e.pending_after, $11
    FROM t, unnest($12::bigint[], $13::text[], $14::text[], $15::bigint[], $16::bigint[],
                   $17::bigint[]) WITH ORDINALITY
         AS e(account_id, side, phase, amount, balance_after, pending_after, n)
    ORDER BY e.n
), totals AS (
    UPDATE ledger_accounts a
    SET debits_posted = u.dp, credits_posted = u.cp, debits_pending = u.dq, credits_pending = u.cq
    FROM unnest($18::bigint[], $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[])
         AS u(id, dp, cp, dq, cq)
    WHERE a.id = u.id
), open_hold AS (
    INSERT INTO ledger_open_holds (transfer_id, account_id, amount, expires_at)
    SELECT t.id, $23, t.amount, t.expires_at FROM t WHERE $23::bigint IS NOT NULL
)
SELECT * FROM t
"""

Entry = tuple[int, str, str, int, int, int]
"""An entry to write: account id, side, phase, amount, the account's balance and pending after."""


def _apply(
    accounts: dict[AccountKey, Account], new: NewTransfer, touched: dict[int, Account]
) -> list[Entry]:
    """Apply ``new``'s legs to ``accounts`` (zero legs skipped), noting each account it changed
    in ``touched``; return its entries with the balances after each."""
    entries: list[Entry] = []
    for leg in new.legs:
        if leg.amount == 0:
            continue
        account = accounts[leg.account]
        account.apply(leg.side, leg.phase, leg.amount)
        touched[account.id] = account
        entries.append(
            (
                account.id,
                leg.side.value,
                leg.phase.value,
                leg.amount,
                account.balance,
                account.pending,
            )
        )
    return entries


def _header(new: NewTransfer, now: datetime) -> tuple[object, ...]:
    """A transfer's own columns, in the order both statements take them (its id aside)."""
    return (
        new.key,
        new.kind.value,
        new.job_id,
        new.pending_id,
        new.reverses_id,
        new.amount,
        new.funded,
        new.expires_at,
        json.dumps(new.request),
        new.memo,
        now,
    )


def _totals(touched: dict[int, Account]) -> list[list[int]]:
    """The new totals of the accounts changed, as the statements' five arrays."""
    changed = list(touched.values())
    return [
        [a.id for a in changed],
        [a.debits_posted for a in changed],
        [a.credits_posted for a in changed],
        [a.debits_pending for a in changed],
        [a.credits_pending for a in changed],
    ]


async def write_transfer(
    conn: asyncpg.Connection, accounts: dict[AccountKey, Account], new: NewTransfer, now: datetime
) -> Transfer:
    """Write a transfer, its entries and the new account totals in one statement.

    ``accounts`` must be locked by the caller's transaction. Zero legs are skipped; a hold also
    enters the open-hold index. The database checks at commit that the entries sum to zero per
    phase.
    """
    touched: dict[int, Account] = {}
    entries = _apply(accounts, new, touched)
    columns = list(zip(*entries, strict=True)) if entries else [()] * 6
    row = await conn.fetchrow(
        _WRITE,
        *_header(new, now),
        *(list(column) for column in columns),
        *_totals(touched),
        None if new.holds is None else accounts[new.holds].id,
    )
    return Transfer.from_row(row)


class TransferIds:
    """Transfer ids taken from the transfers' identity ahead of their insert, a block at a time.

    A batched transfer is answered before it is written (a post names its hold's id), so its id
    is taken first. One pool per database (the ledger keeps it): the ids are that sequence's.
    An id taken and never used (a rolled-back group, a stopped hub) is a gap in the ids, as a
    rolled-back insert leaves one; transfer ids say nothing about order in time.
    """

    def __init__(self, block: int = 256) -> None:
        self._block = block
        self._ids: deque[int] = deque()

    async def take(self, conn: asyncpg.Connection) -> int:
        """The next id (a round trip for a new block when none is left)."""
        if not self._ids:
            self._ids.extend(
                await conn.fetchval(
                    "SELECT array_agg(n ORDER BY n) FROM (SELECT nextval(pg_get_serial_sequence("
                    "'ledger_transfers', 'id')) AS n FROM generate_series(1, $1)) AS ids",
                    self._block,
                )
            )
        return self._ids.popleft()


_WRITE_BATCH = """
WITH t AS (
    INSERT INTO ledger_transfers (id, key, kind, job_id, pending_id, reverses_id, amount, funded,
                                  expires_at, request, memo, created_at)
    OVERRIDING SYSTEM VALUE
    SELECT t.id, t.key, t.kind, t.job_id, t.pending_id, t.reverses_id, t.amount, t.funded,
           t.expires_at, t.request::jsonb, t.memo, t.created_at
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                $7::bigint[], $8::boolean[], $9::timestamptz[], $10::text[], $11::text[],
                $12::timestamptz[])
         AS t(id, key, kind, job_id, pending_id, reverses_id, amount, funded, expires_at,
              request, memo, created_at)
    RETURNING id
), entries AS (
    INSERT INTO revenue_ledger (transfer_id, account_id, side, phase, amount, balance_after,
                                pending_after, created_at)
    SELECT e.transfer_id, e.account_id, e.side, e.phase, e.amount, e.balance_after,
           e.pending_after, e.created_at
    FROM unnest($13::bigint[], $14::bigint[], $15::text[], $16::text[], $17::bigint[],
                $18::bigint[], $19::bigint[], $20::timestamptz[]) WITH ORDINALITY
         AS e(transfer_id, account_id, side, phase, amount, balance_after, pending_after,
              created_at, n)
    ORDER BY e.n
), totals AS (
    UPDATE ledger_accounts a
    SET debits_posted = u.dp, credits_posted = u.cp, debits_pending = u.dq, credits_pending = u.cq
    FROM unnest($21::bigint[], $22::bigint[], $23::bigint[], $24::bigint[], $25::bigint[])
         AS u(id, dp, cp, dq, cq)
    WHERE a.id = u.id
)
SELECT count(*) FROM t
"""


class TransferBatch:
    """The transfers of one transaction, written in one statement when it is about to commit.

    :meth:`add` applies a transfer to the locked accounts in memory and answers it as it will
    be written (its id taken from :class:`TransferIds`); :meth:`flush` writes them all, with
    their entries in the order added and each touched account's final totals once, in one
    statement: one round trip for a ledger group, and each hot account (clearing,
    pool fee) updated once per group instead of once per transfer. Nothing in the transaction
    may read a batched transfer back before the flush; what the database checks (unique keys,
    one resolution per hold, balanced entries, foreign keys) it checks at the flush.
    """

    def __init__(self, ids: TransferIds) -> None:
        self._ids = ids
        self._transfers: list[tuple[object, ...]] = []
        self._entries: list[tuple[object, ...]] = []
        self._touched: dict[int, Account] = {}

    async def add(
        self,
        conn: asyncpg.Connection,
        accounts: dict[AccountKey, Account],
        new: NewTransfer,
        now: datetime,
    ) -> Transfer:
        """Queue ``new`` (its legs applied to ``accounts`` now) and return it as it will be.

        A hold that would enter the open-hold index is refused: a batch's holds end in its own
        transaction, so they never enter it.
        """
        if new.holds is not None:
            raise ValueError(f"{new.key} would stay open: a batch writes no open hold")
        transfer_id = await self._ids.take(conn)
        for entry in _apply(accounts, new, self._touched):
            self._entries.append((transfer_id, *entry, now))
        self._transfers.append((transfer_id, *_header(new, now)))
        return Transfer(
            id=transfer_id,
            key=new.key,
            kind=new.kind,
            amount=new.amount,
            request=new.request,
            job_id=new.job_id,
            pending_id=new.pending_id,
            reverses_id=new.reverses_id,
            funded=new.funded,
            expires_at=new.expires_at,
            memo=new.memo,
            created_at=now,
        )

    async def flush(self, conn: asyncpg.Connection) -> None:
        """Write the queued transfers, their entries and the accounts' totals; then start empty."""
        if not self._transfers:
            return
        transfers = _columns(self._transfers, 12)
        entries = _columns(self._entries, 8)
        totals = _totals(self._touched)
        self._transfers, self._entries, self._touched = [], [], {}
        await conn.execute(_WRITE_BATCH, *transfers, *entries, *totals)


def _columns(rows: list[tuple[object, ...]], width: int) -> list[list[object]]:
    """Rows as ``width`` column lists (the arrays a statement unnests)."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width
