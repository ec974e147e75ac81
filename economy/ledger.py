"""The ledger's operations: a job's hold, post, void, settle, refund; grants, fixes, penalties.

Every operation is one PostgreSQL transaction that locks the accounts it touches in id order,
writes a transfer and its entries, and updates the accounts' totals. Every operation is
idempotent by key: the job id for a job's hold, post, void, settlement and refund
(``hold:<job>``, ``post:<job>``, ``void:<job>``, ``settle:<job>``, ``refund:<job>``), the caller's
key otherwise. The same request again returns the first transfer;
another request under a used key raises :class:`IdempotencyConflict`. So retries, failover and a
restart after a crash can call again safely: a transaction either happened whole or not at all.

A job is a two-phase transfer. :meth:`Ledger.hold` reserves the expected cost (pending: the
user's debit, the clearing account's credit); :meth:`Ledger.post` releases it and posts the
actual cost, user → the worker's share + pool fee; :meth:`Ledger.void` releases it. The share
goes to the worker's unsettled earnings when the caller names the worker (settlement releases it
to the owner), else straight to the owner. A hold past its ``expires_at`` reads as voided: it
cannot be posted, balances no longer count it, and the next sweep (:meth:`Ledger.expire_holds`,
or the user's next hold) records its expiry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

import asyncpg

from economy.accounts import (
    CLEARING,
    POOL_FEE,
    POOL_TREASURY,
    TRIAL_GRANT,
    Account,
    AccountKey,
    AccountKind,
    Balance,
    Phase,
    Side,
    lock_accounts,
    read_balance,
)
from economy.errors import (
    AccountNotFound,
    HoldExpired,
    HoldNotFound,
    HoldResolved,
    InvalidLedgerInput,
    NotReversible,
    NotSettleable,
    TransferNotFound,
)
from economy.pricing import LedgerPolicy, Usage
from economy.transfers import (
    RESERVED_PREFIXES,
    Leg,
    NewTransfer,
    Transfer,
    TransferBatch,
    TransferIds,
    TransferKind,
    check_amount,
    check_key,
    entries_of,
    find_transfer,
    job_key,
    resolution_of,
    same_request,
    transfer_by_id,
    write_transfer,
)


@dataclass
class _Shared:
    """A transaction that jobs' operations join: :meth:`Ledger.hold_then`'s or a group's.

    Holds written in it never enter the open-hold index: each is posted or voided in the same
    transaction (``hold_then`` checks), so the index insert and the ending's delete are skipped.
    """

    conn: asyncpg.Connection
    batch: TransferBatch
    """Its transfers, written in one statement just before it commits."""
    holds: dict[str, Transfer] = field(default_factory=dict)
    """Holds written in it, by job id: the post or void that follows needs not read them back."""
    accounts: dict[AccountKey, Account] = field(default_factory=dict)
    """Accounts locked in it, their totals kept current by each write: locked once, not again."""
    ended: set[str] = field(default_factory=set)
    """Jobs whose hold written in it was posted or voided in it."""


_shared: ContextVar[_Shared | None] = ContextVar("ledger_shared", default=None)


def _joined(conn: asyncpg.Connection) -> _Shared | None:
    """The shared transaction this connection is in, if any."""
    shared = _shared.get()
    return shared if shared is not None and shared.conn is conn else None


async def _write(
    conn: asyncpg.Connection, accounts: dict[AccountKey, Account], new: NewTransfer, now: datetime
) -> Transfer:
    """Write a transfer now, or in a shared transaction queue it for the commit (its batch)."""
    shared = _joined(conn)
    if shared is None:
        return await write_transfer(conn, accounts, new, now)
    return await shared.batch.add(conn, accounts, new, now)


def _transaction(conn: asyncpg.Connection) -> AbstractAsyncContextManager[object]:
    """A job operation's own transaction, or none when it joins :meth:`Ledger.hold_then`'s."""
    return nullcontext() if _joined(conn) is not None else conn.transaction()


Clock = Callable[[], datetime]
Guard = Callable[[asyncpg.Connection], Awaitable[bool]]
"""A check run inside a ledger transaction, after its locks: False refuses the operation."""


class HoldState(StrEnum):
    """Where a job's hold stands."""

    OPEN = "open"
    POSTED = "posted"
    VOIDED = "voided"
    EXPIRED = "expired"


def _release(user: AccountKey, amount: int) -> list[Leg]:
    return [
        Leg(user, Side.DEBIT, Phase.PENDING, -amount),
        Leg(CLEARING, Side.CREDIT, Phase.PENDING, -amount),
    ]


def _user_of(hold: Transfer) -> AccountKey:
    """Who a hold reserves on: a user, or a peer pool whose forwarded job this pool serves."""
    if "payer_peer" in hold.request:
        return AccountKey.peer_pool(hold.request["payer_peer"])
    return AccountKey(AccountKind.USER, hold.request["user"])


def _payer(payer: UUID | AccountKey) -> tuple[AccountKey, dict[str, Any]]:
    """The account a hold reserves on and how its request names it."""
    if isinstance(payer, UUID):
        return AccountKey.user(payer), {"user": str(payer)}
    if payer.kind is not AccountKind.PEER_POOL:
        raise InvalidLedgerInput("Only users and peer pools pay for jobs.", param="account")
    return payer, {"payer_peer": payer.ref}


def _not_earnings(*accounts: AccountKey) -> None:
    """Unsettled earnings move only by a post, its settlement or its refund (verify checks it)."""
    if any(a.kind is AccountKind.WORKER_EARNINGS for a in accounts):
        raise InvalidLedgerInput(
            "A worker's unsettled earnings move only by settlement or refund.", param="account"
        )


def _caller_key(key: str) -> str:
    check_key(key)
    if key.startswith(RESERVED_PREFIXES):
        raise InvalidLedgerInput(
            f"Keys starting {key.split(':')[0]}: are the ledger's.", param="key"
        )
    return key


class Ledger:
    """The ledger under one policy and one clock; every method takes the connection to use."""

    def __init__(self, policy: LedgerPolicy, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        # Accounts seen opened: never deleted, so a hit skips the opening insert.
        self._opened: set[AccountKey] = set()
        # Ids for the transfers of shared transactions (one database per ledger, as above).
        self._ids = TransferIds()

    def now(self) -> datetime:
        """The ledger's clock now (settlement windows and disputes read it too)."""
        return self._clock()

    @asynccontextmanager
    async def group_transaction(self, conn: asyncpg.Connection) -> AsyncIterator[None]:
        """One transaction that several jobs' :meth:`hold_then` calls join: a group commit.

        Each job's transfers are the ones it would write alone; the group commits once, locks
        each account once (the clearing and fee accounts every job touches, a worker's earnings
        shared by its jobs) and writes its transfers in one statement just before the commit
        (:class:`~economy.transfers.TransferBatch`: each account's totals once, not once per
        transfer). Any failure rolls the whole group back: the caller applies its jobs one by
        one then, so one bad job cannot cost the others their transfers.
        """
        shared = _Shared(conn, TransferBatch(self._ids))
        marked = _shared.set(shared)
        try:
            async with conn.transaction():
                yield
                await shared.batch.flush(conn)
        finally:
            _shared.reset(marked)

    async def _lock(
        self, conn: asyncpg.Connection, keys: list[AccountKey], *, create: bool
    ) -> dict[AccountKey, Account]:
        """Lock accounts in id order, opening missing ones when ``create`` (see lock_accounts).

        In a shared transaction, accounts it locked already are not locked again: their
        totals in memory are current (every write there updated them).
        """
        shared = _joined(conn)
        if shared is None:
            return await self._lock_now(conn, keys, create=create)
        missing = [key for key in keys if key not in shared.accounts]
        if missing:
            shared.accounts.update(await self._lock_now(conn, missing, create=create))
        return {key: shared.accounts[key] for key in keys}

    async def _lock_now(
        self, conn: asyncpg.Connection, keys: list[AccountKey], *, create: bool
    ) -> dict[AccountKey, Account]:
        if create and self._opened.issuperset(keys):
            try:
                return await lock_accounts(conn, keys, create=False)
            except AccountNotFound:
                # Seen in a transaction that rolled back after all: open it for real.
                self._opened.difference_update(keys)
        accounts = await lock_accounts(conn, keys, create=create)
        self._opened.update(keys)
        return accounts

    async def _idempotent[T: (Transfer, Transfer | None)](
        self,
        conn: asyncpg.Connection,
        key: str,
        kind: TransferKind,
        request: dict[str, Any],
        attempt: Callable[[], Awaitable[T]],
    ) -> T | Transfer:
        if _joined(conn) is not None:  # inside hold_then's transaction: it recovers, not here
            return await attempt()
        try:
            return await attempt()
        except asyncpg.UniqueViolationError:
            # A concurrent call with the same key won; its transfer stands.
            existing = await find_transfer(conn, key)
            if existing is None:
                raise
            return same_request(existing, kind, request)

    async def _recheck(
        self, conn: asyncpg.Connection, key: str, kind: TransferKind, request: dict[str, Any]
    ) -> Transfer | None:
        existing = await find_transfer(conn, key)
        return None if existing is None else same_request(existing, kind, request)

    async def hold(
        self,
        conn: asyncpg.Connection,
        job_id: str,
        user_id: UUID | AccountKey,
        expected_cost: int,
    ) -> Transfer:
        """Reserve a job's expected cost on the user's account, at placement; never refuses.

        The hold is ``funded`` when the user's available balance covers it (down to the policy's
        overdraft); otherwise it is recorded all the same, unfunded, and the caller serves the job
        at the lowest priority. The post charges the actual cost either way. The payer may be a
        peer pool's account (``AccountKey.peer_pool``): a job a peer forwarded here.
        """
        key = job_key(TransferKind.HOLD, job_id)
        check_amount(expected_cost, "expected_cost")
        user, named = _payer(user_id)
        request = {**named, "expected_cost": expected_cost}

        async def attempt() -> Transfer:
            async with _transaction(conn):
                now = self._clock()
                accounts = await self._lock(conn, [user, CLEARING], create=True)
                # Joined to hold_then, an existing hold is a unique violation it recovers from.
                shared = _joined(conn)
                if shared is None:
                    done = await self._recheck(conn, key, TransferKind.HOLD, request)
                    if done is not None:
                        return done
                if accounts[user].debits_pending:  # only a reserving hold needs releasing
                    await self._sweep(conn, accounts, user, now)
                funded = accounts[user].available - expected_cost >= -self.policy.overdraft
                expires_at = now + timedelta(seconds=self.policy.hold_ttl_s)
                legs = [
                    Leg(user, Side.DEBIT, Phase.PENDING, expected_cost),
                    Leg(CLEARING, Side.CREDIT, Phase.PENDING, expected_cost),
                ]
                new = NewTransfer(
                    key,
                    TransferKind.HOLD,
                    legs,
                    expected_cost,
                    request,
                    job_id=job_id,
                    funded=funded,
                    expires_at=expires_at,
                    holds=None if shared is not None else user,
                )
                written = await _write(conn, accounts, new, now)
                if shared is not None:
                    shared.holds[job_id] = written
                return written

        return await self._idempotent(conn, key, TransferKind.HOLD, request, attempt)

    async def hold_then[T](
        self,
        conn: asyncpg.Connection,
        job_id: str,
        user_id: UUID | AccountKey,
        expected_cost: int,
        then: Callable[[], Awaitable[T]],
    ) -> tuple[Transfer, T]:
        """A job's hold and what ends it (``then``: its post or void) in one transaction.

        For a job that ended before its hold was written: one commit instead of two, the same
        transfers as :meth:`hold` then ``then()``, which must post or void the hold. Should
        either exist already (a retry after a lost answer), each is applied again on its own,
        idempotently. Inside :meth:`group_transaction` it joins the group's transaction, and a
        hold or ending that exists already fails the group (whose caller then goes job by job).
        """
        if _joined(conn) is not None:
            return await self._hold_and_end(conn, job_id, user_id, expected_cost, then)
        try:
            async with self.group_transaction(conn):  # a group of one
                return await self._hold_and_end(conn, job_id, user_id, expected_cost, then)
        except asyncpg.UniqueViolationError:
            pass
        return await self.hold(conn, job_id, user_id, expected_cost), await then()

    async def _hold_and_end[T](
        self,
        conn: asyncpg.Connection,
        job_id: str,
        user_id: UUID | AccountKey,
        expected_cost: int,
        then: Callable[[], Awaitable[T]],
    ) -> tuple[Transfer, T]:
        hold = await self.hold(conn, job_id, user_id, expected_cost)
        ended = await then()
        shared = _joined(conn)
        if shared is not None and job_id not in shared.ended:
            # Its hold skipped the open-hold index: left open, it could never be posted.
            raise ValueError(f"hold_then's ending left job {job_id}'s hold open")
        return hold, ended

    async def _hold_of(self, conn: asyncpg.Connection, job_id: str) -> Transfer:
        shared = _joined(conn)
        if shared is not None and job_id in shared.holds:
            return shared.holds[job_id]
        hold = await find_transfer(conn, job_key(TransferKind.HOLD, job_id))
        if hold is None:
            raise HoldNotFound(f"Job {job_id} has no hold.", param="job_id")
        return hold

    async def _take_open(
        self, conn: asyncpg.Connection, hold: Transfer
    ) -> tuple[datetime | None, Transfer | None]:
        """Remove the hold from the open ones; else say what resolved it.

        A hold written in the shared transaction never entered the index: it is open, and its
        ending is noted so :meth:`hold_then` knows the hold did not stay open.
        """
        shared = _joined(conn)
        job_id = hold.job_id
        if shared is not None and job_id is not None and shared.holds.get(job_id) is hold:
            shared.ended.add(job_id)
            return hold.expires_at, None
        expires_at = await conn.fetchval(
            "DELETE FROM ledger_open_holds WHERE transfer_id = $1 RETURNING expires_at", hold.id
        )
        if expires_at is not None:
            return expires_at, None
        return None, await resolution_of(conn, hold.id)

    async def post(
        self,
        conn: asyncpg.Connection,
        job_id: str,
        usage: Usage,
        worker_owner: UUID,
        *,
        worker_id: UUID | None = None,
    ) -> Transfer:
        """Charge a finished job's actual usage: user → worker's share + pool fee; once per job.

        With ``worker_id`` (the worker record that ran the job) the share goes to that worker's
        unsettled earnings, released to ``worker_owner`` by settlement once the dispute window
        closed (economy/settlement.py); without it, straight to the owner's account. The cost may
        exceed the hold (it is the real usage). Raises :class:`HoldExpired` for an expired hold
        and :class:`HoldResolved` for a voided one.
        """
        key = job_key(TransferKind.POST, job_id)
        request: dict[str, Any] = {"usage": usage.as_request(), "worker_owner": str(worker_owner)}
        if worker_id is not None:
            request["worker_id"] = str(worker_id)
        hold = await self._hold_of(conn, job_id)
        user = _user_of(hold)
        owner = (
            AccountKey.worker_owner(worker_owner)
            if worker_id is None
            else AccountKey.worker_earnings(worker_id)
        )
        cost = self.policy.cost(usage)
        worker_share, fee = self.policy.split(cost)

        async def attempt() -> Transfer:
            async with _transaction(conn):
                now = self._clock()
                accounts = await self._lock(conn, [user, CLEARING, owner, POOL_FEE], create=True)
                expires_at, resolution = await self._take_open(conn, hold)
                if resolution is not None:
                    if resolution.kind is TransferKind.POST:  # a retry, or a conflict
                        return same_request(resolution, TransferKind.POST, request)
                    if resolution.kind is TransferKind.EXPIRE:
                        raise HoldExpired(f"Job {job_id}'s hold expired.", param="job_id")
                    raise HoldResolved(
                        f"Job {job_id}'s hold was {resolution.kind.value}ed.", param="job_id"
                    )
                if expires_at is not None and expires_at <= now:
                    raise HoldExpired(f"Job {job_id}'s hold expired.", param="job_id")
                legs = [
                    *_release(user, hold.amount),
                    Leg(user, Side.DEBIT, Phase.POSTED, cost),
                    Leg(owner, Side.CREDIT, Phase.POSTED, worker_share),
                    Leg(POOL_FEE, Side.CREDIT, Phase.POSTED, fee),
                ]
                new = NewTransfer(
                    key, TransferKind.POST, legs, cost, request, job_id=job_id, pending_id=hold.id
                )
                return await _write(conn, accounts, new, now)

        return await self._idempotent(conn, key, TransferKind.POST, request, attempt)

    async def post_to_peer(
        self, conn: asyncpg.Connection, job_id: str, usage: Usage, peer: str, amount: int
    ) -> Transfer:
        """Charge a job a peer pool served: user → the peer's account, ``amount``; once per job.

        ``amount`` is what the peer bills this pool for the job (its signed receipt, bounded by
        its gossiped price): the user pays exactly that, so this pool's payable to the peer (the
        credit on ``peer_pool:<peer>``) equals the peer's charge to this pool in its own ledger.
        Raises like :meth:`post`.
        """
        key = job_key(TransferKind.POST, job_id)
        check_amount(amount)
        payee = AccountKey.peer_pool(peer)
        request = {"usage": usage.as_request(), "payee_peer": peer, "amount": amount}
        hold = await self._hold_of(conn, job_id)
        user = _user_of(hold)

        async def attempt() -> Transfer:
            async with _transaction(conn):
                now = self._clock()
                accounts = await self._lock(conn, [user, CLEARING, payee], create=True)
                expires_at, resolution = await self._take_open(conn, hold)
                if resolution is not None:
                    if resolution.kind is TransferKind.POST:
                        return same_request(resolution, TransferKind.POST, request)
                    raise HoldResolved(
                        f"Job {job_id}'s hold was {resolution.kind.value}ed.", param="job_id"
                    )
                if expires_at is not None and expires_at <= now:
                    raise HoldExpired(f"Job {job_id}'s hold expired.", param="job_id")
                legs = [
                    *_release(user, hold.amount),
                    Leg(user, Side.DEBIT, Phase.POSTED, amount),
                    Leg(payee, Side.CREDIT, Phase.POSTED, amount),
                ]
                new = NewTransfer(
                    key, TransferKind.POST, legs, amount, request, job_id=job_id, pending_id=hold.id
                )
                return await _write(conn, accounts, new, now)

        return await self._idempotent(conn, key, TransferKind.POST, request, attempt)

    async def void(self, conn: asyncpg.Connection, job_id: str, *, memo: str = "") -> Transfer:
        """Release a failed job's hold; an expired hold returns its expiry (it is voided already).

        Raises :class:`HoldResolved` for a posted job: a charge is undone by :meth:`reverse`.
        """
        key = job_key(TransferKind.VOID, job_id)
        hold = await self._hold_of(conn, job_id)
        user = _user_of(hold)

        async def attempt() -> Transfer:
            async with _transaction(conn):
                now = self._clock()
                accounts = await self._lock(conn, [user, CLEARING], create=True)
                _, resolution = await self._take_open(conn, hold)
                if resolution is not None:
                    if resolution.kind is not TransferKind.POST:  # voided or expired already
                        return resolution
                    raise HoldResolved(
                        f"Job {job_id} was posted; reverse its charge instead.", param="job_id"
                    )
                new = NewTransfer(
                    key,
                    TransferKind.VOID,
                    _release(user, hold.amount),
                    hold.amount,
                    job_id=job_id,
                    pending_id=hold.id,
                    memo=memo,
                )
                return await _write(conn, accounts, new, now)

        return await self._idempotent(conn, key, TransferKind.VOID, {}, attempt)

    async def _sweep(
        self,
        conn: asyncpg.Connection,
        accounts: dict[AccountKey, Account],
        user: AccountKey,
        now: datetime,
    ) -> int:
        """Record the expiry of the user's expired open holds (user and clearing locked)."""
        rows = await conn.fetch(
            "WITH gone AS (DELETE FROM ledger_open_holds WHERE account_id = $1 "
            "AND expires_at <= $2 RETURNING transfer_id) "
            "SELECT t.* FROM ledger_transfers t JOIN gone ON gone.transfer_id = t.id ORDER BY t.id",
            accounts[user].id,
            now,
        )
        for row in rows:
            hold = Transfer.from_row(row)
            assert hold.job_id is not None
            new = NewTransfer(
                job_key(TransferKind.EXPIRE, hold.job_id),
                TransferKind.EXPIRE,
                _release(user, hold.amount),
                hold.amount,
                job_id=hold.job_id,
                pending_id=hold.id,
            )
            await _write(conn, accounts, new, now)
        return len(rows)

    async def expire_holds(self, conn: asyncpg.Connection, *, limit: int = 500) -> int:
        """Record the expiry of every expired hold of up to ``limit`` users; return the count."""
        now = self._clock()
        refs = await conn.fetch(
            "SELECT DISTINCT a.kind, a.ref FROM ledger_open_holds o "
            "JOIN ledger_accounts a ON a.id = o.account_id WHERE o.expires_at <= $1 LIMIT $2",
            now,
            limit,
        )
        expired = 0
        for row in refs:
            user = AccountKey(AccountKind(row["kind"]), row["ref"])
            async with conn.transaction():
                accounts = await self._lock(conn, [user, CLEARING], create=False)
                expired += await self._sweep(conn, accounts, user, now)
        return expired

    async def hold_state(self, conn: asyncpg.Connection, job_id: str) -> HoldState:
        """Where a job's hold stands now (an expired, unswept hold reads as expired)."""
        hold = await self._hold_of(conn, job_id)
        resolution = await resolution_of(conn, hold.id)
        if resolution is None:
            assert hold.expires_at is not None
            return HoldState.OPEN if hold.expires_at > self._clock() else HoldState.EXPIRED
        return {
            TransferKind.POST: HoldState.POSTED,
            TransferKind.VOID: HoldState.VOIDED,
            TransferKind.EXPIRE: HoldState.EXPIRED,
        }[resolution.kind]

    async def balance(self, conn: asyncpg.Connection, account: AccountKey) -> Balance:
        """An account's balance now; holds past their expiry no longer count."""
        return await read_balance(conn, account, self._clock())

    async def _simple(
        self,
        conn: asyncpg.Connection,
        key: str,
        kind: TransferKind,
        debit: AccountKey,
        credit: AccountKey,
        amount: int,
        request: dict[str, Any],
        *,
        create: bool,
        memo: str = "",
    ) -> Transfer:
        """One posted transfer from ``debit`` to ``credit``, idempotent by key."""

        async def attempt() -> Transfer:
            async with conn.transaction():
                now = self._clock()
                accounts = await self._lock(conn, [debit, credit], create=create)
                if (done := await self._recheck(conn, key, kind, request)) is not None:
                    return done
                legs = [
                    Leg(debit, Side.DEBIT, Phase.POSTED, amount),
                    Leg(credit, Side.CREDIT, Phase.POSTED, amount),
                ]
                new = NewTransfer(key, kind, legs, amount, request, memo=memo)
                return await _write(conn, accounts, new, now)

        return await self._idempotent(conn, key, kind, request, attempt)

    async def grant_trial(self, conn: asyncpg.Connection, user_id: UUID) -> Transfer:
        """Grant a new user the policy's trial credits, once ever (trial grant → user)."""
        user = AccountKey.user(user_id)
        request = {"user": str(user_id)}
        return await self._simple(
            conn,
            f"trial:{user_id}",
            TransferKind.GRANT,
            TRIAL_GRANT,
            user,
            self.policy.trial_grant,
            request,
            create=True,
            memo="trial grant",
        )

    async def mint(
        self, conn: asyncpg.Connection, key: str, account: AccountKey, amount: int, *, memo: str
    ) -> Transfer:
        """Issue new credits from the pool treasury to an account (opened if missing)."""
        _caller_key(key)
        check_amount(amount)
        _not_earnings(account)
        request = {"account": str(account), "amount": amount}
        return await self._simple(
            conn,
            key,
            TransferKind.MINT,
            POOL_TREASURY,
            account,
            amount,
            request,
            create=True,
            memo=memo,
        )

    async def correct(
        self,
        conn: asyncpg.Connection,
        key: str,
        debit: AccountKey,
        credit: AccountKey,
        amount: int,
        *,
        memo: str,
    ) -> Transfer:
        """Move posted credits between two existing accounts (a refund, a slash, a fix)."""
        _caller_key(key)
        if check_amount(amount) == 0:
            raise InvalidLedgerInput("A correction moves a positive amount.", param="amount")
        if debit == credit:
            raise InvalidLedgerInput("A correction needs two different accounts.", param="credit")
        _not_earnings(debit, credit)
        request = {"debit": str(debit), "credit": str(credit), "amount": amount}
        return await self._simple(
            conn,
            key,
            TransferKind.CORRECTION,
            debit,
            credit,
            amount,
            request,
            create=False,
            memo=memo,
        )

    async def reverse(
        self, conn: asyncpg.Connection, key: str, transfer_id: int, *, memo: str
    ) -> Transfer:
        """Undo every posted entry of a transfer with a new mirrored transfer; once per transfer.

        A job's post whose earning was settled is refused: that money is the owner's now (a
        correction from the owner's account undoes it).
        """
        return await self._reverse(conn, _caller_key(key), transfer_id, memo=memo)

    async def refund(self, conn: asyncpg.Connection, job_id: str, *, memo: str) -> Transfer:
        """Reverse a job's post (``refund:<job>``): user repaid, earning and pool fee taken back.

        Raises :class:`NotReversible` once the job's earning is settled (or it was reversed).
        """
        post = await find_transfer(conn, job_key(TransferKind.POST, job_id))
        if post is None:
            raise TransferNotFound(f"Job {job_id} was not charged.", param="job_id")
        return await self._reverse(conn, f"refund:{job_id}", post.id, memo=memo)

    async def _reverse(
        self, conn: asyncpg.Connection, key: str, transfer_id: int, *, memo: str
    ) -> Transfer:
        request = {"reverses": transfer_id}
        target = await transfer_by_id(conn, transfer_id)
        if target is None:
            raise TransferNotFound(f"No transfer {transfer_id}.", param="transfer_id")
        flip = {Side.DEBIT: Side.CREDIT, Side.CREDIT: Side.DEBIT}
        legs = [
            Leg(leg.account, flip[leg.side], Phase.POSTED, leg.amount)
            for leg, _ in await entries_of(conn, transfer_id)
            if leg.phase is Phase.POSTED
        ]
        if not legs:
            raise NotReversible(f"Transfer {transfer_id} posted nothing.", param="transfer_id")

        async def attempt() -> Transfer:
            async with conn.transaction():
                now = self._clock()
                accounts = await self._lock(conn, [leg.account for leg in legs], create=False)
                kind = TransferKind.REVERSAL
                if (done := await self._recheck(conn, key, kind, request)) is not None:
                    return done
                if await conn.fetchval(
                    "SELECT 1 FROM ledger_transfers WHERE reverses_id = $1", transfer_id
                ):
                    raise NotReversible(f"Transfer {transfer_id} was reversed already.")
                if target.kind is TransferKind.POST and await _settled(conn, target):
                    raise NotReversible(f"Job {target.job_id}'s earning was settled already.")
                amount = sum(leg.amount for leg in legs if leg.side is Side.DEBIT)
                new = NewTransfer(
                    key, kind, legs, amount, request, reverses_id=transfer_id, memo=memo
                )
                return await _write(conn, accounts, new, now)

        return await self._idempotent(conn, key, TransferKind.REVERSAL, request, attempt)

    async def settle(
        self, conn: asyncpg.Connection, post: Transfer, *, allow: Guard | None = None
    ) -> Transfer | None:
        """Release a job's unsettled earning to the worker's owner (``settle:<job>``); once.

        ``allow`` runs inside the transaction once the worker's earnings account is locked (so a
        dispute, a refund or a slash of the same worker waits or is seen): when it says no, the
        earning stays unsettled and this returns None. Raises :class:`NotSettleable` for a post
        that credited the owner directly or was refunded.
        """
        if post.kind is not TransferKind.POST or "worker_id" not in post.request:
            raise NotSettleable(f"Transfer {post.key} holds no unsettled earning.", param="post")
        assert post.job_id is not None
        key = job_key(TransferKind.SETTLE, post.job_id)
        earnings = AccountKey(AccountKind.WORKER_EARNINGS, post.request["worker_id"])
        owner = AccountKey(AccountKind.WORKER_OWNER, post.request["worker_owner"])
        share = sum(
            leg.amount for leg, _ in await entries_of(conn, post.id) if leg.account == earnings
        )
        request = {"post": post.id}

        async def attempt() -> Transfer | None:
            async with conn.transaction():
                now = self._clock()
                accounts = await self._lock(conn, [earnings, owner], create=True)
                kind = TransferKind.SETTLE
                if (done := await self._recheck(conn, key, kind, request)) is not None:
                    return done
                if await conn.fetchval(
                    "SELECT 1 FROM ledger_transfers WHERE reverses_id = $1", post.id
                ):
                    raise NotSettleable(f"Job {post.job_id} was refunded.", param="post")
                if allow is not None and not await allow(conn):
                    return None
                legs = [
                    Leg(earnings, Side.DEBIT, Phase.POSTED, share),
                    Leg(owner, Side.CREDIT, Phase.POSTED, share),
                ]
                new = NewTransfer(key, kind, legs, share, request, job_id=post.job_id)
                return await _write(conn, accounts, new, now)

        return await self._idempotent(conn, key, TransferKind.SETTLE, request, attempt)

    async def penalize(
        self, conn: asyncpg.Connection, key: str, owner_id: UUID, amount: int, *, memo: str
    ) -> Transfer:
        """A slash's penalty (``slash:<key>``): worker owner → pool treasury, even into debt."""
        check_key(key)
        if check_amount(amount) == 0:
            raise InvalidLedgerInput("A penalty moves a positive amount.", param="penalty")
        request = {"owner": str(owner_id), "amount": amount}
        return await self._simple(
            conn,
            f"slash:{key}",
            TransferKind.SLASH,
            AccountKey.worker_owner(owner_id),
            POOL_TREASURY,
            amount,
            request,
            create=True,
            memo=memo,
        )


async def _settled(conn: asyncpg.Connection, post: Transfer) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM ledger_transfers WHERE kind = 'settle' AND job_id = $1", post.job_id
        )
    )
