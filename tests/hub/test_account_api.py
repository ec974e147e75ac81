"""``/v1/account``, ``/v1/account/ledger`` and the admin ledger routes on a live hub.

Two payers chat through a worker driven by hand; its owner earns. Each caller sees only their
own accounts, pages their entries with the cursor, and the admin sees every account.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from economy.pricing import MICRO, LedgerPolicy, Usage
from hub import accounts
from tests.hub.conftest import LiveHub
from tests.hub.raw_worker import raw_worker, receive
from tests.hub.test_billing import (
    Payer,
    Volunteer,
    ask_later,
    finish,
    new_payer,
    new_volunteer,
    settled,
)

pytestmark = pytest.mark.anyio
POLICY = LedgerPolicy()
MODEL = "account-model"


def get(hub: LiveHub, path: str, token: str | None, **params: Any) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.get(f"{hub.url}{path}", headers=headers, params=params, timeout=10)


async def chat_once(
    hub: LiveHub, payer: Payer, volunteer: Volunteer, usage: tuple[int, int]
) -> str:
    """One answered chat of ``payer`` on ``volunteer``'s worker; its job id once it is posted."""
    responses: list[httpx.Response] = []
    async with (
        raw_worker(hub, MODEL, name=f"acct-{uuid.uuid4().hex[:6]}", token=volunteer.token) as ws,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(ask_later, hub, payer, MODEL, responses)
        job = await receive(ws, "job")
        await finish(ws, job, ["x"] * usage[1], usage)
    assert responses[0].status_code == 200
    await settled(hub, payer)
    job_id: str = job["job_id"]
    return job_id


async def user_token(hub: LiveHub, volunteer: Volunteer) -> str:
    """A user-scope token for the volunteer (their worker token cannot call /v1/account)."""
    conn = await asyncpg.connect(hub.database_url)
    try:
        issued = await accounts.create_token(conn, user_id=volunteer.owner_id, scopes=("user",))
    finally:
        await conn.close()
    return issued.token


async def test_the_account_shows_balance_pending_available_and_the_owners_worker_earnings(
    live_hub: LiveHub,
) -> None:
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    await chat_once(live_hub, payer, volunteer, (4, 3))
    cost = POLICY.cost(Usage(MODEL, 4, 3))
    share, _ = POLICY.split(cost)
    account = get(live_hub, "/v1/account", payer.token).json()
    assert account["user_id"] == str(payer.id)
    assert account["balance"] == POLICY.trial_grant - cost
    assert account["pending"] == 0
    assert account["available"] == account["balance"]
    whole, fraction = divmod(account["balance"], MICRO)
    assert account["balance_iamine"] == f"{whole}.{fraction:06d}"
    assert account["priority"] == "normal"
    assert account["workers"] == []
    owner = get(live_hub, "/v1/account", await user_token(live_hub, volunteer)).json()
    assert owner["earnings"]["unsettled"] == share
    assert owner["earnings"]["settled"] == 0
    [worker] = owner["workers"]
    assert worker["id"] == str(volunteer.record_id)
    assert worker["trust"] == 2
    assert worker["unsettled"] == share


async def test_the_ledger_pages_newest_first_and_shows_only_the_callers_entries(
    live_hub: LiveHub,
) -> None:
    payer, other, volunteer = (
        await new_payer(live_hub),
        await new_payer(live_hub),
        await new_volunteer(live_hub),
    )
    mine = await chat_once(live_hub, payer, volunteer, (2, 1))
    theirs = await chat_once(live_hub, other, volunteer, (2, 1))
    entries = get(live_hub, "/v1/account/ledger", payer.token).json()["data"]
    keys = [e["transfer"] for e in entries]
    assert keys == [f"post:{mine}", f"post:{mine}", f"hold:{mine}", f"trial:{payer.id}"]
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    assert all(theirs not in str(e) for e in entries)
    first = get(live_hub, "/v1/account/ledger", payer.token, limit=3).json()
    assert first["has_more"] is True
    rest = get(
        live_hub, "/v1/account/ledger", payer.token, limit=3, before=first["next_before"]
    ).json()
    assert [e["id"] for e in first["data"] + rest["data"]] == [e["id"] for e in entries]
    assert rest["has_more"] is False
    assert rest["next_before"] is None
    earned = get(live_hub, "/v1/account/ledger", await user_token(live_hub, volunteer)).json()
    assert {e["account"] for e in earned["data"]} == {f"worker:{volunteer_name(earned)}"}
    assert all(e["transfer"] is None for e in earned["data"])  # other users' jobs stay unnamed


def volunteer_name(ledger: dict[str, Any]) -> str:
    name: str = ledger["data"][0]["account"].removeprefix("worker:")
    return name


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"before": 0}, "before"),
    ],
)
async def test_bad_paging_parameters_are_a_400_naming_the_parameter(
    live_hub: LiveHub, params: dict[str, Any], param: str
) -> None:
    for path, token in (
        ("/v1/account/ledger", live_hub.user_token),
        ("/admin/api/ledger", live_hub.admin_token),
    ):
        response = get(live_hub, path, token, **params)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    "path", ["/v1/account", "/v1/account/ledger", "/admin/api/ledger", "/admin/api/ledger/verify"]
)
async def test_no_token_is_a_401(live_hub: LiveHub, path: str) -> None:
    response = get(live_hub, path, None)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("path", ["/admin/api/ledger", "/admin/api/ledger/verify"])
async def test_a_user_token_cannot_read_the_admin_ledger(live_hub: LiveHub, path: str) -> None:
    assert get(live_hub, path, live_hub.user_token).status_code == 403


async def test_a_worker_token_has_no_account_route(live_hub: LiveHub) -> None:
    assert get(live_hub, "/v1/account", live_hub.worker_token).status_code == 403


async def test_the_admin_sees_every_account_and_pages_transfers_and_the_books_verify(
    live_hub: LiveHub,
) -> None:
    payer, volunteer = await new_payer(live_hub), await new_volunteer(live_hub)
    job_id = await chat_once(live_hub, payer, volunteer, (2, 2))
    ledger = get(live_hub, "/admin/api/ledger", live_hub.admin_token, limit=2).json()
    by_name = {a["account"]: a for a in ledger["accounts"]}
    assert by_name[f"user:{payer.id}"]["user"].startswith("payer-")
    assert by_name["clearing"]["balance"] == 0
    assert f"worker_earnings:{volunteer.record_id}" in by_name
    assert len(ledger["transfers"]) == 2
    assert ledger["has_more"] is True
    older = get(
        live_hub, "/admin/api/ledger", live_hub.admin_token, before=ledger["next_before"]
    ).json()
    keys = [t["key"] for t in ledger["transfers"] + older["transfers"]]
    assert f"post:{job_id}" in keys and f"hold:{job_id}" in keys
    report = get(live_hub, "/admin/api/ledger/verify", live_hub.admin_token).json()
    assert report["ok"] is True
    assert report["problems"] == []
    assert report["posted_jobs"] >= 1
