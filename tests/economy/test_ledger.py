"""The ledger on a real database: a job's hold, post and void; grants, corrections, reversals."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from economy.accounts import (
    CLEARING,
    POOL_FEE,
    POOL_TREASURY,
    TRIAL_GRANT,
    AccountKey,
    Phase,
    Side,
    get_account,
    statement,
)
from economy.errors import (
    AccountNotFound,
    HoldExpired,
    HoldNotFound,
    HoldResolved,
    IdempotencyConflict,
    InvalidLedgerInput,
    NotReversible,
    TransferNotFound,
)
from economy.ledger import HoldState, Ledger
from economy.pricing import Usage
from economy.transfers import (
    NewTransfer,
    Transfer,
    TransferBatch,
    TransferIds,
    TransferKind,
    find_transfer,
)
from economy.verify import verify
from tests.economy.conftest import START, FakeClock

pytestmark = pytest.mark.anyio

ALICE = uuid.UUID("00000000-0000-4000-8000-00000000a11c")
OWNER = uuid.UUID("00000000-0000-4000-8000-0000000000b0")
USAGE = Usage("small", 1_000, 500)  # costs 2,000: 1,800 to the owner, 200 to the pool


async def balance(conn: asyncpg.Connection, key: AccountKey) -> int:
    return (await get_account(conn, key)).balance


async def funded_alice(conn: asyncpg.Connection, ledger: Ledger) -> None:
    await ledger.grant_trial(conn, ALICE)


async def test_a_posted_job_pays_the_worker_owner_and_the_pool_fee(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await funded_alice(conn, ledger)
    hold = await ledger.hold(conn, "job-1", ALICE, 5_000)
    assert hold.funded and hold.kind is TransferKind.HOLD
    held = await ledger.balance(conn, AccountKey.user(ALICE))
    assert (held.balance, held.pending_debits, held.available) == (50_000, 5_000, 45_000)

    posted = await ledger.post(conn, "job-1", USAGE, OWNER)

    assert posted.amount == 2_000 and posted.pending_id == hold.id
    assert await balance(conn, AccountKey.user(ALICE)) == 48_000
    assert await balance(conn, AccountKey.worker_owner(OWNER)) == 1_800
    assert await balance(conn, POOL_FEE) == 200
    assert await ledger.hold_state(conn, "job-1") is HoldState.POSTED
    assert (await verify(conn)).ok


WORKER = uuid.UUID("00000000-0000-4000-8000-0000000000c1")


async def test_a_post_naming_its_worker_credits_the_workers_unsettled_earnings(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await funded_alice(conn, ledger)
    await ledger.hold(conn, "job-1", ALICE, 5_000)

    posted = await ledger.post(conn, "job-1", USAGE, OWNER, worker_id=WORKER)

    assert posted.request["worker_id"] == str(WORKER)
    assert await balance(conn, AccountKey.worker_earnings(WORKER)) == 1_800
    assert await balance(conn, POOL_FEE) == 200
    with pytest.raises(AccountNotFound):
        await get_account(conn, AccountKey.worker_owner(OWNER))
    assert await ledger.post(conn, "job-1", USAGE, OWNER, worker_id=WORKER) == posted
    assert (await verify(conn)).ok


async def test_a_post_retried_with_another_worker_or_none_is_a_conflict(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await ledger.hold(conn, "job-1", ALICE, 5_000)
    await ledger.post(conn, "job-1", USAGE, OWNER, worker_id=WORKER)
    with pytest.raises(IdempotencyConflict):
        await ledger.post(conn, "job-1", USAGE, OWNER, worker_id=OWNER)
    with pytest.raises(IdempotencyConflict):
        await ledger.post(conn, "job-1", USAGE, OWNER)
    assert await balance(conn, AccountKey.worker_earnings(WORKER)) == 1_800


async def test_clearing_is_zero_once_no_job_is_open(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await ledger.hold(conn, "job-1", ALICE, 3_000)
    await ledger.hold(conn, "job-2", ALICE, 4_000)
    assert (await get_account(conn, CLEARING)).credits_pending == 7_000
    await ledger.post(conn, "job-1", USAGE, OWNER)
    await ledger.void(conn, "job-2")
    clearing = await get_account(conn, CLEARING)
    assert (clearing.balance, clearing.pending) == (0, 0)
    assert (await get_account(conn, AccountKey.user(ALICE))).debits_pending == 0


async def test_a_job_may_cost_more_than_its_hold(conn: asyncpg.Connection, ledger: Ledger) -> None:
    await funded_alice(conn, ledger)
    await ledger.hold(conn, "job-1", ALICE, 100)
    await ledger.post(conn, "job-1", USAGE, OWNER)
    assert await balance(conn, AccountKey.user(ALICE)) == 48_000


async def test_posting_again_with_the_same_usage_returns_the_first_transfer(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await ledger.hold(conn, "job-1", ALICE, 5_000)
    first = await ledger.post(conn, "job-1", USAGE, OWNER)
    again = await ledger.post(conn, "job-1", USAGE, OWNER)
    assert again == first
    assert await balance(conn, AccountKey.worker_owner(OWNER)) == 1_800


async def test_posting_again_with_other_usage_is_a_conflict(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await ledger.hold(conn, "job-1", ALICE, 5_000)
    await ledger.post(conn, "job-1", USAGE, OWNER)
    with pytest.raises(IdempotencyConflict):
        await ledger.post(conn, "job-1", Usage("small", 1_000, 501), OWNER)
    with pytest.raises(IdempotencyConflict):
        await ledger.post(conn, "job-1", USAGE, ALICE)
    assert await balance(conn, AccountKey.worker_owner(OWNER)) == 1_800


async def test_holding_again_returns_the_first_hold_and_another_amount_conflicts(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    first = await ledger.hold(conn, "job-1", ALICE, 5_000)
    assert await ledger.hold(conn, "job-1", ALICE, 5_000) == first
    with pytest.raises(IdempotencyConflict):
        await ledger.hold(conn, "job-1", ALICE, 6_000)
    with pytest.raises(IdempotencyConflict):
        await ledger.hold(conn, "job-1", OWNER, 5_000)
    assert (await get_account(conn, CLEARING)).credits_pending == 5_000


async def test_a_voided_hold_returns_the_reservation_and_cannot_be_posted(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await funded_alice(conn, ledger)
    await ledger.hold(conn, "job-1", ALICE, 5_000)
    voided = await ledger.void(conn, "job-1", memo="worker failed")
    assert await ledger.void(conn, "job-1", memo="retried") == voided
    assert (await ledger.balance(conn, AccountKey.user(ALICE))).available == 50_000
    assert await ledger.hold_state(conn, "job-1") is HoldState.VOIDED
    with pytest.raises(HoldResolved):
        await ledger.post(conn, "job-1", USAGE, OWNER)


async def test_voiding_a_posted_job_is_refused(conn: asyncpg.Connection, ledger: Ledger) -> None:
    await ledger.hold(conn, "job-1", ALICE, 5_000)
    await ledger.post(conn, "job-1", USAGE, OWNER)
    with pytest.raises(HoldResolved, match="reverse"):
        await ledger.void(conn, "job-1")


async def test_an_expired_hold_reads_as_voided_and_cannot_be_posted(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    await funded_alice(conn, ledger)
    await ledger.hold(conn, "job-1", ALICE, 5_000)
    clock.advance(600)
    assert await ledger.hold_state(conn, "job-1") is HoldState.EXPIRED
    assert (await ledger.balance(conn, AccountKey.user(ALICE))).available == 50_000
    assert (await ledger.balance(conn, CLEARING)).pending_credits == 0
    with pytest.raises(HoldExpired):
        await ledger.post(conn, "job-1", USAGE, OWNER)
    assert await balance(conn, AccountKey.user(ALICE)) == 50_000


async def test_the_expiry_sweep_records_expired_holds_and_a_late_void_returns_it(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    await ledger.hold(conn, "job-1", ALICE, 5_000)
    await ledger.hold(conn, "job-2", OWNER, 1_000)
    clock.advance(300)
    await ledger.hold(conn, "job-3", ALICE, 2_000)
    clock.advance(300)
    assert await ledger.expire_holds(conn) == 2
    assert await ledger.expire_holds(conn) == 0
    voided = await ledger.void(conn, "job-1")
    assert voided.kind is TransferKind.EXPIRE
    with pytest.raises(HoldExpired):
        await ledger.post(conn, "job-2", USAGE, OWNER)
    assert await ledger.hold_state(conn, "job-3") is HoldState.OPEN
    assert (await get_account(conn, CLEARING)).credits_pending == 2_000
    assert (await verify(conn)).ok


async def test_a_new_hold_records_the_users_expired_holds_first(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    await funded_alice(conn, ledger)
    await ledger.hold(conn, "job-1", ALICE, 40_000)
    clock.advance(601)
    second = await ledger.hold(conn, "job-2", ALICE, 40_000)
    assert second.funded
    assert await ledger.hold_state(conn, "job-1") is HoldState.EXPIRED
    assert (await get_account(conn, AccountKey.user(ALICE))).debits_pending == 40_000


async def test_a_user_at_zero_is_held_unfunded_never_refused(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    hold = await ledger.hold(conn, "job-1", ALICE, 5_000)
    assert hold.funded is False
    await ledger.post(conn, "job-1", USAGE, OWNER)
    assert await balance(conn, AccountKey.user(ALICE)) == -2_000
    assert await balance(conn, AccountKey.worker_owner(OWNER)) == 1_800


async def test_a_hold_is_funded_while_the_balance_covers_it_down_to_the_overdraft(
    conn: asyncpg.Connection, clock: FakeClock
) -> None:
    from tests.economy.conftest import POLICY

    ledger = Ledger(POLICY.model_copy(update={"overdraft": 10_000}), clock)
    await ledger.grant_trial(conn, ALICE)
    assert (await ledger.hold(conn, "job-1", ALICE, 55_000)).funded
    assert (await ledger.hold(conn, "job-2", ALICE, 5_000)).funded
    assert not (await ledger.hold(conn, "job-3", ALICE, 1)).funded


async def test_the_trial_grant_is_given_once(conn: asyncpg.Connection, ledger: Ledger) -> None:
    first = await ledger.grant_trial(conn, ALICE)
    assert await ledger.grant_trial(conn, ALICE) == first
    assert await balance(conn, AccountKey.user(ALICE)) == 50_000
    assert await balance(conn, TRIAL_GRANT) == -50_000


@pytest.mark.parametrize("amount", [-1, -5_000])
async def test_negative_amounts_are_refused(
    conn: asyncpg.Connection, ledger: Ledger, amount: int
) -> None:
    with pytest.raises(InvalidLedgerInput):
        await ledger.hold(conn, "job-1", ALICE, amount)
    with pytest.raises(InvalidLedgerInput):
        await ledger.mint(conn, "mint-1", AccountKey.user(ALICE), amount, memo="x")
    with pytest.raises(InvalidLedgerInput):
        await ledger.correct(conn, "fix-1", POOL_FEE, POOL_TREASURY, amount, memo="x")
    assert (await verify(conn)).transfers == 0


@pytest.mark.parametrize("job_id", ["", "a b", "x" * 129, "job:1", "../etc"])
async def test_malformed_job_ids_are_refused(
    conn: asyncpg.Connection, ledger: Ledger, job_id: str
) -> None:
    with pytest.raises(InvalidLedgerInput):
        await ledger.hold(conn, job_id, ALICE, 1)


async def test_keys_the_ledger_reserves_for_jobs_and_grants_are_refused(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    for key in ("hold:job-1", "post:job-1", "trial:x", "bad key"):
        with pytest.raises(InvalidLedgerInput):
            await ledger.mint(conn, key, AccountKey.user(ALICE), 1, memo="x")


async def test_a_correction_to_an_unknown_account_is_refused(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    with pytest.raises(AccountNotFound):
        await ledger.correct(conn, "fix-1", POOL_FEE, AccountKey.user(ALICE), 10, memo="refund")
    with pytest.raises(AccountNotFound):
        await get_account(conn, AccountKey.worker_owner(OWNER))
    with pytest.raises(InvalidLedgerInput):
        AccountKey.peer_pool("no spaces")


async def test_a_correction_moves_posted_credits_and_a_reused_key_must_match(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await ledger.hold(conn, "job-1", ALICE, 5_000)
    await ledger.post(conn, "job-1", USAGE, OWNER)
    owner = AccountKey.worker_owner(OWNER)
    fix = await ledger.correct(conn, "slash-1", owner, POOL_FEE, 800, memo="slash")
    assert await ledger.correct(conn, "slash-1", owner, POOL_FEE, 800, memo="again") == fix
    with pytest.raises(IdempotencyConflict):
        await ledger.correct(conn, "slash-1", owner, POOL_FEE, 900, memo="slash")
    assert (await balance(conn, owner), await balance(conn, POOL_FEE)) == (1_000, 1_000)


async def test_a_reversal_undoes_a_charge_once_and_the_job_stays_charged_once(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await funded_alice(conn, ledger)
    await ledger.hold(conn, "job-1", ALICE, 5_000)
    posted = await ledger.post(conn, "job-1", USAGE, OWNER)
    reversal = await ledger.reverse(conn, "refund-job-1", posted.id, memo="dispute upheld")
    assert reversal.amount == 2_000 and reversal.reverses_id == posted.id
    assert await ledger.reverse(conn, "refund-job-1", posted.id, memo="retry") == reversal
    with pytest.raises(NotReversible):
        await ledger.reverse(conn, "refund-again", posted.id, memo="twice")
    assert await balance(conn, AccountKey.user(ALICE)) == 50_000
    assert await balance(conn, AccountKey.worker_owner(OWNER)) == 0
    with pytest.raises(HoldResolved):
        await ledger.void(conn, "job-1")
    report = await verify(conn)
    assert report.ok and report.posted_jobs == 1


async def test_a_hold_cannot_be_reversed_and_an_unknown_transfer_is_not_found(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    hold = await ledger.hold(conn, "job-1", ALICE, 5_000)
    with pytest.raises(NotReversible):
        await ledger.reverse(conn, "undo-hold", hold.id, memo="x")
    with pytest.raises(TransferNotFound):
        await ledger.reverse(conn, "undo-nothing", 999_999, memo="x")


async def test_posting_or_voiding_a_job_without_a_hold_is_refused(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    with pytest.raises(HoldNotFound):
        await ledger.post(conn, "never-held", USAGE, OWNER)
    with pytest.raises(HoldNotFound):
        await ledger.void(conn, "never-held")


async def test_each_entry_stores_the_balances_after_it(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await funded_alice(conn, ledger)
    await ledger.hold(conn, "job-1", ALICE, 5_000)
    await ledger.post(conn, "job-1", USAGE, OWNER)
    lines = await statement(conn, AccountKey.user(ALICE))
    seen = [
        (ln.kind, ln.side, ln.phase, ln.amount, ln.balance_after, ln.pending_after) for ln in lines
    ]
    assert seen == [
        ("post", Side.DEBIT, Phase.POSTED, 2_000, 48_000, 0),
        ("post", Side.DEBIT, Phase.PENDING, -5_000, 50_000, 0),
        ("hold", Side.DEBIT, Phase.PENDING, 5_000, 50_000, -5_000),
        ("grant", Side.CREDIT, Phase.POSTED, 50_000, 50_000, 0),
    ]
    older = await statement(conn, AccountKey.user(ALICE), limit=2, before=lines[1].entry_id)
    assert [ln.entry_id for ln in older] == [lines[2].entry_id, lines[3].entry_id]


async def test_transfers_and_entries_cannot_be_updated_or_deleted(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await funded_alice(conn, ledger)
    for sql in (
        "UPDATE revenue_ledger SET amount = 1",
        "DELETE FROM revenue_ledger",
        "UPDATE ledger_transfers SET amount = 1",
        "DELETE FROM ledger_transfers",
        "TRUNCATE revenue_ledger, ledger_transfers CASCADE",
    ):
        with pytest.raises(asyncpg.RestrictViolationError):
            await conn.execute(sql)


async def forge_one_sided_transfer(conn: asyncpg.Connection) -> None:
    """Write, by hand, a transfer whose only entry credits the pool fee from nowhere."""
    async with conn.transaction():
        transfer = await conn.fetchval(
            "INSERT INTO ledger_transfers (key, kind, amount, created_at) "
            "VALUES ('forged', 'mint', 5, now()) RETURNING id"
        )
        await conn.execute(
            "INSERT INTO revenue_ledger (transfer_id, account_id, side, phase, amount, "
            "balance_after, pending_after, created_at) SELECT $1, id, 'credit', 'posted', 5, "
            "5, 0, now() FROM ledger_accounts WHERE kind = 'pool_fee'",
            transfer,
        )


async def test_an_unbalanced_transfer_is_refused_at_commit(conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await forge_one_sided_transfer(conn)
    assert (await verify(conn)).transfers == 0


async def test_verify_is_clean_on_a_fresh_ledger_and_reports_a_tampered_balance(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    assert (await verify(conn)).ok
    await funded_alice(conn, ledger)
    await ledger.hold(conn, "job-1", ALICE, 5_000)
    await conn.execute("UPDATE ledger_accounts SET credits_posted = 1 WHERE kind = 'user'")
    await conn.execute("DELETE FROM ledger_open_holds")
    report = await verify(conn)
    assert not report.ok
    assert any("user:" in p and "totals differ" in p for p in report.problems)
    assert any("open hold missing" in p for p in report.problems)
    assert any("clearing: carries 5000" in p for p in report.problems)


async def test_a_peer_pool_has_an_account_like_any_other(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    peer = AccountKey.peer_pool("elsewhere")
    await ledger.mint(conn, "peer-credit", peer, 3_000, memo="federation credit line")
    await ledger.correct(conn, "peer-fee", peer, POOL_FEE, 1_000, memo="served their users")
    assert (await balance(conn, peer), await balance(conn, POOL_TREASURY)) == (2_000, -3_000)
    assert (await verify(conn)).ok


async def xmins(conn: asyncpg.Connection, job_id: str) -> dict[str, int]:
    """Each of the job's transfers → the id of the transaction that wrote it."""
    rows = await conn.fetch(
        "SELECT kind, xmin::text::bigint AS tx FROM ledger_transfers WHERE job_id = $1", job_id
    )
    return {row["kind"]: row["tx"] for row in rows}


async def test_hold_then_writes_the_hold_and_its_post_in_one_transaction(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await funded_alice(conn, ledger)
    hold, posted = await ledger.hold_then(
        conn, "job-1", ALICE, 5_000, lambda: ledger.post(conn, "job-1", USAGE, OWNER)
    )
    assert (hold.kind, posted.kind, posted.pending_id) == (
        TransferKind.HOLD,
        TransferKind.POST,
        hold.id,
    )
    written = await xmins(conn, "job-1")
    assert written.keys() == {"hold", "post"} and len(set(written.values())) == 1
    assert await balance(conn, AccountKey.user(ALICE)) == 48_000
    assert await ledger.hold_state(conn, "job-1") is HoldState.POSTED

    again = await ledger.hold_then(
        conn, "job-1", ALICE, 5_000, lambda: ledger.post(conn, "job-1", USAGE, OWNER)
    )
    assert again == (hold, posted)  # a retry returns the first transfers
    assert await balance(conn, AccountKey.user(ALICE)) == 48_000
    assert (await verify(conn)).ok


async def test_hold_then_after_a_separate_hold_adds_only_the_void(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    first = await ledger.hold(conn, "job-2", ALICE, 5_000)
    hold, voided = await ledger.hold_then(
        conn, "job-2", ALICE, 5_000, lambda: ledger.void(conn, "job-2", memo="not answered")
    )
    assert hold == first
    assert voided.kind is TransferKind.VOID
    assert await ledger.hold_state(conn, "job-2") is HoldState.VOIDED
    assert (await verify(conn)).ok


async def test_hold_then_whose_ending_fails_writes_nothing(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await ledger.hold(conn, "other", ALICE, 1_000)
    await ledger.void(conn, "other")

    async def refused() -> object:
        return await ledger.post(conn, "other", USAGE, OWNER)  # voided already: HoldResolved

    with pytest.raises(HoldResolved):
        await ledger.hold_then(conn, "job-3", ALICE, 5_000, refused)
    assert await xmins(conn, "job-3") == {}
    assert (await verify(conn)).ok


async def test_a_group_commits_several_jobs_holds_and_endings_in_one_transaction(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await funded_alice(conn, ledger)
    async with ledger.group_transaction(conn):
        await ledger.hold_then(
            conn, "g-1", ALICE, 5_000, lambda: ledger.post(conn, "g-1", USAGE, OWNER)
        )
        await ledger.hold_then(
            conn, "g-2", ALICE, 5_000, lambda: ledger.void(conn, "g-2", memo="not answered")
        )
    first, second = await xmins(conn, "g-1"), await xmins(conn, "g-2")
    assert first.keys() == {"hold", "post"} and second.keys() == {"hold", "void"}
    assert len({*first.values(), *second.values()}) == 1
    assert await balance(conn, AccountKey.user(ALICE)) == 48_000  # the post's charge only
    assert await ledger.hold_state(conn, "g-1") is HoldState.POSTED
    assert await ledger.hold_state(conn, "g-2") is HoldState.VOIDED
    assert await conn.fetchval("SELECT count(*) FROM ledger_open_holds") == 0
    assert (await verify(conn)).ok


async def test_a_group_whose_job_leaves_its_hold_open_writes_nothing(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    async def no_ending() -> None:
        return None

    async def group() -> None:
        async with ledger.group_transaction(conn):
            await ledger.hold_then(
                conn, "g-4", ALICE, 1_000, lambda: ledger.void(conn, "g-4", memo="x")
            )
            await ledger.hold_then(conn, "g-3", ALICE, 1_000, no_ending)

    with pytest.raises(ValueError, match="left job g-3's hold open"):
        await group()
    assert await xmins(conn, "g-3") == {} and await xmins(conn, "g-4") == {}
    assert (await verify(conn)).ok


async def test_a_groups_transfers_are_answered_at_once_and_written_as_answered_at_commit(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await funded_alice(conn, ledger)
    async with ledger.group_transaction(conn):
        hold, posted = await ledger.hold_then(
            conn, "g-5", ALICE, 5_000, lambda: ledger.post(conn, "g-5", USAGE, OWNER)
        )
        # queued for the commit, one round trip for the group's transfers: not written yet
        assert await xmins(conn, "g-5") == {}
    assert hold.id < posted.id and posted.pending_id == hold.id
    assert await find_transfer(conn, hold.key) == hold
    assert await find_transfer(conn, posted.key) == posted
    assert await balance(conn, AccountKey.user(ALICE)) == 48_000
    assert (await verify(conn)).ok


async def test_a_group_whose_transfers_the_database_refuses_at_commit_writes_nothing(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    async def group() -> None:
        async with ledger.group_transaction(conn):
            await ledger.hold_then(
                conn, "g-6", ALICE, 1_000, lambda: ledger.void(conn, "g-6", memo="x")
            )
            await ledger.hold_then(  # the same job again: its keys exist, refused at the flush
                conn, "g-6", ALICE, 1_000, lambda: ledger.void(conn, "g-6", memo="x")
            )

    with pytest.raises(asyncpg.UniqueViolationError):
        await group()
    assert await xmins(conn, "g-6") == {}
    assert (await verify(conn)).ok


async def test_ids_taken_ahead_for_groups_never_meet_the_ones_the_identity_gives(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    await funded_alice(conn, ledger)
    other = Ledger(ledger.policy, clock)  # a new policy's ledger: its own block of ids
    for n, book in enumerate((ledger, other, ledger)):
        job = f"ids-{n}"

        async def post(book: Ledger = book, job: str = job) -> Transfer:
            return await book.post(conn, job, USAGE, OWNER)

        async with book.group_transaction(conn):
            await book.hold_then(conn, job, ALICE, 1_000, post)
        await ledger.hold(conn, f"alone-{n}", ALICE, 1_000)  # the identity's next id
        await ledger.void(conn, f"alone-{n}")
    ids = [r["id"] for r in await conn.fetch("SELECT id FROM ledger_transfers")]
    assert len(ids) == len(set(ids)) == 1 + 3 * 4
    assert await balance(conn, AccountKey.user(ALICE)) == 50_000 - 3 * 2_000
    assert (await verify(conn)).ok


async def test_a_batch_refuses_a_hold_that_would_stay_open(conn: asyncpg.Connection) -> None:
    hold = NewTransfer(
        "hold:open", TransferKind.HOLD, [], 1_000, job_id="open", holds=AccountKey.user(ALICE)
    )
    with pytest.raises(ValueError, match="a batch writes no open hold"):
        await TransferBatch(TransferIds()).add(conn, {}, hold, START)
