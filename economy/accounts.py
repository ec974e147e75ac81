"""Ledger accounts: who they belong to, their posted and pending totals, and locking them.

Balances are credit-normal: ``balance = credits_posted - debits_posted``. A user's money is a
positive balance; the pool treasury (the mint) and the trial grant account go negative by what
they issued, so the balances of all accounts always sum to zero.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Self
from uuid import UUID

import asyncpg

from economy.errors import AccountNotFound, InvalidLedgerInput


class AccountKind(StrEnum):
    """What an account is for."""

    USER = "user"
    WORKER_OWNER = "worker_owner"
    WORKER_EARNINGS = "worker_earnings"
    POOL_FEE = "pool_fee"
    POOL_TREASURY = "pool_treasury"
    TRIAL_GRANT = "trial_grant"
    PEER_POOL = "peer_pool"
    CLEARING = "clearing"


OWNED_KINDS = frozenset(
    {AccountKind.USER, AccountKind.WORKER_OWNER, AccountKind.WORKER_EARNINGS, AccountKind.PEER_POOL}
)
_PEER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Side(StrEnum):
    """Which column of an account an entry goes to."""

    DEBIT = "debit"
    CREDIT = "credit"


class Phase(StrEnum):
    """Pending (a hold) or posted (money moved)."""

    PENDING = "pending"
    POSTED = "posted"


@dataclass(frozen=True, order=True)
class AccountKey:
    """An account's identity: its kind and owner (``ref``, empty for the pool's own accounts)."""

    kind: AccountKind
    ref: str = ""

    def __post_init__(self) -> None:
        if (self.kind in OWNED_KINDS) != bool(self.ref):
            raise InvalidLedgerInput(
                f"A {self.kind.value} account needs an owner, the pool's own accounts none.",
                param="account",
            )

    @classmethod
    def user(cls, user_id: UUID) -> Self:
        """The account a user spends from."""
        return cls(AccountKind.USER, str(user_id))

    @classmethod
    def worker_owner(cls, user_id: UUID) -> Self:
        """The account a user's workers earn into."""
        return cls(AccountKind.WORKER_OWNER, str(user_id))

    @classmethod
    def worker_earnings(cls, worker_id: UUID) -> Self:
        """A worker's unsettled earnings (ref: the worker record's id), until settlement."""
        return cls(AccountKind.WORKER_EARNINGS, str(worker_id))

    @classmethod
    def peer_pool(cls, name: str) -> Self:
        """The account of a federated peer pool."""
        if not _PEER_NAME.match(name):
            raise InvalidLedgerInput(f"Invalid peer pool name {name!r}.", param="account")
        return cls(AccountKind.PEER_POOL, name)

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.ref}" if self.ref else self.kind.value


CLEARING = AccountKey(AccountKind.CLEARING)
POOL_FEE = AccountKey(AccountKind.POOL_FEE)
POOL_TREASURY = AccountKey(AccountKind.POOL_TREASURY)
TRIAL_GRANT = AccountKey(AccountKind.TRIAL_GRANT)


@dataclass
class Account:
    """An account's totals; mutable only inside the transaction that holds its lock."""

    id: int
    key: AccountKey
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Self:
        """Build from a ``ledger_accounts`` row."""
        return cls(
            id=row["id"],
            key=AccountKey(AccountKind(row["kind"]), row["ref"]),
            debits_posted=row["debits_posted"],
            credits_posted=row["credits_posted"],
            debits_pending=row["debits_pending"],
            credits_pending=row["credits_pending"],
        )

    @property
    def balance(self) -> int:
        """Posted balance: credits minus debits."""
        return self.credits_posted - self.debits_posted

    @property
    def pending(self) -> int:
        """Pending balance: pending credits minus pending debits (negative while held)."""
        return self.credits_pending - self.debits_pending

    @property
    def available(self) -> int:
        """What may still be spent: the posted balance less what holds reserve."""
        return self.balance - self.debits_pending

    def apply(self, side: Side, phase: Phase, amount: int) -> None:
        """Add one entry to the totals (``amount`` is negative for a pending release)."""
        if phase is Phase.POSTED and side is Side.DEBIT:
            self.debits_posted += amount
        elif phase is Phase.POSTED:
            self.credits_posted += amount
        elif side is Side.DEBIT:
            self.debits_pending += amount
        else:
            self.credits_pending += amount


_COLUMNS = "id, kind, ref, debits_posted, credits_posted, debits_pending, credits_pending"


async def lock_accounts(
    conn: asyncpg.Connection, keys: Iterable[AccountKey], *, create: bool
) -> dict[AccountKey, Account]:
    """Lock accounts in id order (no deadlocks) in the caller's transaction; open owned ones.

    With ``create``, missing owned accounts (user, worker owner, worker earnings, peer) are opened
    first (in key order, so concurrent openers cannot deadlock either); without it a missing one
    is refused before any account is locked.
    """
    wanted = sorted(set(keys))
    kinds = [k.kind.value for k in wanted]
    refs = [k.ref for k in wanted]
    if create and any(k.kind in OWNED_KINDS for k in wanted):
        await conn.execute(
            "INSERT INTO ledger_accounts (kind, ref) SELECT * FROM unnest($1::text[], $2::text[]) "
            "ORDER BY 1, 2 ON CONFLICT DO NOTHING",
            kinds,
            refs,
        )
    # Lock only when every account exists: a refused call holds no lock, so a caller that then
    # opens the missing one (Ledger._lock) never inserts while holding locks out of order.
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM ledger_accounts WHERE (kind, ref) IN "  # noqa: S608
        "(SELECT * FROM unnest($1::text[], $2::text[])) AND (SELECT count(*) FROM ledger_accounts "
        "WHERE (kind, ref) IN (SELECT * FROM unnest($1::text[], $2::text[]))) = cardinality($1) "
        "ORDER BY id FOR UPDATE",
        kinds,
        refs,
    )
    found = {account.key: account for account in map(Account.from_row, rows)}
    for key in wanted:
        if key not in found:
            raise AccountNotFound(f"No ledger account {key}.", param="account")
    return found


async def get_account(conn: asyncpg.Connection, key: AccountKey) -> Account:
    """Read one account's totals (not locked)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM ledger_accounts WHERE kind = $1 AND ref = $2",  # noqa: S608
        key.kind.value,
        key.ref,
    )
    if row is None:
        raise AccountNotFound(f"No ledger account {key}.", param="account")
    return Account.from_row(row)


async def all_accounts(conn: asyncpg.Connection) -> list[Account]:
    """Every account, oldest first."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM ledger_accounts ORDER BY id")  # noqa: S608
    return [Account.from_row(row) for row in rows]


@dataclass(frozen=True)
class Balance:
    """An account as a reader sees it at ``now``: expired holds read as voided."""

    account: AccountKey
    balance: int
    pending_debits: int
    pending_credits: int

    @property
    def available(self) -> int:
        """Posted balance less what live holds reserve."""
        return self.balance - self.pending_debits


async def read_balance(conn: asyncpg.Connection, key: AccountKey, now: datetime) -> Balance:
    """An account's balance at ``now``, counting holds that expired unswept as voided."""
    account = await get_account(conn, key)
    expired = await conn.fetchval(
        "SELECT coalesce(sum(amount), 0)::bigint FROM ledger_open_holds "
        "WHERE account_id = $1 AND expires_at <= $2",
        account.id,
        now,
    )
    pending_credits = account.credits_pending
    if key == CLEARING:
        pending_credits -= await conn.fetchval(
            "SELECT coalesce(sum(amount), 0)::bigint FROM ledger_open_holds WHERE expires_at <= $1",
            now,
        )
    return Balance(key, account.balance, account.debits_pending - expired, pending_credits)


@dataclass(frozen=True)
class StatementLine:
    """One entry of an account, with the transfer it belongs to."""

    entry_id: int
    transfer_key: str
    kind: str
    side: Side
    phase: Phase
    amount: int
    balance_after: int
    pending_after: int
    created_at: datetime
    memo: str


async def statement(
    conn: asyncpg.Connection, key: AccountKey, *, limit: int = 50, before: int | None = None
) -> list[StatementLine]:
    """An account's entries, newest first; ``before`` (an entry id) pages back."""
    account = await get_account(conn, key)
    rows = await conn.fetch(
        "SELECT e.id, t.key, t.kind, e.side, e.phase, e.amount, e.balance_after, "
        "e.pending_after, e.created_at, t.memo FROM revenue_ledger e "
        "JOIN ledger_transfers t ON t.id = e.transfer_id "
        "WHERE e.account_id = $1 AND ($2::bigint IS NULL OR e.id < $2) ORDER BY e.id DESC LIMIT $3",
        account.id,
        before,
        limit,
    )
    return [
        StatementLine(
            entry_id=r["id"],
            transfer_key=r["key"],
            kind=r["kind"],
            side=Side(r["side"]),
            phase=Phase(r["phase"]),
            amount=r["amount"],
            balance_after=r["balance_after"],
            pending_after=r["pending_after"],
            created_at=r["created_at"],
            memo=r["memo"],
        )
        for r in rows
    ]
