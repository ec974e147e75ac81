"""Disputes and slashing over HTTP on a live hub, on chats really charged through a worker.

A payer disputes their chat (``/v1/disputes``); the admin upholds it: the payer is refunded,
the worker's owner slashed, the worker's record and its live link drop to trust 0, and the
event with its evidence is listed by ``/admin/api/slashing``. Other users' jobs read as not
found; bad input, missing tokens and wrong scopes are refused in the OpenAI error shape.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from fastapi.testclient import TestClient

from economy.accounts import AccountKey
from economy.errors import InvalidLedgerInput
from economy.ledger import Ledger
from economy.pricing import LedgerPolicy, Usage
from economy.verify import verify
from hub import accounts
from hub.errors import NotFoundError
from hub.slashing import finding_key, ledger_of, slash_worker
from hub.state import HubState
from inference import identity
from tests.hub.conftest import LiveHub
from tests.hub.raw_worker import raw_worker, receive
from tests.hub.test_billing import (
    Payer,
    Volunteer,
    ask_later,
    balance,
    books_balance,
    finish,
    new_payer,
    new_volunteer,
    put_config,
    settled,
)

pytestmark = pytest.mark.anyio
POLICY = LedgerPolicy()
MODEL = "dispute-model"


@pytest.fixture
def default_config(live_hub: LiveHub) -> Iterator[None]:
    """The pool config back to its defaults after the test."""
    yield
    put_config(live_hub)


def call(
    hub: LiveHub, method: str, path: str, token: str | None, body: Any = None, **params: Any
) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.request(
        method, f"{hub.url}{path}", json=body, headers=headers, params=params, timeout=10
    )


async def chat_on(hub: LiveHub, ws: Any, payer: Payer) -> str:
    """One answered chat of ``payer`` on the connected worker ``ws``; its job id once posted."""
    responses: list[httpx.Response] = []
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ask_later, hub, payer, MODEL, responses)
        job = await receive(ws, "job")
        await finish(ws, job, ["x"] * 3, (4, 3))
    assert responses[0].status_code == 200
    await settled(hub, payer)
    job_id: str = job["job_id"]
    return job_id


async def chat_once(hub: LiveHub, payer: Payer, volunteer: Volunteer) -> str:
    """One answered chat on a fresh connection of ``volunteer``'s worker."""
    name = f"disp-{uuid.uuid4().hex[:6]}"
    async with raw_worker(hub, MODEL, name=name, token=volunteer.token) as ws:
        return await chat_on(hub, ws, payer)


async def old_charge(hub: LiveHub, payer: Payer, volunteer: Volunteer) -> str:
    """A job charged two days ago (its dispute window closed), written on the ledger directly."""
    job_id = f"old-{uuid.uuid4().hex[:12]}"
    ledger = Ledger(POLICY, lambda: datetime.now(UTC) - timedelta(days=2))
    conn = await asyncpg.connect(hub.database_url)
    try:
        await ledger.hold(conn, job_id, payer.id, 1_000)
        usage = Usage(MODEL, 4, 3)
        await ledger.post(conn, job_id, usage, volunteer.owner_id, worker_id=volunteer.record_id)
    finally:
        await conn.close()
    return job_id


async def trust_of(hub: LiveHub, worker_id: uuid.UUID) -> int:
    conn = await asyncpg.connect(hub.database_url)
    try:
        record = await identity.get_worker(conn, worker_id)
    finally:
        await conn.close()
    assert record is not None
    return record.trust


def dispute(hub: LiveHub, token: str, job_id: str, reason: str = "wrong answer") -> httpx.Response:
    return call(hub, "POST", "/v1/disputes", token, {"job_id": job_id, "reason": reason})


async def test_a_payer_disputes_their_chat_and_lists_their_disputes(live_hub: LiveHub) -> None:
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    job_id = await chat_once(live_hub, payer, volunteer)

    opened = dispute(live_hub, payer.token, job_id, "it made things up")

    assert opened.status_code == 201, opened.text
    shown = opened.json()
    assert (shown["job_id"], shown["status"], shown["opened_by"]) == (job_id, "open", "user")
    assert "worker_id" not in shown and "owner_id" not in shown
    mine = call(live_hub, "GET", "/v1/disputes", payer.token).json()
    assert [d["id"] for d in mine["data"]] == [shown["id"]]
    assert mine["has_more"] is False
    again = dispute(live_hub, payer.token, job_id)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "dispute_refused"


async def test_another_users_job_and_an_unknown_job_are_404(live_hub: LiveHub) -> None:
    payer, other, volunteer = (
        await new_payer(live_hub),
        await new_payer(live_hub),
        await new_volunteer(live_hub),
    )
    job_id = await chat_once(live_hub, payer, volunteer)
    for token, job in ((other.token, job_id), (payer.token, "no-such-job")):
        response = dispute(live_hub, token, job)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "job_not_found"
    assert call(live_hub, "GET", "/v1/disputes", other.token).json()["data"] == []


async def test_a_job_past_its_window_is_409_for_its_user_but_the_admin_may_dispute_it(
    live_hub: LiveHub,
) -> None:
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    job_id = await old_charge(live_hub, payer, volunteer)
    late = dispute(live_hub, payer.token, job_id)
    assert late.status_code == 409
    assert "window" in late.json()["error"]["message"]
    body = {"job_id": job_id, "reason": "found by review"}
    opened = call(live_hub, "POST", "/admin/api/disputes", live_hub.admin_token, body)
    assert opened.status_code == 201
    assert opened.json()["opened_by"] == "admin"
    assert opened.json()["worker_id"] == str(volunteer.record_id)


@pytest.mark.parametrize(
    "body",
    [
        {"job_id": "job 1", "reason": "bad"},
        {"job_id": "job-1", "reason": ""},
        {"job_id": "job-1", "reason": "x" * 2_001},
        {"job_id": "job-1", "reason": "nul\x00"},
        {"job_id": "job-1"},
        {"job_id": 1, "reason": "bad"},
        {"job_id": "job-1", "reason": "bad", "extra": True},
    ],
)
async def test_a_bad_dispute_body_is_a_400(live_hub: LiveHub, body: dict[str, Any]) -> None:
    response = call(live_hub, "POST", "/v1/disputes", live_hub.user_token, body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/disputes"),
        ("POST", "/v1/disputes"),
        ("GET", "/admin/api/disputes"),
        ("POST", "/admin/api/disputes/1/resolve"),
        ("GET", "/admin/api/slashing"),
    ],
)
async def test_no_token_is_a_401(live_hub: LiveHub, method: str, path: str) -> None:
    response = call(live_hub, method, path, None, {"job_id": "j", "reason": "r"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/api/disputes"),
        ("POST", "/admin/api/disputes"),
        ("POST", "/admin/api/disputes/1/resolve"),
        ("GET", "/admin/api/slashing"),
    ],
)
async def test_a_user_token_cannot_use_the_admin_routes(
    live_hub: LiveHub, method: str, path: str
) -> None:
    body = {"job_id": "j", "reason": "r", "decision": "upheld"}
    assert call(live_hub, method, path, live_hub.user_token, body).status_code == 403


async def test_a_worker_token_cannot_open_a_dispute(live_hub: LiveHub) -> None:
    response = dispute(live_hub, live_hub.worker_token, "job-1")
    assert response.status_code == 403


async def test_an_upheld_dispute_refunds_the_payer_slashes_the_owner_and_resets_the_worker(
    live_hub: LiveHub,
) -> None:
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    name = f"disp-{uuid.uuid4().hex[:6]}"
    async with raw_worker(live_hub, MODEL, name=name, token=volunteer.token) as ws:
        job_id = await chat_on(live_hub, ws, payer)
        spent = await balance(live_hub, AccountKey.user(payer.id))
        opened = dispute(live_hub, payer.token, job_id).json()
        path = f"/admin/api/disputes/{opened['id']}/resolve"
        body = {"decision": "upheld", "note": "confirmed by a canary"}

        resolved = call(live_hub, "POST", path, live_hub.admin_token, body)

        assert resolved.status_code == 200, resolved.text
        links = call(live_hub, "GET", "/admin/api/workers", live_hub.admin_token).json()["data"]
        [link] = [w for w in links if w["id"] == str(volunteer.record_id)]
        assert link["trust"] == 0  # the live link followed at once
    shown = resolved.json()
    assert shown["status"] == "upheld" and shown["note"] == "confirmed by a canary"
    event = shown["slashing_event"]
    assert event["worker_id"] == str(volunteer.record_id)
    assert event["evidence"]["job_id"] == job_id and event["penalty"] == POLICY.slash_penalty
    cost = POLICY.cost(Usage(MODEL, 4, 3))
    assert await balance(live_hub, AccountKey.user(payer.id)) == spent + cost
    assert await balance(live_hub, AccountKey.worker_earnings(volunteer.record_id)) == 0
    owner = AccountKey.worker_owner(volunteer.owner_id)
    assert await balance(live_hub, owner) == -POLICY.slash_penalty
    assert await trust_of(live_hub, volunteer.record_id) == 0
    listed = call(live_hub, "GET", "/admin/api/slashing", live_hub.admin_token).json()["data"]
    assert listed[0] == event
    again = call(live_hub, "POST", path, live_hub.admin_token, body)
    assert again.status_code == 200 and again.json()["slashing_event"] is None
    other = call(live_hub, "POST", path, live_hub.admin_token, {"decision": "rejected"})
    assert other.status_code == 409
    await books_balance(live_hub)


async def test_a_rejected_dispute_keeps_the_earning_and_lists_by_status(
    live_hub: LiveHub,
) -> None:
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    job_id = await chat_once(live_hub, payer, volunteer)
    opened = dispute(live_hub, payer.token, job_id).json()
    path = f"/admin/api/disputes/{opened['id']}/resolve"
    resolved = call(live_hub, "POST", path, live_hub.admin_token, {"decision": "rejected"})
    assert resolved.status_code == 200
    assert resolved.json()["status"] == "rejected" and resolved.json()["slashing_event"] is None
    share, _ = POLICY.split(POLICY.cost(Usage(MODEL, 4, 3)))
    earnings = AccountKey.worker_earnings(volunteer.record_id)
    assert await balance(live_hub, earnings) == share
    assert await trust_of(live_hub, volunteer.record_id) == 2
    rejected = call(
        live_hub, "GET", "/admin/api/disputes", live_hub.admin_token, status="rejected"
    ).json()["data"]
    assert opened["id"] in [d["id"] for d in rejected]
    assert all(d["status"] == "rejected" for d in rejected)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/admin/api/disputes/999999/resolve", {"decision": "upheld"}, 404),
        ("/admin/api/disputes/0/resolve", {"decision": "upheld"}, 400),
        ("/admin/api/disputes/x/resolve", {"decision": "upheld"}, 400),
        ("/admin/api/disputes/1/resolve", {"decision": "maybe"}, 400),
        ("/admin/api/disputes/1/resolve", {"decision": "upheld", "note": "x" * 2_001}, 400),
        ("/admin/api/disputes", {"job_id": "no-such-job", "reason": "r"}, 404),
    ],
)
async def test_bad_or_unknown_admin_requests_are_refused(
    live_hub: LiveHub, path: str, body: dict[str, Any], status: int
) -> None:
    response = call(live_hub, "POST", path, live_hub.admin_token, body)
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/admin/api/disputes", {"status": "closed"}),
        ("/admin/api/disputes", {"limit": 0}),
        ("/admin/api/slashing", {"before": 0}),
        ("/admin/api/slashing", {"worker_id": "not-a-uuid"}),
        ("/v1/disputes", {"limit": 201}),
    ],
)
async def test_bad_list_parameters_are_a_400(
    live_hub: LiveHub, path: str, params: dict[str, Any]
) -> None:
    token = live_hub.user_token if path.startswith("/v1") else live_hub.admin_token
    assert call(live_hub, "GET", path, token, **params).status_code == 400


def test_slash_worker_forfeits_resets_trust_and_slashes_once_per_finding(
    client: TestClient, admin_token: str
) -> None:
    state: HubState = client.app_state["hub"]
    portal = client.portal
    assert portal is not None
    evidence = {"canary": "2+2", "expected": "4", "got": "5"}

    async def a_charged_worker() -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
        async with state.db.pool.acquire() as conn:
            owner = await accounts.create_user(conn, "caught-owner")
            payer = await accounts.create_user(conn, "caught-payer")
            record = await identity.register_worker(
                conn, name="caught", owner_id=owner.id, trust=2, reason="test worker"
            )
            ledger = ledger_of(state)
            await ledger.hold(conn, "caught-job", payer.id, 1_000)
            await ledger.post(conn, "caught-job", Usage(MODEL, 4, 3), owner.id, worker_id=record.id)
        return owner.id, payer.id, record.id

    async def trust_and_books(worker_id: uuid.UUID) -> tuple[int, int, bool]:
        async with state.db.pool.acquire() as conn:
            record = await identity.get_worker(conn, worker_id)
            assert record is not None
            earned = await conn.fetchval(
                "SELECT credits_posted - debits_posted FROM ledger_accounts "
                "WHERE kind = 'worker_earnings' AND ref = $1",
                str(worker_id),
            )
            return record.trust, earned, (await verify(conn)).ok

    owner_id, _, worker_id = portal.call(a_charged_worker)
    event = portal.call(slash_worker, state, worker_id, "wrong canary answer", evidence)
    again = portal.call(slash_worker, state, worker_id, "wrong canary answer", evidence)

    assert again == event
    assert event["key"] == finding_key(worker_id, "wrong canary answer", evidence)
    assert (event["owner_id"], event["evidence"]) == (str(owner_id), evidence)
    assert event["forfeited"] == POLICY.split(POLICY.cost(Usage(MODEL, 4, 3)))[0]
    assert portal.call(trust_and_books, worker_id) == (0, 0, True)
    listed = client.get("/admin/api/slashing", headers={"Authorization": f"Bearer {admin_token}"})
    assert listed.json()["data"] == [event]
    with pytest.raises(NotFoundError):
        portal.call(slash_worker, state, uuid.uuid4(), "wrong canary answer", evidence)
    with pytest.raises(InvalidLedgerInput):
        portal.call(slash_worker, state, worker_id, "", evidence)


async def test_the_settlement_job_releases_earnings_once_and_establishes_verified_workers(
    live_hub: LiveHub, default_config: None
) -> None:
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    conn = await asyncpg.connect(live_hub.database_url)
    try:
        await identity.set_trust(conn, volunteer.record_id, identity.VERIFIED, "canaries passed")
    finally:
        await conn.close()
    await chat_once(live_hub, payer, volunteer)
    put_config(live_hub, ledger={"dispute_window_s": 0}, trust={"established_jobs": 1})
    share, _ = POLICY.split(POLICY.cost(Usage(MODEL, 4, 3)))
    owner = AccountKey.worker_owner(volunteer.owner_id)

    run = call(live_hub, "POST", "/admin/api/jobs/settlement/run", live_hub.admin_token)

    assert run.status_code == 200 and run.json()["outcome"] == "ok", run.text
    detail = run.json()["detail"]
    assert str(volunteer.record_id) in detail["promoted"]
    mine = [w for w in detail["workers"] if w["worker_id"] == str(volunteer.record_id)]
    assert mine == [
        {
            "worker_id": str(volunteer.record_id),
            "owner_id": str(volunteer.owner_id),
            "jobs": 1,
            "amount": share,
        }
    ]
    assert await balance(live_hub, owner) == share
    assert await balance(live_hub, AccountKey.worker_earnings(volunteer.record_id)) == 0
    assert await trust_of(live_hub, volunteer.record_id) == identity.ESTABLISHED
    again = call(live_hub, "POST", "/admin/api/jobs/settlement/run", live_hub.admin_token)
    assert again.json()["detail"]["settled_jobs"] == 0
    assert await balance(live_hub, owner) == share
    await books_balance(live_hub)
