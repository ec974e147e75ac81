"""Disputes: opened by a job's user in its window (or the admin), upheld (slash) or rejected."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from economy.accounts import POOL_FEE, POOL_TREASURY, AccountKey, get_account
from economy.disputes import (
    Decision,
    DisputeStatus,
    get_dispute,
    list_disputes,
    open_dispute,
    resolve_dispute,
)
from economy.errors import (
    DisputeNotFound,
    DisputeRefused,
    InvalidLedgerInput,
    JobNotFound,
)
from economy.ledger import Ledger
from economy.settlement import settle_due
from economy.slashing import list_events
from economy.verify import verify
from tests.economy.conftest import POLICY, FakeClock, Trust, charge

pytestmark = pytest.mark.anyio

ALICE = uuid.UUID("00000000-0000-4000-8000-00000000a11c")
BOB = uuid.UUID("00000000-0000-4000-8000-000000000b0b")
OWNER = uuid.UUID("00000000-0000-4000-8000-0000000000b0")
WORKER = uuid.UUID("00000000-0000-4000-8000-0000000000c1")
WINDOW = POLICY.dispute_window_s


async def balance(conn: asyncpg.Connection, key: AccountKey) -> int:
    return (await get_account(conn, key)).balance


async def test_a_user_disputes_their_own_job_within_the_window(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    clock.advance(WINDOW - 1)

    dispute = await open_dispute(conn, ledger, "job-1", "made up facts", user_id=ALICE)

    assert (dispute.status, dispute.opened_by, dispute.user_id) == (
        DisputeStatus.OPEN,
        "user",
        ALICE,
    )
    assert (dispute.worker_id, dispute.owner_id) == (WORKER, OWNER)
    assert await get_dispute(conn, dispute.id) == dispute
    assert await list_disputes(conn, user_id=ALICE) == [dispute]
    assert await list_disputes(conn, user_id=BOB) == []
    shown = dispute.as_dict(admin=False)
    assert "worker_id" not in shown and shown["status"] == "open"
    assert dispute.as_dict(admin=True)["worker_id"] == str(WORKER)


async def test_another_users_job_or_an_unknown_one_reads_as_not_found(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    with pytest.raises(JobNotFound):
        await open_dispute(conn, ledger, "job-1", "not mine", user_id=BOB)
    with pytest.raises(JobNotFound):
        await open_dispute(conn, ledger, "job-404", "nothing", user_id=ALICE)
    assert await list_disputes(conn) == []


@pytest.mark.parametrize(
    ("job_id", "reason", "param"),
    [("job 1", "bad", "job_id"), ("job-1", "", "reason"), ("job-1", "x" * 2_001, "reason")],
)
async def test_a_dispute_with_bad_input_is_refused(
    conn: asyncpg.Connection, ledger: Ledger, job_id: str, reason: str, param: str
) -> None:
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    with pytest.raises(InvalidLedgerInput) as caught:
        await open_dispute(conn, ledger, job_id, reason, user_id=ALICE)
    assert caught.value.param == param


async def test_a_job_is_disputed_once_and_only_while_its_window_is_open(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    await charge(conn, ledger, "job-2", ALICE, WORKER, OWNER)
    await open_dispute(conn, ledger, "job-1", "bad", user_id=ALICE)
    with pytest.raises(DisputeRefused, match="disputed already"):
        await open_dispute(conn, ledger, "job-1", "again", user_id=None)
    clock.advance(WINDOW)
    with pytest.raises(DisputeRefused, match="window has closed"):
        await open_dispute(conn, ledger, "job-2", "late", user_id=ALICE)
    late = await open_dispute(conn, ledger, "job-2", "the admin may", user_id=None)
    assert late.opened_by == "admin" and late.user_id == ALICE


async def test_settled_refunded_held_or_directly_paid_jobs_cannot_be_disputed(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    await charge(conn, ledger, "settled", ALICE, WORKER, OWNER)
    clock.advance(WINDOW)
    await settle_due(conn, ledger, Trust({WORKER: 1}))
    await charge(conn, ledger, "refunded", ALICE, WORKER, OWNER)
    await ledger.refund(conn, "refunded", memo="canary failed")
    await ledger.hold(conn, "running", ALICE, 1_000)
    await charge(conn, ledger, "direct", ALICE, None, OWNER)
    cases = {
        "settled": "was settled",
        "refunded": "was refunded",
        "running": "not charged",
        "direct": "settled at posting",
    }
    for job_id, why in cases.items():
        with pytest.raises(DisputeRefused, match=why):
            await open_dispute(conn, ledger, job_id, "bad", user_id=None)
    assert await list_disputes(conn) == []


async def test_an_upheld_dispute_refunds_the_user_and_slashes_the_worker(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    await ledger.grant_trial(conn, ALICE)
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    await charge(conn, ledger, "job-2", ALICE, WORKER, OWNER)
    dispute = await open_dispute(conn, ledger, "job-1", "wrong model", user_id=ALICE)

    resolved, event = await resolve_dispute(conn, ledger, dispute.id, Decision.UPHELD, "confirmed")

    assert resolved.status is DisputeStatus.UPHELD and resolved.note == "confirmed"
    assert resolved.resolved_at is not None
    assert event is not None and resolved.slashing_event_id == event.id
    assert event.evidence["dispute_id"] == dispute.id and event.forfeited == 3_600
    assert await balance(conn, AccountKey.user(ALICE)) == 50_000
    assert await balance(conn, AccountKey.worker_earnings(WORKER)) == 0
    assert await balance(conn, POOL_FEE) == 0
    assert await balance(conn, POOL_TREASURY) == POLICY.slash_penalty
    assert await balance(conn, AccountKey.worker_owner(OWNER)) == -POLICY.slash_penalty
    again, none = await resolve_dispute(conn, ledger, dispute.id, Decision.UPHELD, "confirmed")
    assert (again, none) == (resolved, None)
    assert len(await list_events(conn)) == 1
    with pytest.raises(DisputeRefused):
        await resolve_dispute(conn, ledger, dispute.id, Decision.REJECTED, "changed my mind")
    clock.advance(WINDOW)
    assert (await settle_due(conn, ledger, Trust({WORKER: 1}))).jobs == 0
    assert (await verify(conn)).ok


async def test_a_rejected_dispute_moves_nothing_and_lists_by_status(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    await charge(conn, ledger, "job-2", BOB, WORKER, OWNER)
    first = await open_dispute(conn, ledger, "job-1", "slow", user_id=ALICE)
    second = await open_dispute(conn, ledger, "job-2", "odd", user_id=BOB)

    rejected, event = await resolve_dispute(conn, ledger, first.id, Decision.REJECTED, "fine")

    assert event is None and rejected.status is DisputeStatus.REJECTED
    assert await balance(conn, AccountKey.worker_earnings(WORKER)) == 3_600
    assert await list_disputes(conn, status=DisputeStatus.OPEN) == [second]
    assert [d.id for d in await list_disputes(conn)] == [second.id, first.id]
    assert [d.id for d in await list_disputes(conn, before=second.id)] == [first.id]


async def test_resolving_an_unknown_dispute_or_with_a_bad_note_is_refused(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    dispute = await open_dispute(conn, ledger, "job-1", "bad", user_id=ALICE)
    with pytest.raises(DisputeNotFound):
        await resolve_dispute(conn, ledger, dispute.id + 1, Decision.UPHELD, "")
    with pytest.raises(InvalidLedgerInput):
        await resolve_dispute(conn, ledger, dispute.id, Decision.UPHELD, "x\x00")
    assert (await get_dispute(conn, dispute.id)).status is DisputeStatus.OPEN
    with pytest.raises(DisputeNotFound):
        await get_dispute(conn, dispute.id + 1)
