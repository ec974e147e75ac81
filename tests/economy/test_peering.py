"""Reconciling two pools' books of the chats between them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from economy.accounts import AccountKey, get_account
from economy.disputes import open_dispute
from economy.errors import DisputeRefused, InvalidLedgerInput, JobNotFound
from economy.ledger import Ledger
from economy.peering import PeerJob, forwarded_to, parse_lines, reconcile, served_for
from economy.pricing import Usage
from economy.verify import verify
from tests.economy.conftest import POLICY, FakeClock

ALICE, OWNER, WORKER = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

AT = datetime(2026, 1, 1, tzinfo=UTC)


def _lines(**amounts: int) -> list[PeerJob]:
    return [PeerJob(job, amount, AT) for job, amount in amounts.items()]


def test_the_same_chats_for_the_same_amounts_balance() -> None:
    result = reconcile(_lines(a=5, b=7), _lines(b=7, a=5))
    assert result.balanced
    assert (result.ours, result.theirs, result.jobs) == (12, 12, 2)


def test_missing_and_differing_chats_are_named() -> None:
    result = reconcile(_lines(a=5, b=7, c=1), _lines(a=5, b=8, d=2))
    assert not result.balanced
    assert (result.only_ours, result.only_theirs, result.differ) == (["c"], ["d"], ["b"])
    assert result.as_dict()["balanced"] is False


def test_a_statement_reads_back_and_a_malformed_one_is_refused() -> None:
    lines = _lines(a=5)
    assert parse_lines([line.as_dict() for line in lines]) == lines
    for bad in ({"job": "a"}, [{"job": "a", "amount": "x", "at": "now"}], [{"amount": 1}]):
        with pytest.raises(InvalidLedgerInput):
            parse_lines(bad)


@pytest.mark.anyio
async def test_a_peer_pays_like_a_user_and_both_sides_list_the_chat(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    peer, usage = "iam1peer", Usage("small", 1_000, 500)
    await ledger.hold(conn, "served-1", AccountKey.peer_pool(peer), 5_000)
    served = await ledger.post(conn, "served-1", usage, OWNER, worker_id=WORKER)
    await ledger.hold(conn, "sent-1", ALICE, 5_000)
    sent = await ledger.post_to_peer(conn, "sent-1", usage, peer, 1_234)

    since = datetime(2000, 1, 1, tzinfo=UTC)
    assert [(j.job, j.amount) for j in await served_for(conn, peer, since)] == [
        ("served-1", served.amount)
    ]
    assert [(j.job, j.amount) for j in await forwarded_to(conn, peer, since)] == [("sent-1", 1_234)]
    assert sent.amount == 1_234
    assert (await get_account(conn, AccountKey.peer_pool(peer))).balance == 1_234 - served.amount
    assert await ledger.post_to_peer(conn, "sent-1", usage, peer, 1_234) == sent  # idempotent
    assert not (await verify(conn)).problems


@pytest.mark.anyio
async def test_a_peer_s_expired_hold_is_swept_and_its_job_cannot_be_disputed(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    payer = AccountKey.peer_pool("iam1peer")
    await ledger.hold(conn, "served-2", payer, 5_000)
    clock.advance(POLICY.hold_ttl_s + 1)
    assert await ledger.expire_holds(conn) == 1
    await ledger.hold(conn, "served-3", payer, 5_000)
    await ledger.post(conn, "served-3", Usage("small", 10, 10), OWNER, worker_id=WORKER)
    with pytest.raises(DisputeRefused):
        await open_dispute(conn, ledger, "served-3", "bad answer", user_id=None)
    with pytest.raises(JobNotFound):
        await open_dispute(conn, ledger, "served-3", "bad answer", user_id=ALICE)
    assert not (await verify(conn)).problems


@pytest.mark.anyio
async def test_only_users_and_peer_pools_pay_for_jobs(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    with pytest.raises(InvalidLedgerInput):
        await ledger.hold(conn, "job-x", AccountKey.worker_owner(OWNER), 5_000)
