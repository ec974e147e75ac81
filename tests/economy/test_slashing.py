"""Slashing: unsettled earnings forfeited (users refunded), a penalty to the treasury, once."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from economy.accounts import POOL_FEE, POOL_TREASURY, AccountKey, get_account
from economy.errors import IdempotencyConflict, InvalidLedgerInput
from economy.ledger import Ledger
from economy.settlement import settle_due
from economy.slashing import list_events, slash
from economy.transfers import TransferKind, find_transfer, transfer_by_id
from economy.verify import verify
from tests.economy.conftest import POLICY, FakeClock, Trust, charge

pytestmark = pytest.mark.anyio

ALICE = uuid.UUID("00000000-0000-4000-8000-00000000a11c")
BOB = uuid.UUID("00000000-0000-4000-8000-000000000b0b")
OWNER = uuid.UUID("00000000-0000-4000-8000-0000000000b0")
WORKER = uuid.UUID("00000000-0000-4000-8000-0000000000c1")
OTHER = uuid.UUID("00000000-0000-4000-8000-0000000000c2")
PENALTY = POLICY.slash_penalty
EVIDENCE = {"canary": "2+2", "expected": "4", "got": "5"}


async def balance(conn: asyncpg.Connection, key: AccountKey) -> int:
    return (await get_account(conn, key)).balance


async def test_a_slash_refunds_every_unsettled_job_and_takes_the_penalty_from_the_owner(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    for user in (ALICE, BOB):
        await ledger.grant_trial(conn, user)
    await charge(conn, ledger, "old", ALICE, WORKER, OWNER)
    clock.advance(POLICY.dispute_window_s)
    await settle_due(conn, ledger, Trust({WORKER: 1}))
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    await charge(conn, ledger, "job-2", BOB, WORKER, OWNER)
    await charge(conn, ledger, "other", BOB, OTHER, OWNER)

    event = await slash(
        conn, ledger, WORKER, OWNER, "wrong canary", EVIDENCE, PENALTY, key="canary-1"
    )

    assert (event.forfeited, event.amount, len(event.reversal_ids)) == (3_600, PENALTY, 2)
    assert event.evidence == EVIDENCE and event.reason == "wrong canary"
    assert await balance(conn, AccountKey.user(ALICE)) == 50_000 - 2_000  # "old" stays charged
    assert await balance(conn, AccountKey.user(BOB)) == 50_000 - 2_000  # "other" stays charged
    assert await balance(conn, AccountKey.worker_earnings(WORKER)) == 0
    assert await balance(conn, AccountKey.worker_earnings(OTHER)) == 1_800
    assert await balance(conn, AccountKey.worker_owner(OWNER)) == 1_800 - PENALTY  # a debt
    assert await balance(conn, POOL_FEE) == 400
    assert await balance(conn, POOL_TREASURY) == PENALTY
    penalty = await transfer_by_id(conn, event.penalty_transfer_id or 0)
    assert penalty is not None and penalty.kind is TransferKind.SLASH
    assert await find_transfer(conn, "refund:job-1") is not None
    assert (await verify(conn)).ok


async def test_the_same_slash_key_again_returns_the_first_event_and_moves_nothing(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    first = await slash(conn, ledger, WORKER, OWNER, "wrong", EVIDENCE, PENALTY, key="k-1")
    await charge(conn, ledger, "job-2", ALICE, WORKER, OWNER)

    again = await slash(conn, ledger, WORKER, OWNER, "wrong", EVIDENCE, PENALTY, key="k-1")

    assert again == first
    assert await balance(conn, AccountKey.worker_earnings(WORKER)) == 1_800  # job-2 untouched
    assert await balance(conn, AccountKey.worker_owner(OWNER)) == -PENALTY
    with pytest.raises(IdempotencyConflict):
        await slash(conn, ledger, OTHER, OWNER, "wrong", EVIDENCE, PENALTY, key="k-1")


async def test_a_slash_without_penalty_or_earnings_records_the_event_alone(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    event = await slash(conn, ledger, WORKER, OWNER, "forged usage", {}, 0, key="k-0")
    assert (event.forfeited, event.amount, event.penalty_transfer_id) == (0, 0, None)
    assert event.reversal_ids == ()
    assert [e.id for e in await list_events(conn)] == [event.id]
    assert (await verify(conn)).ok


@pytest.mark.parametrize(
    ("key", "reason", "evidence", "penalty", "param"),
    [
        ("bad key", "r", {}, 1, "key"),
        ("k" * 191, "r", {}, 1, "key"),
        ("k", " ", {}, 1, "reason"),
        ("k", "r\x00", {}, 1, "reason"),
        ("k", "r", {"x": "\x00"}, 1, "evidence"),
        ("k", "r", {"x": object()}, 1, "evidence"),
        ("k", "r", {}, -1, "penalty"),
    ],
)
async def test_a_slash_with_bad_input_is_refused_before_anything_moves(
    conn: asyncpg.Connection,
    ledger: Ledger,
    key: str,
    reason: str,
    evidence: dict[str, object],
    penalty: int,
    param: str,
) -> None:
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    with pytest.raises(InvalidLedgerInput) as caught:
        await slash(conn, ledger, WORKER, OWNER, reason, evidence, penalty, key=key)
    assert caught.value.param == param
    assert await balance(conn, AccountKey.worker_earnings(WORKER)) == 1_800
    assert await list_events(conn) == []


async def test_a_slash_rolled_back_with_its_callers_transaction_leaves_no_trace(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    outer = conn.transaction()
    await outer.start()
    await slash(conn, ledger, WORKER, OWNER, "wrong", EVIDENCE, PENALTY, key="k-1")
    await outer.rollback()  # the hub's trust reset failed after it
    assert await balance(conn, AccountKey.worker_earnings(WORKER)) == 1_800
    assert await find_transfer(conn, "refund:job-1") is None
    assert await list_events(conn) == []
    assert (await verify(conn)).ok


async def test_slashing_events_list_newest_first_by_worker_and_page_back(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    made = [
        await slash(conn, ledger, (WORKER, OTHER)[n % 2], OWNER, "r", {"n": n}, 0, key=f"k-{n}")
        for n in range(5)
    ]
    newest = await list_events(conn, limit=2)
    assert [e.id for e in newest] == [made[4].id, made[3].id]
    older = await list_events(conn, limit=10, before=newest[-1].id)
    assert [e.id for e in older] == [made[2].id, made[1].id, made[0].id]
    assert [e.evidence["n"] for e in await list_events(conn, worker_id=OTHER)] == [3, 1]
