"""The ledger as a hypothesis state machine, checked step by step against an in-memory model.

The model is written from the rules in docs/economy.md, not from the SQL: plain dictionaries of
balances and jobs, each job with its worker's unsettled earning, settlement, dispute and refund.
Each example runs on its own fresh database (a copy of the migrated template) and a fake clock;
after every step the database must agree with the model and ``verify`` must find nothing wrong.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from economy.accounts import CLEARING, POOL_TREASURY, AccountKey, AccountKind, get_account
from economy.disputes import Decision, open_dispute, resolve_dispute
from economy.errors import (
    AccountNotFound,
    DisputeRefused,
    HoldExpired,
    HoldResolved,
    IdempotencyConflict,
    JobNotFound,
    NotReversible,
)
from economy.ledger import HoldState, Ledger
from economy.pricing import Usage
from economy.settlement import run_settlement
from economy.slashing import slash
from economy.transfers import Transfer, TransferKind, find_transfer
from economy.verify import verify
from tests.conftest import TEMPLATE_DB, database_uri
from tests.economy.conftest import POLICY, FakeClock
from tests.fuzzing import fuzz_settings

USERS = [uuid.UUID(int=i + 1) for i in range(3)]
OWNERS = [uuid.UUID(int=100 + i) for i in range(2)]
WORKERS = [uuid.UUID(int=200 + i) for i in range(3)]
OWNER_OF = {worker: OWNERS[n % len(OWNERS)] for n, worker in enumerate(WORKERS)}
WINDOW = timedelta(seconds=POLICY.dispute_window_s)
MODELS = ["small", "big"]
TTL = timedelta(seconds=POLICY.hold_ttl_s)


@dataclass
class Job:
    """The model of one job's hold."""

    user: uuid.UUID
    amount: int
    expires_at: datetime
    state: HoldState = HoldState.OPEN
    swept: bool = False
    resolution: Transfer | None = None
    posted_with: tuple[Usage, uuid.UUID, uuid.UUID | None] | None = None
    earning: Charge | None = None
    """For a post that named its worker: the charge holding the unsettled earning."""
    settled: bool = False
    dispute: str | None = None
    dispute_id: int = 0


@dataclass
class Charge:
    """A posted transfer the model can reverse: its id and what it moved per account."""

    transfer: Transfer
    moves: dict[str, int]
    reversal: Transfer | None = None
    worker: uuid.UUID | None = None
    share: int = 0


class LedgerMachine(RuleBasedStateMachine):
    """Random holds, posts, voids, expiries, grants, corrections, reversals, settlements,
    disputes and slashes."""

    admin_uri = ""
    jobs = Bundle("jobs")
    charges = Bundle("charges")

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.name = f"h_{uuid.uuid4().hex[:16]}"
        self.runner.run(self._admin(f"CREATE DATABASE {self.name} TEMPLATE {TEMPLATE_DB}"))
        self.conn: asyncpg.Connection = self.runner.run(
            asyncpg.connect(database_uri(self.admin_uri, self.name))
        )
        self.clock = FakeClock()
        self.ledger = Ledger(POLICY, self.clock)
        self.balances: dict[str, int] = {}
        self.model_jobs: dict[str, Job] = {}
        self.granted: set[uuid.UUID] = set()
        self.trust = dict.fromkeys(WORKERS, 0)
        self.next_job = 0
        self.next_key = 0

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.admin_uri)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def teardown(self) -> None:
        """Close the connection and drop the example's database."""
        self.runner.run(self.conn.close())
        self.runner.run(self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)"))
        self.runner.close()

    # The model's own reading of the rules.

    def move(self, account: AccountKey, delta: int) -> None:
        self.balances[str(account)] = self.balances.get(str(account), 0) + delta

    def pending_of(self, user: uuid.UUID) -> int:
        return sum(j.amount for j in self.model_jobs.values() if j.user == user and self.is_open(j))

    def is_open(self, job: Job) -> bool:
        """Still reserved: neither resolved nor swept (an expired one reads as voided)."""
        return job.state is HoldState.OPEN

    def is_live(self, job: Job) -> bool:
        return self.is_open(job) and job.expires_at > self.clock.now

    def sweep(self, user: uuid.UUID | None) -> int:
        swept = 0
        for job in self.model_jobs.values():
            if (user is None or job.user == user) and self.is_open(job) and not self.is_live(job):
                job.state, job.swept = HoldState.EXPIRED, True
                swept += 1
        return swept

    # Rules.

    @rule(target=jobs, user=st.sampled_from(USERS), amount=st.integers(0, 20_000))
    def hold(self, user: uuid.UUID, amount: int) -> str:
        job_id = f"job-{self.next_job}"
        self.next_job += 1
        if self.pending_of(user):  # a hold first releases the user's expired reservations
            self.sweep(user)
        available = self.balances.get(str(AccountKey.user(user)), 0) - self.pending_of(user)
        hold = self.runner.run(self.ledger.hold(self.conn, job_id, user, amount))
        assert hold.funded == (available - amount >= -POLICY.overdraft)
        self.balances.setdefault(str(AccountKey.user(user)), 0)
        self.model_jobs[job_id] = Job(user, amount, self.clock.now + TTL)
        return job_id

    @rule(job_id=jobs, other_amount=st.booleans())
    def hold_again(self, job_id: str, other_amount: bool) -> None:
        job = self.model_jobs[job_id]
        amount = job.amount + 1 if other_amount else job.amount
        if other_amount:
            with pytest.raises(IdempotencyConflict):
                self.runner.run(self.ledger.hold(self.conn, job_id, job.user, amount))
        else:
            again = self.runner.run(self.ledger.hold(self.conn, job_id, job.user, amount))
            assert again.job_id == job_id and again.amount == job.amount

    @rule(
        target=charges,
        job_id=jobs,
        model=st.sampled_from(MODELS),
        prompt=st.integers(0, 3_000),
        completion=st.integers(0, 3_000),
        owner=st.sampled_from(OWNERS),
        worker=st.sampled_from([None, *WORKERS]),
    )
    def post(
        self,
        job_id: str,
        model: str,
        prompt: int,
        completion: int,
        owner: uuid.UUID,
        worker: uuid.UUID | None,
    ) -> Charge | MultipleResults[Charge]:
        job, usage = self.model_jobs[job_id], Usage(model, prompt, completion)
        if worker is not None:
            owner = OWNER_OF[worker]
        call = self.ledger.post(self.conn, job_id, usage, owner, worker_id=worker)
        if job.state is HoldState.POSTED:
            if job.posted_with == (usage, owner, worker):
                assert self.runner.run(call) == job.resolution
            else:
                with pytest.raises(IdempotencyConflict):
                    self.runner.run(call)
            return multiple()
        if job.state is HoldState.VOIDED:
            with pytest.raises(HoldResolved) as refused:
                self.runner.run(call)
            assert type(refused.value) is HoldResolved
            return multiple()
        if not self.is_live(job):
            with pytest.raises(HoldExpired):
                self.runner.run(call)
            return multiple()
        posted = self.runner.run(call)
        cost = POLICY.cost(usage)
        share, fee = POLICY.split(cost)
        earner = AccountKey.worker_owner(owner) if worker is None else self.earnings(worker)
        moves = {str(AccountKey.user(job.user)): -cost, str(earner): share, "pool_fee": fee}
        for name, delta in moves.items():
            self.balances[name] = self.balances.get(name, 0) + delta
        job.state, job.resolution, job.posted_with = (
            HoldState.POSTED,
            posted,
            (usage, owner, worker),
        )
        charge = Charge(posted, moves, worker=worker, share=share)
        if worker is not None:
            job.earning = charge
        return charge

    @rule(job_id=jobs)
    def void(self, job_id: str) -> None:
        job = self.model_jobs[job_id]
        call = self.ledger.void(self.conn, job_id)
        if job.state is HoldState.POSTED:
            with pytest.raises(HoldResolved):
                self.runner.run(call)
            return
        voided = self.runner.run(call)
        if job.state is HoldState.OPEN:
            job.state, job.resolution = HoldState.VOIDED, voided
        elif job.resolution is None:  # swept: the model learns the expiry's transfer now
            job.resolution = voided
        assert voided == job.resolution and voided.job_id == job_id
        expected = TransferKind.EXPIRE if job.swept else TransferKind.VOID
        assert voided.kind is expected

    @rule(seconds=st.integers(1, 400))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule()
    def expire_holds(self) -> None:
        swept = self.runner.run(self.ledger.expire_holds(self.conn))
        assert swept == self.sweep(None)

    @rule(target=charges, user=st.sampled_from(USERS))
    def grant(self, user: uuid.UUID) -> Charge | MultipleResults[Charge]:
        granted = self.runner.run(self.ledger.grant_trial(self.conn, user))
        if user in self.granted:
            return multiple()
        self.granted.add(user)
        moves = {str(AccountKey.user(user)): POLICY.trial_grant, "trial_grant": -POLICY.trial_grant}
        for name, delta in moves.items():
            self.balances[name] = self.balances.get(name, 0) + delta
        return Charge(granted, moves)

    @rule(owner=st.sampled_from(OWNERS), user=st.sampled_from(USERS), amount=st.integers(1, 900))
    def correct(self, owner: uuid.UUID, user: uuid.UUID, amount: int) -> None:
        debit, credit = AccountKey.worker_owner(owner), AccountKey.user(user)
        key = f"fix-{self.next_key}"
        self.next_key += 1
        call = self.ledger.correct(self.conn, key, debit, credit, amount, memo="refund")
        if str(debit) not in self.balances or str(credit) not in self.balances:
            with pytest.raises(AccountNotFound):
                self.runner.run(call)
            return
        self.runner.run(call)
        self.move(debit, -amount)
        self.move(credit, amount)

    @rule(charge=charges, same_key=st.booleans())
    def reverse(self, charge: Charge, same_key: bool) -> None:
        key = f"rev-{charge.transfer.id}" if same_key else f"rev-again-{self.next_key}"
        self.next_key += 1
        call = self.ledger.reverse(self.conn, key, charge.transfer.id, memo="undo")
        if charge.reversal is None and not self.settled(charge):
            charge.reversal = self.runner.run(call)
            for name, delta in charge.moves.items():
                self.balances[name] -= delta
        elif same_key and charge.reversal is not None and charge.reversal.key == key:
            assert self.runner.run(call) == charge.reversal
        else:
            with pytest.raises(NotReversible):
                self.runner.run(call)

    # Settlement, disputes and slashing.

    def earnings(self, worker: uuid.UUID) -> AccountKey:
        return AccountKey.worker_earnings(worker)

    def settled(self, charge: Charge) -> bool:
        return any(j.settled for j in self.model_jobs.values() if j.earning is charge)

    def unsettled(self, job: Job) -> bool:
        """An earning still held for its worker: neither settled nor refunded."""
        return job.earning is not None and not job.settled and job.earning.reversal is None

    @rule(worker=st.sampled_from(WORKERS), level=st.integers(0, 3))
    def set_trust(self, worker: uuid.UUID, level: int) -> None:
        self.trust[worker] = level

    @rule()
    def pass_the_dispute_window(self) -> None:
        self.clock.advance(POLICY.dispute_window_s)

    @rule()
    def settle(self) -> None:
        due = [
            job
            for job in self.model_jobs.values()
            if self.unsettled(job)
            and job.dispute not in ("open", "upheld")
            and job.resolution is not None
            and job.resolution.created_at + WINDOW <= self.clock.now
        ]
        expected: dict[uuid.UUID, int] = {}
        for job in due:
            assert job.earning is not None and job.earning.worker is not None
            if self.trust[job.earning.worker] < 1:
                continue
            worker = job.earning.worker
            expected[worker] = expected.get(worker, 0) + 1
            self.move(self.earnings(worker), -job.earning.share)
            self.move(AccountKey.worker_owner(OWNER_OF[worker]), job.earning.share)
            job.settled = True

        async def trusted(conn: asyncpg.Connection, worker: uuid.UUID) -> bool:
            return self.trust[worker] >= 1

        summary = self.runner.run(run_settlement(self.conn, self.ledger, trusted))
        assert summary.counts() == expected

    def slashed(self, worker: uuid.UUID) -> None:
        """The model of a slash: the worker's unsettled earnings refunded, the penalty taken."""
        for job_id, job in self.model_jobs.items():
            if self.unsettled(job) and job.earning is not None and job.earning.worker == worker:
                refund = self.runner.run(find_transfer(self.conn, f"refund:{job_id}"))
                assert refund is not None
                job.earning.reversal = refund
                for name, delta in job.earning.moves.items():
                    self.balances[name] -= delta
        self.move(AccountKey.worker_owner(OWNER_OF[worker]), -POLICY.slash_penalty)
        self.move(POOL_TREASURY, POLICY.slash_penalty)

    @rule(worker=st.sampled_from(WORKERS))
    def slash(self, worker: uuid.UUID) -> None:
        key = f"slash-{self.next_key}"
        self.next_key += 1
        call = slash(
            self.conn, self.ledger, worker, OWNER_OF[worker], "canary", {}, 10_000, key=key
        )
        event = self.runner.run(call)
        self.slashed(worker)
        assert event.amount == POLICY.slash_penalty == 10_000

    @rule(job_id=jobs, by=st.sampled_from(["user", "admin", "another user"]))
    def dispute(self, job_id: str, by: str) -> None:
        job = self.model_jobs[job_id]
        user = {"user": job.user, "admin": None}.get(by, USERS[USERS.index(job.user) - 1])
        call = open_dispute(self.conn, self.ledger, job_id, "bad answer", user_id=user)
        if by == "another user":
            with pytest.raises(JobNotFound):
                self.runner.run(call)
            return
        late = by == "user" and (
            job.resolution is not None and job.resolution.created_at + WINDOW <= self.clock.now
        )
        if job.state is not HoldState.POSTED or not self.unsettled(job) or job.dispute or late:
            with pytest.raises(DisputeRefused):
                self.runner.run(call)
            return
        opened = self.runner.run(call)
        job.dispute, job.dispute_id = "open", opened.id

    @rule(job_id=jobs, upheld=st.booleans())
    def resolve(self, job_id: str, upheld: bool) -> None:
        job = self.model_jobs[job_id]
        if job.dispute != "open":
            return
        decision = Decision.UPHELD if upheld else Decision.REJECTED
        self.runner.run(resolve_dispute(self.conn, self.ledger, job.dispute_id, decision, ""))
        job.dispute = decision.value
        if upheld:
            assert job.earning is not None and job.earning.worker is not None
            self.slashed(job.earning.worker)

    @rule(job_id=jobs)
    def read_state(self, job_id: str) -> None:
        job = self.model_jobs[job_id]
        expected = (
            HoldState.EXPIRED
            if job.state is HoldState.OPEN and not self.is_live(job)
            else job.state
        )
        assert self.runner.run(self.ledger.hold_state(self.conn, job_id)) is expected

    # Invariants.

    @invariant()
    def balances_match_the_model(self) -> None:
        for name, expected in self.balances.items():
            kind, _, ref = name.partition(":")
            account = self.runner.run(get_account(self.conn, AccountKey(AccountKind(kind), ref)))
            assert account.balance == expected, name
            if kind == "user":
                assert account.debits_pending == self.pending_of(uuid.UUID(ref)), name

    @invariant()
    def clearing_carries_exactly_the_open_holds(self) -> None:
        clearing = self.runner.run(get_account(self.conn, CLEARING))
        open_amount = sum(j.amount for j in self.model_jobs.values() if self.is_open(j))
        assert clearing.credits_pending == open_amount
        if not any(self.is_open(j) for j in self.model_jobs.values()):
            assert (clearing.balance, clearing.pending) == (0, 0)

    @invariant()
    def verify_finds_nothing_wrong(self) -> None:
        report = self.runner.run(verify(self.conn))
        assert report.ok, report.problems
        posted = sum(1 for j in self.model_jobs.values() if j.state is HoldState.POSTED)
        assert report.posted_jobs == posted


def test_the_ledger_agrees_with_its_model_under_random_operations(pg_admin_uri: str) -> None:
    LedgerMachine.admin_uri = pg_admin_uri
    run_state_machine_as_test(
        LedgerMachine, settings=settings(fuzz_settings(25), stateful_step_count=30)
    )
