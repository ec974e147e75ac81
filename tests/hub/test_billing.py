"""The chat path on the $IAMINE ledger (hub/billing.py): hold, then post or void, exactly once.

A live hub with workers driven by hand over the real WebSocket (``raw_worker``), so a test
decides what the worker streams, what usage it claims and when it fails. The hub books off the
request path, so each test waits (a bounded poll) for the ledger to show the chat's ending.
The service's own failure paths (an expired hold, a full queue) run in-process on a real
database with a clock the test turns.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import httpx
import pytest

from economy.accounts import AccountKey
from economy.ledger import HoldState, Ledger
from economy.pricing import LedgerPolicy, Usage
from economy.verify import verify
from hub import accounts
from hub.billing import UNFUNDED_PRIORITY, Billing, hub_usage, prompt_bytes
from hub.config import EconomySettings
from hub.observability import Metrics
from inference import identity
from inference.dispatch import JobEvent
from inference.link import JobHandle, WorkerLink
from inference.pool_config import PoolConfig
from inference.protocol import Chunk, Delta, Done, Job, SamplingParams
from inference.protocol import Usage as WireUsage
from tests.hub.conftest import LiveHub, wait_until
from tests.hub.raw_worker import raw_worker, receive

pytestmark = pytest.mark.anyio
POLICY = LedgerPolicy()


@dataclasses.dataclass(frozen=True)
class Payer:
    """A user of the live hub with a token of their own (tests never share a ledger account)."""

    id: UUID
    token: str


@dataclasses.dataclass(frozen=True)
class Volunteer:
    """A worker owner with one established worker record and its token."""

    owner_id: UUID
    record_id: UUID
    token: str


async def new_payer(hub: LiveHub) -> Payer:
    conn = await asyncpg.connect(hub.database_url)
    try:
        user = await accounts.create_user(conn, f"payer-{uuid.uuid4().hex[:8]}")
        issued = await accounts.create_token(conn, user_id=user.id, scopes=("user",))
    finally:
        await conn.close()
    return Payer(user.id, issued.token)


async def new_volunteer(hub: LiveHub) -> Volunteer:
    conn = await asyncpg.connect(hub.database_url)
    try:
        user = await accounts.create_user(conn, f"vol-{uuid.uuid4().hex[:8]}")
        record = await identity.register_worker(
            conn, name=user.name, owner_id=user.id, trust=2, reason="test worker"
        )
        issued = await accounts.create_token(
            conn, user_id=user.id, scopes=("worker",), worker_id=record.id
        )
    finally:
        await conn.close()
    return Volunteer(user.id, record.id, issued.token)


def ask(hub: LiveHub, payer: Payer, model: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(
        f"{hub.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {payer.token}"},
        timeout=30,
    )


async def ask_later(hub: LiveHub, payer: Payer, model: str, into: list[httpx.Response]) -> None:
    into.append(await anyio.to_thread.run_sync(ask, hub, payer, model))


async def job_transfers(hub: LiveHub, payer: Payer) -> list[asyncpg.Record]:
    """Every job transfer (hold, post, void, expire) of the payer's chats, oldest first."""
    conn = await asyncpg.connect(hub.database_url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT kind, job_id, amount, request, memo FROM ledger_transfers WHERE job_id IN "
            "(SELECT job_id FROM ledger_transfers WHERE kind = 'hold' AND request->>'user' = $1) "
            "ORDER BY id",
            str(payer.id),
        )
        return rows
    finally:
        await conn.close()


async def settled(hub: LiveHub, payer: Payer, jobs: int = 1) -> list[asyncpg.Record]:
    """The payer's job transfers once ``jobs`` chats were posted or voided."""
    ended: list[asyncpg.Record] = []

    def done() -> bool:
        rows = anyio.from_thread.run(job_transfers, hub, payer)
        ended[:] = rows
        return sum(r["kind"] in ("post", "void") for r in rows) >= jobs

    await anyio.to_thread.run_sync(wait_until, done, 30, "the chat's ledger ending")
    return ended


async def balance(hub: LiveHub, key: AccountKey) -> int:
    conn = await asyncpg.connect(hub.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT credits_posted - debits_posted AS b FROM ledger_accounts "
            "WHERE kind = $1 AND ref = $2",
            key.kind.value,
            key.ref,
        )
        return 0 if row is None else int(row["b"])
    finally:
        await conn.close()


async def books_balance(hub: LiveHub) -> None:
    conn = await asyncpg.connect(hub.database_url)
    try:
        report = await verify(conn)
    finally:
        await conn.close()
    assert report.ok, report.problems


async def finish(ws: Any, job: dict[str, Any], chunks: list[str], usage: tuple[int, int]) -> None:
    for text in chunks:
        frame = {"type": "chunk", "job_id": job["job_id"], "delta": {"content": text}}
        await ws.send(json.dumps(frame))
    prompt, completion = usage
    await ws.send(
        json.dumps(
            {
                "type": "done",
                "job_id": job["job_id"],
                "finish_reason": "stop",
                "model": job["model"],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
        )
    )


def admin(hub: LiveHub) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.admin_token}"}


@pytest.fixture
def policy(live_hub: LiveHub) -> Iterator[None]:
    yield
    httpx.put(f"{live_hub.url}/admin/api/pool-config", json={}, headers=admin(live_hub))


def queue_of(hub: LiveHub) -> list[dict[str, Any]]:
    """The hub's queue of waiting jobs, as the admin sees it."""
    data: list[dict[str, Any]] = httpx.get(
        f"{hub.url}/admin/api/queue", headers=admin(hub), timeout=10
    ).json()["data"]
    return data


def put_config(hub: LiveHub, **config: Any) -> None:
    response = httpx.put(f"{hub.url}/admin/api/pool-config", json=config, headers=admin(hub))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answered_chat_is_held_then_posted_once_and_the_books_balance(
    live_hub: LiveHub, stream: bool
) -> None:
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    responses: list[httpx.Response] = []
    async with (
        raw_worker(live_hub, "paid-model", name="paid", token=volunteer.token) as ws,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(ask_later, live_hub, payer, "paid-model", responses)
        job = await receive(ws, "job")
        await finish(ws, job, ["hel", "lo"], (5, 2))
    assert responses[0].status_code == 200
    assert responses[0].headers["x-iamine-job-id"] == job["job_id"]  # what a dispute names
    rows = await settled(live_hub, payer)
    assert [r["kind"] for r in rows] == ["hold", "post"]
    assert {r["job_id"] for r in rows} == {job["job_id"]}
    cost = POLICY.cost(Usage("paid-model", 5, 2))
    share, fee = POLICY.split(cost)
    assert rows[1]["amount"] == cost
    post = json.loads(rows[1]["request"])
    assert post["worker_owner"] == str(volunteer.owner_id)
    assert post["worker_id"] == str(volunteer.record_id)
    assert await balance(live_hub, AccountKey.user(payer.id)) == POLICY.trial_grant - cost
    assert await balance(live_hub, AccountKey.worker_earnings(volunteer.record_id)) == share
    assert fee > 0
    await books_balance(live_hub)


async def test_a_worker_claiming_more_tokens_than_it_sent_is_charged_what_the_hub_counted(
    live_hub: LiveHub,
) -> None:
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    responses: list[httpx.Response] = []
    async with (
        raw_worker(live_hub, "greedy-model", name="greedy", token=volunteer.token) as ws,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(ask_later, live_hub, payer, "greedy-model", responses)
        job = await receive(ws, "job")
        await finish(ws, job, ["a", "b", "c"], (1_000_000, 1_000_000))
    assert responses[0].status_code == 200
    rows = await settled(live_hub, payer)
    usage = json.loads(rows[-1]["request"])["usage"]
    sent = prompt_bytes(Job.model_validate(job))
    assert usage == {"model": "greedy-model", "prompt_tokens": sent, "completion_tokens": 3}
    assert sent < 200


async def test_each_piece_of_a_chunks_frame_counts_as_one_chunk_and_no_more(
    live_hub: LiveHub,
) -> None:
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    responses: list[httpx.Response] = []
    async with (
        raw_worker(live_hub, "batched-model", name="batched", token=volunteer.token) as ws,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(ask_later, live_hub, payer, "batched-model", responses)
        job = await receive(ws, "job")
        pieces = {"type": "chunks", "job_id": job["job_id"], "pieces": ["a", "b", "c", "d"]}
        await ws.send(json.dumps(pieces))
        await finish(ws, job, [], (1_000_000, 1_000_000))
    assert responses[0].status_code == 200
    assert responses[0].json()["choices"][0]["message"]["content"] == "abcd"
    rows = await settled(live_hub, payer)
    assert json.loads(rows[-1]["request"])["usage"]["completion_tokens"] == 4


async def test_a_worker_that_leaves_before_any_output_gets_its_chat_voided(
    live_hub: LiveHub, policy: None
) -> None:
    put_config(live_hub, queue_wait_s=0.2)
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    responses: list[httpx.Response] = []
    async with (
        anyio.create_task_group() as tasks,
        raw_worker(live_hub, "flaky-model", name="flaky", token=volunteer.token) as ws,
    ):
        tasks.start_soon(ask_later, live_hub, payer, "flaky-model", responses)
        job = await receive(ws, "job")
    assert responses[0].status_code != 200 or "degraded" in responses[0].text
    rows = await settled(live_hub, payer)
    assert [r["kind"] for r in rows] == ["hold", "void"]
    assert rows[0]["job_id"] == job["job_id"]
    assert await balance(live_hub, AccountKey.user(payer.id)) == POLICY.trial_grant
    await books_balance(live_hub)


async def test_a_degraded_answer_is_voided(live_hub: LiveHub, policy: None) -> None:
    put_config(live_hub, queue_wait_s=0.2)
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    async with raw_worker(live_hub, "vanished-model", name="vanishing", token=volunteer.token):
        pass
    response = await anyio.to_thread.run_sync(ask, live_hub, payer, "vanished-model")
    assert response.status_code == 200
    assert response.headers["x-iamine-route"] == "degraded"
    rows = await settled(live_hub, payer)
    assert [r["kind"] for r in rows] == ["hold", "void"]
    assert rows[1]["memo"] == "not answered"


def run_agents(hub: LiveHub, payer: Payer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{hub.url}/v1/agents/{path}",
        json=body,
        headers={"Authorization": f"Bearer {payer.token}"},
        timeout=30,
    )


async def test_a_sub_agent_run_is_booked_like_a_chat(live_hub: LiveHub) -> None:
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    responses: list[httpx.Response] = []
    body = {"role": "scout", "input": "look around", "model": "agent-model"}

    async def run() -> None:
        responses.append(await anyio.to_thread.run_sync(run_agents, live_hub, payer, "run", body))

    async with (
        raw_worker(live_hub, "agent-model", name="agent-host", token=volunteer.token) as ws,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(run)
        job = await receive(ws, "job")
        await finish(ws, job, ["fo", "und"], (9, 2))
    assert responses[0].status_code == 200, responses[0].text
    rows = await settled(live_hub, payer)
    assert [r["kind"] for r in rows] == ["hold", "post"]
    assert rows[1]["job_id"] == job["job_id"]
    assert rows[1]["amount"] == POLICY.cost(Usage("agent-model", 9, 2))
    await books_balance(live_hub)


async def test_each_stage_of_a_pipeline_is_booked_once(live_hub: LiveHub) -> None:
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    responses: list[httpx.Response] = []
    body = {"roles": ["scout", "coder"], "input": "plan it", "model": "stage-model"}

    async def run() -> None:
        answer = await anyio.to_thread.run_sync(run_agents, live_hub, payer, "pipeline", body)
        responses.append(answer)

    async with (
        raw_worker(live_hub, "stage-model", name="stage-host", token=volunteer.token) as ws,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(run)
        for _ in range(2):
            await finish(ws, await receive(ws, "job"), ["ok"], (4, 1))
    assert responses[0].status_code == 200, responses[0].text
    rows = await settled(live_hub, payer, jobs=2)
    assert sorted(r["kind"] for r in rows) == ["hold", "hold", "post", "post"]
    assert len({r["job_id"] for r in rows}) == 2
    await books_balance(live_hub)


async def test_a_client_that_leaves_mid_stream_gets_its_chat_voided(live_hub: LiveHub) -> None:
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    body = {"model": "left-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {payer.token}"}
    async with (
        raw_worker(live_hub, "left-model", name="left", token=volunteer.token) as ws,
        httpx.AsyncClient(timeout=30) as http,
    ):
        async with http.stream(
            "POST", f"{live_hub.url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            job = await receive(ws, "job")
            frame = {"type": "chunk", "job_id": job["job_id"], "delta": {"content": "part"}}
            await ws.send(json.dumps(frame))
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    break
        cancel = await receive(ws, "cancel")
    assert cancel["job_id"] == job["job_id"]
    rows = await settled(live_hub, payer)
    assert [r["kind"] for r in rows] == ["hold", "void"]
    await books_balance(live_hub)


async def test_a_chat_failed_over_mid_stream_is_posted_once_to_the_worker_that_finished(
    live_hub: LiveHub,
) -> None:
    payer = await new_payer(live_hub)
    first, second = await new_volunteer(live_hub), await new_volunteer(live_hub)
    responses: list[httpx.Response] = []
    async with (
        anyio.create_task_group() as tasks,
        raw_worker(live_hub, "relay-model", name="first", token=first.token) as lost,
    ):
        tasks.start_soon(ask_later, live_hub, payer, "relay-model", responses)
        job = await receive(lost, "job")
        frame = {"type": "chunk", "job_id": job["job_id"], "delta": {"content": "one "}}
        await lost.send(json.dumps(frame))
        async with raw_worker(live_hub, "relay-model", name="second", token=second.token) as ws:
            failure = {
                "type": "error",
                "job_id": job["job_id"],
                "code": "engine_error",
                "message": "the engine fell over",
            }
            await lost.send(json.dumps(failure))
            retry = await receive(ws, "job")
            await finish(ws, retry, ["two"], (9, 1))
    assert responses[0].status_code == 200
    assert responses[0].json()["choices"][0]["message"]["content"] == "one two"
    rows = await settled(live_hub, payer)
    assert [r["kind"] for r in rows] == ["hold", "post"]
    assert retry["job_id"] != job["job_id"]
    assert {r["job_id"] for r in rows} == {job["job_id"]}
    post = json.loads(rows[1]["request"])
    assert post["worker_id"] == str(second.record_id)
    assert post["usage"]["completion_tokens"] == 2
    assert await balance(live_hub, AccountKey.worker_earnings(first.record_id)) == 0
    await books_balance(live_hub)


async def test_a_user_without_credits_is_answered_at_the_lowest_priority_never_refused(
    live_hub: LiveHub, policy: None
) -> None:
    put_config(live_hub, ledger={"trial_grant": 0})
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    headers = {"Authorization": f"Bearer {payer.token}"}
    responses: list[httpx.Response] = []
    async with raw_worker(
        live_hub, "broke-model", slots=1, name="broke", token=volunteer.token
    ) as ws:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ask_later, live_hub, payer, "broke-model", responses)
            job = await receive(ws, "job")
            await finish(ws, job, ["free"], (3, 1))
        await settled(live_hub, payer)
        async with httpx.AsyncClient(timeout=10) as http:
            account = (await http.get(f"{live_hub.url}/v1/account", headers=headers)).json()
        assert account["priority"] == "lowest"
        assert account["balance"] < 0
        other = await new_payer(live_hub)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ask_later, live_hub, other, "broke-model", responses)
            busy = await receive(ws, "job")
            tasks.start_soon(ask_later, live_hub, payer, "broke-model", responses)

            await anyio.to_thread.run_sync(
                wait_until, lambda: bool(queue_of(live_hub)), 10, "the broke chat to queue"
            )
            waiting = await anyio.to_thread.run_sync(queue_of, live_hub)
            assert [w["priority"] for w in waiting] == [UNFUNDED_PRIORITY]
            await finish(ws, busy, ["paid"], (3, 1))
            last = await receive(ws, "job")
            await finish(ws, last, ["still free"], (3, 1))
    assert [r.status_code for r in responses] == [200, 200, 200]
    await books_balance(live_hub)


# In-process: the service on a real database, with a clock the test turns.


@dataclasses.dataclass
class Clock:
    now: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=4) as created:
        yield created


def _job(job_id: str = "") -> Job:
    return Job(
        job_id=job_id or uuid.uuid4().hex,
        model="unit-model",
        messages=[{"role": "user", "content": "héllo"}],
        params=SamplingParams(max_tokens=16),
        deadline_s=30,
    )


async def _noop(frame: object) -> None:
    return None


def _handle(job: Job, owner: UUID) -> JobHandle:
    link = WorkerLink("w", "w", owner, {}, "cpu", 1, _noop, record_id=uuid.uuid4())
    return JobHandle(job, link, "user", 16)


async def _answered(job: Job) -> AsyncIterator[JobEvent]:
    yield Chunk(job_id=job.job_id, delta=Delta(content="ok"))
    usage = WireUsage(prompt_tokens=4, completion_tokens=1, total_tokens=5)
    yield Done(job_id=job.job_id, finish_reason="stop", usage=usage, model=job.model)


async def _relay(billing: Billing, job: Job, user: UUID, owner: UUID) -> None:
    ticket = await billing.open(job, user)
    async for _ in billing.bill(ticket, _answered(job), [_handle(job, owner)]):
        pass


async def test_hub_usage_is_the_smaller_of_the_report_and_the_hubs_count() -> None:
    job = _job()
    usage = WireUsage(prompt_tokens=2, completion_tokens=50, total_tokens=52)
    done = Done(job_id=job.job_id, finish_reason="stop", usage=usage, model="x")
    counted = hub_usage(job, done, chunks=7, served_model="served")
    assert counted == Usage("served", 2, 7)
    assert prompt_bytes(job) == len(json.dumps([job.messages, []], ensure_ascii=False).encode())


async def test_a_post_after_its_hold_expired_is_counted_and_logged_not_lost(
    pool: asyncpg.Pool, captured_logs: list[dict[str, Any]]
) -> None:
    clock, metrics = Clock(), Metrics()
    config = PoolConfig(ledger=LedgerPolicy(hold_ttl_s=60))
    billing = Billing(pool, EconomySettings(), lambda: config, metrics, clock)
    user, owner, job = uuid.uuid4(), uuid.uuid4(), _job()
    ticket = await billing.open(job, user)
    await billing.drain()
    clock.now += timedelta(seconds=61)
    async for _ in billing.bill(ticket, _answered(job), [_handle(job, owner)]):
        pass
    await billing.drain()
    failures = metrics.registry.get_sample_value("iamine_ledger_failures_total", {"op": "post"})
    assert failures == 1
    failed = [e for e in captured_logs if e["event"] == "ledger_operation_failed"]
    assert failed[0]["job_id"] == job.job_id
    async with pool.acquire() as conn:
        state = await Ledger(config.ledger, clock).hold_state(conn, job.job_id)
        assert state.value == "expired"
        assert (await verify(conn)).ok


async def test_a_full_queue_makes_the_next_chat_wait_for_room_instead_of_dropping_it(
    pool: asyncpg.Pool,
) -> None:
    config = PoolConfig()
    settings = EconomySettings(queue_size=1, writers=1, expire_interval_s=0)
    billing = Billing(pool, settings, lambda: config, Metrics())
    user, owner = uuid.uuid4(), uuid.uuid4()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as writer:
            async with anyio.create_task_group() as chats:
                for _ in range(3):
                    chats.start_soon(_relay, billing, _job(), user, owner)
                await anyio.wait_all_tasks_blocked()
                # One chat held and posted together in the group queue, the next one's hold in
                # the single operations' queue; the others wait for room: nothing was dropped.
                assert billing.pending == 2
                writer.start_soon(billing.run)
            writer.cancel_scope.cancel()
    await billing.drain()
    async with pool.acquire() as conn:
        kinds = await conn.fetch("SELECT kind FROM ledger_transfers WHERE job_id IS NOT NULL")
        assert sorted(r["kind"] for r in kinds) == ["hold"] * 3 + ["post"] * 3
        assert (await verify(conn)).ok
    assert billing.priority(user) == 0


async def test_an_unfunded_hold_lowers_priority_and_a_funded_one_restores_it(
    pool: asyncpg.Pool,
) -> None:
    config = PoolConfig(ledger=LedgerPolicy(trial_grant=0))
    billing = Billing(pool, EconomySettings(), lambda: config, Metrics())
    user, owner = uuid.uuid4(), uuid.uuid4()
    await _relay(billing, _job(), user, owner)
    await billing.drain()
    assert billing.priority(user) == UNFUNDED_PRIORITY
    async with pool.acquire() as conn:
        await Ledger(config.ledger, Clock()).mint(
            conn, "topup-1", AccountKey.user(user), 1_000_000, memo="top-up"
        )
    await _relay(billing, _job(), user, owner)
    await billing.drain()
    assert billing.priority(user) == 0


async def transactions_of(pool: asyncpg.Pool, job_id: str) -> dict[str, int]:
    """Each of the job's transfers → the id of the transaction that wrote it."""
    rows = await pool.fetch(
        "SELECT kind, xmin::text::bigint AS tx FROM ledger_transfers WHERE job_id = $1", job_id
    )
    return {row["kind"]: row["tx"] for row in rows}


async def written_by(pool: asyncpg.Pool, job_id: str, kind: str) -> dict[str, int]:
    """The job's transfers once one of ``kind`` is written by the writer task (bounded poll)."""
    with anyio.fail_after(10):
        while True:
            written = await transactions_of(pool, job_id)
            if kind in written:
                return written
            await anyio.sleep(0.02)


async def test_a_chat_that_ends_before_its_hold_is_due_is_held_and_posted_in_one_commit(
    pool: asyncpg.Pool,
) -> None:
    config = PoolConfig()
    billing = Billing(pool, EconomySettings(hold_delay_s=60), lambda: config, Metrics())
    job = _job()
    await _relay(billing, job, uuid.uuid4(), uuid.uuid4())
    assert billing.pending == 1  # the hold and its post, as one operation
    await billing.drain()
    written = await transactions_of(pool, job.job_id)
    assert written.keys() == {"hold", "post"}
    assert len(set(written.values())) == 1


async def test_a_chat_still_running_when_its_hold_is_due_has_its_hold_written_first(
    pool: asyncpg.Pool,
) -> None:
    config = PoolConfig()
    settings = EconomySettings(hold_delay_s=0.05, expire_interval_s=0)
    billing = Billing(pool, settings, lambda: config, Metrics())
    job, owner = _job(), uuid.uuid4()
    async with anyio.create_task_group() as writer:
        writer.start_soon(billing.run)
        ticket = await billing.open(job, uuid.uuid4())
        assert (await written_by(pool, job.job_id, "hold")).keys() == {"hold"}
        async for _ in billing.bill(ticket, _answered(job), [_handle(job, owner)]):
            pass
        written = await written_by(pool, job.job_id, "post")
        writer.cancel_scope.cancel()
    assert written["hold"] != written["post"]


async def test_a_clean_shutdown_writes_the_holds_still_armed(pool: asyncpg.Pool) -> None:
    config = PoolConfig()
    billing = Billing(pool, EconomySettings(hold_delay_s=60), lambda: config, Metrics())
    job = _job()
    await billing.open(job, uuid.uuid4())
    assert await transactions_of(pool, job.job_id) == {}
    await billing.drain()
    assert (await transactions_of(pool, job.job_id)).keys() == {"hold"}
    async with pool.acquire() as conn:
        assert await Ledger(config.ledger, Clock()).hold_state(conn, job.job_id) is HoldState.OPEN


async def test_with_no_delay_every_hold_is_queued_at_placement(pool: asyncpg.Pool) -> None:
    config = PoolConfig()
    billing = Billing(pool, EconomySettings(hold_delay_s=0), lambda: config, Metrics())
    job = _job()
    await _relay(billing, job, uuid.uuid4(), uuid.uuid4())
    assert billing.pending == 2
    await billing.drain()
    written = await transactions_of(pool, job.job_id)
    assert written["hold"] != written["post"]


async def test_chats_that_end_within_the_window_are_committed_in_one_group(
    pool: asyncpg.Pool,
) -> None:
    config, metrics = PoolConfig(), Metrics()
    settings = EconomySettings(hold_delay_s=60, group_window_s=0.5, expire_interval_s=0)
    billing = Billing(pool, settings, lambda: config, metrics)
    users, owner = [uuid.uuid4() for _ in range(4)], uuid.uuid4()
    jobs = [_job() for _ in range(5)]
    async with anyio.create_task_group() as writer:
        writer.start_soon(billing.run)
        for job, user in zip(jobs, [*users, users[0]], strict=True):  # one user chats twice
            await _relay(billing, job, user, owner)
        for job in jobs:
            await written_by(pool, job.job_id, "post")
        writer.cancel_scope.cancel()
    written = [await transactions_of(pool, job.job_id) for job in jobs]
    assert all(w.keys() == {"hold", "post"} for w in written)
    assert len({tx for w in written for tx in w.values()}) == 1  # one commit for all five
    assert metrics.registry.get_sample_value("iamine_ledger_group_size_sum") == 5
    async with pool.acquire() as conn:
        ledger = Ledger(config.ledger, Clock())
        charged = POLICY.cost(Usage("unit-model", 4, 1))
        first = await ledger.balance(conn, AccountKey.user(users[0]))
        second = await ledger.balance(conn, AccountKey.user(users[1]))
        assert first.balance == config.ledger.trial_grant - 2 * charged
        assert second.balance == config.ledger.trial_grant - charged
        assert await conn.fetchval("SELECT count(*) FROM ledger_open_holds") == 0
        assert (await verify(conn)).ok


async def test_a_group_with_a_chat_that_fails_is_applied_chat_by_chat(
    pool: asyncpg.Pool, captured_logs: list[dict[str, Any]]
) -> None:
    config, metrics = PoolConfig(), Metrics()
    settings = EconomySettings(hold_delay_s=60, group_window_s=0.5, retry_attempts=1)
    billing = Billing(pool, settings, lambda: config, metrics)
    user, owner = uuid.uuid4(), uuid.uuid4()
    bad, good = _job(), [_job() for _ in range(3)]
    async with pool.acquire() as conn:  # the bad chat's hold was written and voided before
        ledger = Ledger(config.ledger, Clock())
        await ledger.hold(conn, bad.job_id, user, 100)
        await ledger.void(conn, bad.job_id)
    for job in [good[0], bad, *good[1:]]:
        await _relay(billing, job, user, owner)
    await billing.drain()
    assert [e["ops"] for e in captured_logs if e["event"] == "ledger_group_failed"] == [4]
    assert metrics.registry.get_sample_value("iamine_ledger_failures_total", {"op": "hold+post"})
    written = [await transactions_of(pool, job.job_id) for job in good]
    assert all(w.keys() == {"hold", "post"} for w in written)
    assert len({tx for w in written for tx in w.values()}) == 3  # each in its own commit
    assert (await transactions_of(pool, bad.job_id)).keys() == {"hold", "void"}
    async with pool.acquire() as conn:
        assert (await verify(conn)).ok


async def test_a_shutdown_during_the_group_window_applies_the_chats_in_hand(
    pool: asyncpg.Pool,
) -> None:
    config = PoolConfig()
    settings = EconomySettings(hold_delay_s=60, group_window_s=5, expire_interval_s=0)
    billing = Billing(pool, settings, lambda: config, Metrics())
    jobs = [_job(), _job()]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as writer:
            writer.start_soon(billing.run)
            for job in jobs:
                await _relay(billing, job, uuid.uuid4(), uuid.uuid4())
            await anyio.wait_all_tasks_blocked()  # the writer holds one, waiting for more
            writer.cancel_scope.cancel()
    await billing.drain()
    written = [await transactions_of(pool, job.job_id) for job in jobs]
    assert all(w.keys() == {"hold", "post"} for w in written)
    assert billing.pending == 0
