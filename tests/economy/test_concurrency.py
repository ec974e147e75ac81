"""The ledger under concurrent callers on a pool: no deadlock, no double charge, right balances."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import asyncpg
import pytest

from economy.accounts import CLEARING, POOL_FEE, AccountKey, get_account, lock_accounts
from economy.errors import AccountNotFound, HoldResolved, IdempotencyConflict
from economy.ledger import Ledger
from economy.pricing import Usage
from economy.transfers import Transfer
from economy.verify import verify

pytestmark = pytest.mark.anyio

USERS = [uuid.UUID(int=i + 1) for i in range(4)]
OWNERS = [uuid.UUID(int=100 + i) for i in range(3)]
USAGE = Usage("small", 1_000, 500)  # costs 2,000: 1,800 to the owner, 200 to the pool
TIMEOUT_S = 120


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool on the test's database, as the hub holds one."""
    async with asyncpg.create_pool(database_url, min_size=2, max_size=8) as created:
        yield created


async def run_job(pool: asyncpg.Pool, ledger: Ledger, n: int) -> None:
    """Hold, then post (or void every fifth job), each on whichever connection is free."""
    job_id, user = f"job-{n}", USERS[n % len(USERS)]
    async with pool.acquire() as conn:
        await ledger.hold(conn, job_id, user, 3_000)
    async with pool.acquire() as conn:
        if n % 5 == 4:
            await ledger.void(conn, job_id)
        else:
            await ledger.post(conn, job_id, USAGE, OWNERS[n % len(OWNERS)])


async def test_many_concurrent_jobs_on_shared_accounts_settle_without_deadlock(
    pool: asyncpg.Pool, ledger: Ledger
) -> None:
    jobs = 120
    with anyio.fail_after(TIMEOUT_S):
        await asyncio.gather(*(run_job(pool, ledger, n) for n in range(jobs)))
        await asyncio.gather(*(run_job(pool, ledger, n) for n in range(0, jobs, 7)))

    async with pool.acquire() as conn:
        for i, user in enumerate(USERS):
            charged = sum(1 for n in range(jobs) if n % len(USERS) == i and n % 5 != 4)
            account = await get_account(conn, AccountKey.user(user))
            assert (account.balance, account.debits_pending) == (-2_000 * charged, 0)
        for i, owner in enumerate(OWNERS):
            paid = sum(1 for n in range(jobs) if n % len(OWNERS) == i and n % 5 != 4)
            assert (await get_account(conn, AccountKey.worker_owner(owner))).balance == 1_800 * paid
        assert (await get_account(conn, POOL_FEE)).balance == 200 * (jobs - jobs // 5)
        assert (await get_account(conn, CLEARING)).credits_pending == 0
        report = await verify(conn)
    assert report.ok, report.problems
    assert report.posted_jobs == jobs - jobs // 5


Call = Callable[[asyncpg.Connection], Awaitable[Transfer]]


async def concurrently(pool: asyncpg.Pool, calls: list[Call]) -> list[Transfer | BaseException]:
    """Run the calls at once, each on its own connection; keep their errors."""

    async def one(call: Call) -> Transfer:
        async with pool.acquire() as conn:
            return await call(conn)

    with anyio.fail_after(TIMEOUT_S):
        return await asyncio.gather(*(one(call) for call in calls), return_exceptions=True)


async def test_concurrent_retries_of_one_post_charge_the_job_once(
    pool: asyncpg.Pool, ledger: Ledger
) -> None:
    async with pool.acquire() as conn:
        await ledger.hold(conn, "job-1", USERS[0], 3_000)
    post: Call = lambda conn: ledger.post(conn, "job-1", USAGE, OWNERS[0])  # noqa: E731
    results = await concurrently(pool, [post] * 12)
    assert all(isinstance(r, Transfer) for r in results), results
    assert len({r.id for r in results if isinstance(r, Transfer)}) == 1
    async with pool.acquire() as conn:
        assert (await get_account(conn, AccountKey.user(USERS[0]))).balance == -2_000
        assert (await verify(conn)).ok


async def test_concurrent_first_holds_of_one_job_record_one_hold_and_conflicts_fail(
    pool: asyncpg.Pool, ledger: Ledger
) -> None:
    def hold(amount: int) -> Call:
        return lambda conn: ledger.hold(conn, "job-1", USERS[0], amount)

    results = await concurrently(pool, [hold(3_000)] * 8 + [hold(4_000)] * 8)
    holds = {r.id: r for r in results if isinstance(r, Transfer)}
    assert len(holds) == 1
    (winner,) = holds.values()
    losers = [r for r in results if not isinstance(r, Transfer)]
    assert len(losers) == 8 and all(isinstance(r, IdempotencyConflict) for r in losers)
    async with pool.acquire() as conn:
        assert (await get_account(conn, CLEARING)).credits_pending == winner.amount
        assert (await verify(conn)).ok


async def test_a_post_racing_a_void_resolves_the_hold_exactly_once(
    pool: asyncpg.Pool, ledger: Ledger
) -> None:
    async with pool.acquire() as conn:
        for n in range(10):
            await ledger.hold(conn, f"job-{n}", USERS[n % 2], 3_000)

    def post(job_id: str) -> Call:
        return lambda conn: ledger.post(conn, job_id, USAGE, OWNERS[0])

    def void(job_id: str) -> Call:
        return lambda conn: ledger.void(conn, job_id)

    calls = [call for n in range(10) for call in (post(f"job-{n}"), void(f"job-{n}"))]
    results = await concurrently(pool, calls)
    for posted, voided in zip(results[::2], results[1::2], strict=True):
        outcomes = [isinstance(posted, Transfer), isinstance(voided, Transfer)]
        assert outcomes in ([True, False], [False, True]), (posted, voided)
        assert isinstance(posted, HoldResolved) or isinstance(voided, HoldResolved)
    async with pool.acquire() as conn:
        report = await verify(conn)
    assert report.ok and report.open_holds == 0


async def test_opposite_corrections_between_two_accounts_never_deadlock(
    pool: asyncpg.Pool, ledger: Ledger
) -> None:
    alice, bob = AccountKey.user(USERS[0]), AccountKey.user(USERS[1])
    async with pool.acquire() as conn:
        await ledger.mint(conn, "seed-alice", alice, 1_000, memo="seed")
        await ledger.mint(conn, "seed-bob", bob, 1_000, memo="seed")

    def correct(n: int) -> Call:
        debit, credit = (alice, bob) if n % 2 else (bob, alice)
        return lambda conn: ledger.correct(conn, f"swap-{n}", debit, credit, n + 1, memo="swap")

    results = await concurrently(pool, [correct(n) for n in range(40)])
    assert all(isinstance(r, Transfer) for r in results), results
    moved = sum(n + 1 for n in range(40) if n % 2) - sum(n + 1 for n in range(40) if not n % 2)
    async with pool.acquire() as conn:
        assert (await get_account(conn, alice)).balance == 1_000 - moved
        assert (await get_account(conn, bob)).balance == 1_000 + moved
        assert (await verify(conn)).ok


async def test_locking_with_a_missing_account_refuses_before_locking_any(
    conn: asyncpg.Connection, database_url: str, ledger: Ledger
) -> None:
    """A post retried after a rolled-back one must not insert accounts while holding locks.

    The ledger remembers accounts it saw opened; one opened in a transaction that rolled back
    is missing, the lock without opening fails, and the ledger opens it after all. Had the
    failed attempt kept its locks, that insert could wait on a transaction waiting on them.
    """
    await ledger.grant_trial(conn, USERS[0])
    other = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            missing = AccountKey.worker_earnings(uuid.UUID(int=404))
            with pytest.raises(AccountNotFound):
                await lock_accounts(conn, [AccountKey.user(USERS[0]), missing], create=False)
            locked = await other.fetchval(
                "SELECT id FROM ledger_accounts WHERE kind = 'user' AND ref = $1 FOR UPDATE NOWAIT",
                str(USERS[0]),
            )
        assert locked is not None
    finally:
        await other.close()
