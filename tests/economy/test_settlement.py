"""Settlement: earnings released after the dispute window to trusted workers, once; periods."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter

import asyncpg
import pytest

from economy.accounts import POOL_FEE, AccountKey, get_account
from economy.disputes import Decision, open_dispute, resolve_dispute
from economy.errors import (
    DisputeRefused,
    HoldResolved,
    IdempotencyConflict,
    InvalidLedgerInput,
    JobNotFound,
    NotReversible,
    NotSettleable,
)
from economy.ledger import Ledger
from economy.pricing import Usage
from economy.settlement import (
    close_period,
    period_statements,
    run_settlement,
    settle_due,
)
from economy.slashing import slash
from economy.transfers import TransferKind, find_transfer
from economy.verify import verify
from tests.economy.conftest import POLICY, FakeClock, Trust, charge

pytestmark = pytest.mark.anyio

ALICE = uuid.UUID("00000000-0000-4000-8000-00000000a11c")
BOB = uuid.UUID("00000000-0000-4000-8000-000000000b0b")
OWNER = uuid.UUID("00000000-0000-4000-8000-0000000000b0")
WORKER = uuid.UUID("00000000-0000-4000-8000-0000000000c1")
OTHER = uuid.UUID("00000000-0000-4000-8000-0000000000c2")
WINDOW = POLICY.dispute_window_s


async def balance(conn: asyncpg.Connection, key: AccountKey) -> int:
    return (await get_account(conn, key)).balance


async def test_an_earning_settles_to_the_owner_once_its_dispute_window_closed(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    trust = Trust({WORKER: 1})
    await ledger.grant_trial(conn, ALICE)
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)

    early = await settle_due(conn, ledger, trust)
    assert early.jobs == 0 and await balance(conn, AccountKey.worker_earnings(WORKER)) == 1_800

    clock.advance(WINDOW)
    summary = await run_settlement(conn, ledger, trust)

    assert summary.jobs == 1 and summary.amount == 1_800
    assert summary.counts() == {WORKER: 1}
    assert summary.workers[WORKER].owner_id == OWNER
    assert await balance(conn, AccountKey.worker_earnings(WORKER)) == 0
    assert await balance(conn, AccountKey.worker_owner(OWNER)) == 1_800
    settled = await find_transfer(conn, "settle:job-1")
    assert settled is not None and settled.kind is TransferKind.SETTLE and settled.amount == 1_800
    again = await run_settlement(conn, ledger, trust)
    assert again.jobs == 0 and again.period is None
    assert await balance(conn, AccountKey.worker_owner(OWNER)) == 1_800
    assert (await verify(conn)).ok


async def test_an_untrusted_workers_earning_waits_until_its_worker_is_trusted(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    trust = Trust({WORKER: 0, OTHER: 2})
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    await charge(conn, ledger, "job-2", BOB, OTHER, OWNER)
    clock.advance(WINDOW)

    first = await settle_due(conn, ledger, trust)
    assert (first.counts(), first.held) == ({OTHER: 1}, 1)
    assert await balance(conn, AccountKey.worker_earnings(WORKER)) == 1_800

    trust.levels[WORKER] = 1
    second = await settle_due(conn, ledger, trust)
    assert (second.counts(), second.held) == ({WORKER: 1}, 0)
    assert await balance(conn, AccountKey.worker_owner(OWNER)) == 3_600
    assert (await verify(conn)).ok


async def test_a_disputed_earning_is_held_while_open_and_settles_once_rejected(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    trust = Trust({WORKER: 1})
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    dispute = await open_dispute(conn, ledger, "job-1", "gibberish", user_id=ALICE)
    clock.advance(WINDOW)

    assert (await settle_due(conn, ledger, trust)).jobs == 0
    assert await find_transfer(conn, "settle:job-1") is None

    await resolve_dispute(conn, ledger, dispute.id, Decision.REJECTED, "looks fine")
    assert (await settle_due(conn, ledger, trust)).counts() == {WORKER: 1}
    assert (await verify(conn)).ok


async def test_a_refunded_earning_is_never_settled_and_a_settled_one_never_refunded(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    trust = Trust({WORKER: 1})
    refunded = await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    await charge(conn, ledger, "job-2", ALICE, WORKER, OWNER)
    await ledger.refund(conn, "job-1", memo="bad answer")
    clock.advance(WINDOW)

    assert (await settle_due(conn, ledger, trust)).counts() == {WORKER: 1}
    with pytest.raises(NotSettleable):
        await ledger.settle(conn, refunded)
    with pytest.raises(NotReversible):
        await ledger.refund(conn, "job-2", memo="too late")
    post = await find_transfer(conn, "post:job-2")
    assert post is not None
    with pytest.raises(NotReversible):
        await ledger.reverse(conn, "fix-1", post.id, memo="too late")
    assert await balance(conn, AccountKey.worker_owner(OWNER)) == 1_800
    assert (await verify(conn)).ok


async def test_a_post_that_paid_the_owner_directly_has_nothing_to_settle(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    legacy = await charge(conn, ledger, "job-1", ALICE, None, OWNER)
    clock.advance(WINDOW)
    with pytest.raises(NotSettleable):
        await ledger.settle(conn, legacy)
    assert (await settle_due(conn, ledger, Trust({OWNER: 3}))).jobs == 0
    assert await balance(conn, AccountKey.worker_owner(OWNER)) == 1_800


async def test_a_period_closes_only_when_due_and_its_statements_add_up(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    trust = Trust({WORKER: 1})
    await ledger.grant_trial(conn, ALICE)
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    clock.advance(WINDOW)
    first = (await run_settlement(conn, ledger, trust)).period
    assert first is not None and (first.settled_jobs, first.settled_amount) == (1, 1_800)
    lines = {s.account: s for s in await period_statements(conn, first.id)}
    alice = lines[str(AccountKey.user(ALICE))]
    assert (alice.opening, alice.debits, alice.credits, alice.closing) == (0, 2_000, 50_000, 48_000)
    assert lines[str(POOL_FEE)].closing == 200
    assert lines[str(AccountKey.worker_owner(OWNER))].closing == 1_800

    await charge(conn, ledger, "job-2", ALICE, WORKER, OWNER)
    assert await close_period(conn, ledger) is None  # not due yet
    clock.advance(POLICY.settlement_period_s)
    second = await close_period(conn, ledger)
    assert second is not None and second.after_entry_id == first.through_entry_id
    alice = {s.account: s for s in await period_statements(conn, second.id)}[
        str(AccountKey.user(ALICE))
    ]
    assert (alice.opening, alice.debits, alice.credits, alice.closing) == (48_000, 2_000, 0, 46_000)
    clock.advance(POLICY.settlement_period_s)
    assert await close_period(conn, ledger) is None  # nothing written since
    assert (await verify(conn)).ok


async def test_concurrent_settlement_runs_settle_every_earning_exactly_once(
    conn: asyncpg.Connection, database_url: str, clock: FakeClock
) -> None:
    trust = Trust({WORKER: 1, OTHER: 1})
    ledger = Ledger(POLICY, clock)
    for n in range(30):
        await charge(conn, ledger, f"job-{n}", ALICE, (WORKER, OTHER)[n % 2], OWNER)
    clock.advance(WINDOW)
    others = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        runs = await asyncio.gather(
            *(settle_due(c, Ledger(POLICY, clock), trust, batch=4) for c in others)
        )
    finally:
        for other in others:
            await other.close()
    assert sum(run.jobs for run in runs) == 30
    assert await balance(conn, AccountKey.worker_owner(OWNER)) == 30 * 1_800
    assert (await verify(conn)).ok


SIM_USERS = [uuid.UUID(int=1 + n) for n in range(4)]
SIM_WORKERS = [uuid.UUID(int=200 + n) for n in range(3)]
SIM_OWNER_OF = {w: (OWNER, BOB)[n % 2] for n, w in enumerate(SIM_WORKERS)}
EXPECTED_REFUSALS = (
    HoldResolved,
    IdempotencyConflict,
    DisputeRefused,
    JobNotFound,
    NotReversible,
)


class Simulation:
    """Drivers on their own connections doing seeded random work at once on one fake clock."""

    def __init__(self, seed: int, clock: FakeClock) -> None:
        self.seed, self.clock = seed, clock
        self.ledger = Ledger(POLICY, clock)
        self.trust = Trust(dict.fromkeys(SIM_WORKERS, 1))
        self.jobs: list[str] = []
        self.done: Counter[str] = Counter()

    async def drive(self, n: int, conn: asyncpg.Connection, steps: int) -> None:
        rng = random.Random(self.seed * 100 + n)
        ops = {
            self.job: 10,
            self.dispute: 3,
            self.resolve: 2,
            self.settle: 2,
            self.advance: 2,
            self.slash: 1,
            self.expire: 1,
        }
        for step in range(steps):
            [op] = rng.choices(list(ops), weights=list(ops.values()))
            try:
                await op(conn, rng, f"s{self.seed}-{n}-{step}")
            except EXPECTED_REFUSALS as refused:
                self.done[type(refused).__name__] += 1

    async def job(self, conn: asyncpg.Connection, rng: random.Random, job_id: str) -> None:
        user = rng.choice(SIM_USERS)
        await self.ledger.grant_trial(conn, user)
        await self.ledger.hold(conn, job_id, user, rng.randint(0, 8_000))
        self.jobs.append(job_id)
        ending = rng.choices(["post", "failover", "cancel", "lost"], weights=[6, 2, 1, 1])[0]
        usage = Usage(rng.choice(["small", "big"]), rng.randint(0, 900), rng.randint(0, 900))
        worker = rng.choice(SIM_WORKERS)
        if ending == "cancel":
            await self.ledger.void(conn, job_id, memo="client left")
        elif ending in ("post", "failover"):
            await self.ledger.post(conn, job_id, usage, SIM_OWNER_OF[worker], worker_id=worker)
            self.done["posted"] += 1
            if ending == "failover":  # the first worker's late answer: refused, never charged
                first = next(w for w in SIM_WORKERS if w != worker)
                await self.ledger.post(conn, job_id, usage, SIM_OWNER_OF[first], worker_id=first)

    async def dispute(self, conn: asyncpg.Connection, rng: random.Random, _: str) -> None:
        if not self.jobs:
            return
        job_id = rng.choice(self.jobs)
        hold = await find_transfer(conn, f"hold:{job_id}")
        assert hold is not None
        user = rng.choice([uuid.UUID(hold.request["user"]), None, rng.choice(SIM_USERS)])
        await open_dispute(conn, self.ledger, job_id, "looks wrong", user_id=user)
        self.done["disputed"] += 1

    async def resolve(self, conn: asyncpg.Connection, rng: random.Random, _: str) -> None:
        open_ids = await conn.fetch("SELECT id FROM disputes WHERE status = 'open'")
        if open_ids:
            decision = rng.choice([Decision.UPHELD, Decision.REJECTED])
            row = rng.choice(open_ids)
            await resolve_dispute(conn, self.ledger, row["id"], decision, "")
            self.done[decision.value] += 1

    async def settle(self, conn: asyncpg.Connection, rng: random.Random, _: str) -> None:
        self.trust.levels[rng.choice(SIM_WORKERS)] = rng.choice([0, 1, 1, 2])
        self.done["settled"] += (await run_settlement(conn, self.ledger, self.trust)).jobs

    async def advance(self, conn: asyncpg.Connection, rng: random.Random, _: str) -> None:
        self.clock.advance(rng.randint(60, WINDOW))

    async def slash(self, conn: asyncpg.Connection, rng: random.Random, key: str) -> None:
        worker = rng.choice(SIM_WORKERS)
        await slash(conn, self.ledger, worker, SIM_OWNER_OF[worker], "canary", {}, 10, key=key)
        self.done["slashed"] += 1

    async def expire(self, conn: asyncpg.Connection, rng: random.Random, _: str) -> None:
        await self.ledger.expire_holds(conn)


_LEFT_UNSETTLED = """
SELECT p.job_id FROM ledger_transfers p
WHERE p.kind = 'post' AND p.request ? 'worker_id'
  AND NOT EXISTS (SELECT 1 FROM ledger_transfers s WHERE s.kind = 'settle' AND s.job_id = p.job_id)
  AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.reverses_id = p.id)
  AND NOT EXISTS (SELECT 1 FROM disputes d WHERE d.job_id = p.job_id AND d.status = 'open')
"""

_SETTLED_WHILE_DISPUTED = """
SELECT s.job_id FROM ledger_transfers s JOIN disputes d ON d.job_id = s.job_id
WHERE s.kind = 'settle' AND d.status IN ('open', 'upheld')
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_seeded_simulation_of_interleaved_jobs_disputes_and_settlements_keeps_the_books(
    conn: asyncpg.Connection, database_url: str, clock: FakeClock, seed: int
) -> None:
    sim = Simulation(seed, clock)
    drivers = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        await asyncio.gather(*(sim.drive(n, c, 40) for n, c in enumerate(drivers)))
    finally:
        for driver in drivers:
            await driver.close()
    sim.trust.levels = dict.fromkeys(SIM_WORKERS, 1)
    clock.advance(2 * WINDOW)
    await run_settlement(conn, sim.ledger, sim.trust)

    tried = sim.done["disputed"] + sim.done["DisputeRefused"] + sim.done["JobNotFound"]
    assert sim.done["posted"] and sim.done["IdempotencyConflict"] and tried
    report = await verify(conn)
    assert report.ok, report.problems
    assert await conn.fetch(_LEFT_UNSETTLED) == []
    assert await conn.fetch(_SETTLED_WHILE_DISPUTED) == []
    charged = await conn.fetch(
        "SELECT job_id FROM ledger_transfers WHERE kind IN ('post', 'settle') "
        "GROUP BY job_id, kind HAVING count(*) > 1"
    )
    assert charged == []


async def test_an_unsettled_earning_moves_only_by_settlement_or_refund(
    conn: asyncpg.Connection, ledger: Ledger
) -> None:
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    earnings = AccountKey.worker_earnings(WORKER)
    with pytest.raises(InvalidLedgerInput):
        await ledger.correct(conn, "fix-1", earnings, AccountKey.user(ALICE), 100, memo="x")
    with pytest.raises(InvalidLedgerInput):
        await ledger.mint(conn, "mint-1", earnings, 100, memo="x")
    assert await balance(conn, earnings) == 1_800
    assert (await verify(conn)).ok


async def test_verify_reports_tampered_statements_periods_disputes_and_slashing_events(
    conn: asyncpg.Connection, ledger: Ledger, clock: FakeClock
) -> None:
    trust = Trust({WORKER: 1})
    await charge(conn, ledger, "job-1", ALICE, WORKER, OWNER)
    await charge(conn, ledger, "job-2", ALICE, WORKER, OWNER)
    await open_dispute(conn, ledger, "job-2", "bad", user_id=ALICE)
    clock.advance(WINDOW)
    period = (await run_settlement(conn, ledger, trust)).period
    assert period is not None and (await verify(conn)).ok
    await conn.execute(
        "UPDATE ledger_statements SET credits = credits + 1, closing = closing + 1 "
        "WHERE period_id = $1",
        period.id,
    )
    await conn.execute(
        "INSERT INTO ledger_periods (after_entry_id, through_entry_id, settled_jobs, "
        "settled_amount, closed_at) VALUES ($1, $2, 0, 0, now())",
        period.through_entry_id + 5,
        period.through_entry_id + 9,
    )
    await conn.execute("UPDATE disputes SET status = 'upheld', resolved_at = now()")
    settle = await find_transfer(conn, "settle:job-1")
    assert settle is not None
    await conn.execute(
        "INSERT INTO slashing_events (key, worker_id, owner_id, reason, amount, forfeited, "
        "reversal_ids, created_at) VALUES ('forged', $1, $2, 'r', 0, 0, $3, now())",
        WORKER,
        OWNER,
        [settle.id],
    )

    problems = "\n".join((await verify(conn)).problems)

    assert f"period {period.id}: statement of" in problems
    assert "does not start where the previous one ended" in problems
    assert "upheld but job job-2 is not refunded" in problems
    assert "settle:job-2" not in problems  # job-2 was never settled
    assert "slashing event forged: names transfers that are not its own" in problems
