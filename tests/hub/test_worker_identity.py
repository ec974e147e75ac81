"""A worker is its token's record: hello only narrows it; trust decides which jobs reach it.

Fake workers speak the protocol by hand over the real WebSocket of a live hub.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hub import accounts
from hub.migrations import load_migrations, migrate
from inference import identity
from inference.settings import InferenceSettings
from tests.hub.conftest import LiveHub, wait_until
from tests.hub.raw_worker import answer, chat, hello, raw_worker, receive

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def hub_overrides() -> dict[str, Any]:
    """A short queue grace (an untrusted-only model degrades fast) and a quick trust sync."""
    return {
        "inference": InferenceSettings(
            local_worker=False, heartbeat_interval_s=1, first_token_timeout_s=30, trust_sync_s=0.2
        )
    }


def admin(hub: LiveHub) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.admin_token}"}


def user(hub: LiveHub) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.user_token}"}


@pytest.fixture
def policy(live_hub: LiveHub) -> Iterator[None]:
    """Tests that change the pool config put the defaults back (with a 1 s queue grace)."""
    put_config(live_hub)
    yield
    put_config(live_hub)


def put_config(hub: LiveHub, **config: Any) -> None:
    response = httpx.put(
        f"{hub.url}/admin/api/pool-config",
        json={"queue_wait_s": 1.0, **config},
        headers=admin(hub),
    )
    assert response.status_code == 200, response.text


def live_worker(hub: LiveHub, name: str) -> dict[str, Any]:
    data = httpx.get(f"{hub.url}/admin/api/workers", headers=admin(hub)).json()["data"]
    return next(w for w in data if w["name"] == name)


async def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One HTTP call from an async test."""
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.request(method, url, **kwargs)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_hello_only_narrows_the_record(live_hub: LiveHub) -> None:
    name = unique("cpu-box")
    token = live_hub.worker_token_for(name, hardware="cpu", slots=2)
    claims = {**hello(token, "narrow-model", slots=50, name="gpu-monster"), "hardware": "gpu"}
    async with connect(live_hub.ws_url) as ws:
        await ws.send(json.dumps(claims))
        welcome = await receive(ws, "welcome")
        seen = live_worker(live_hub, name)
        assert welcome["worker_id"] == seen["id"]
        assert seen["hardware"] == "cpu"  # the record says CPU: a GPU claim is not believed
        assert seen["slots"] == 2  # capped by the record
        assert seen["name"] == name  # the record's name, not the one the hello chose
        assert seen["trust"] == identity.ESTABLISHED


async def test_models_outside_the_record_are_dropped_and_a_worker_of_none_is_refused(
    live_hub: LiveHub,
) -> None:
    name = unique("only-a")
    conn = await asyncpg.connect(live_hub.database_url)
    try:
        token = live_hub.worker_token_for(name)
        record = await identity.find_worker(conn, name)
        assert record is not None
        await identity.update_worker(conn, record.id, models=["model-a"])
    finally:
        await conn.close()
    both = hello(token, "model-a")
    both["models"].append({"id": "model-b", "context_size": 2048, "supports_tools": False})
    async with connect(live_hub.ws_url) as ws:
        await ws.send(json.dumps(both))
        await receive(ws, "welcome")
        assert live_worker(live_hub, name)["models"] == ["model-a"]
    async with connect(live_hub.ws_url) as ws:
        await ws.send(json.dumps(hello(token, "model-b")))
        error = await receive(ws, "error")
        assert error["code"] == "not_allowed"
        assert "model-b" in error["message"]
        with pytest.raises(ConnectionClosed):
            await ws.recv()


async def test_one_link_per_record_a_second_connection_is_refused(live_hub: LiveHub) -> None:
    name = unique("single")
    async with raw_worker(live_hub, "single-model", name=name):
        async with connect(live_hub.ws_url) as second:
            await second.send(json.dumps(hello(live_hub.worker_token_for(name), "single-model")))
            error = await receive(second, "error")
            assert error["code"] == "already_connected"
        assert live_worker(live_hub, name)["name"] == name  # the first link is untouched


async def test_naming_itself_after_a_configured_worker_earns_no_share(
    live_hub: LiveHub, policy: None
) -> None:
    star = unique("star")
    put_config(live_hub, worker_shares={star: 0.8})
    impostor = unique("impostor")
    token = live_hub.worker_token_for(impostor)
    async with connect(live_hub.ws_url) as ws, raw_worker(live_hub, "share-model", name=star):
        await ws.send(json.dumps(hello(token, "share-model", name=star)))
        await receive(ws, "welcome")
        seen = live_worker(live_hub, impostor)
        assert seen["name"] == impostor
        assert seen["target_share"] == pytest.approx(0.2)  # what the star leaves, no more
        assert live_worker(live_hub, star)["target_share"] == pytest.approx(0.8)


async def test_a_new_worker_gets_no_chat_until_it_is_trusted(
    live_hub: LiveHub, policy: None
) -> None:
    name = unique("newcomer")
    token = live_hub.worker_token_for(name, trust=identity.NEW)
    async with raw_worker(live_hub, "trust-model", name=name, token=token) as ws:
        response = await anyio.to_thread.run_sync(chat, live_hub, "trust-model")
        assert response.status_code == 200
        assert response.headers["X-Iamine-Route"] == "degraded"
        assert "[iamine: degraded answer]" in response.json()["choices"][0]["message"]["content"]
        changed = await request(
            "put",
            f"{live_hub.url}/admin/api/workers/{name}/trust",
            json={"level": 1, "reason": "vetted by hand"},
            headers=admin(live_hub),
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["trust"] == 1 and changed.json()["connected"] is True
        result: dict[str, httpx.Response] = {}
        async with anyio.create_task_group() as tasks:

            async def ask() -> None:
                result["r"] = await anyio.to_thread.run_sync(chat, live_hub, "trust-model")

            tasks.start_soon(ask)
            job = await receive(ws, "job")
            await answer(ws, job, "trusted now")
        assert result["r"].json()["choices"][0]["message"]["content"] == "trusted now"


async def test_a_trust_change_made_elsewhere_reaches_the_live_link(live_hub: LiveHub) -> None:
    name = unique("synced")
    async with raw_worker(live_hub, "sync-model", name=name):
        conn = await asyncpg.connect(live_hub.database_url)
        try:
            record = await identity.find_worker(conn, name)
            assert record is not None
            await identity.reset_trust(conn, record.id, "slashed elsewhere")
        finally:
            await conn.close()
        wait_until(lambda: live_worker(live_hub, name)["trust"] == 0, 10, "the trust to sync")


async def test_a_user_may_ask_for_more_trust_than_the_pool_never_less(
    live_hub: LiveHub, policy: None
) -> None:
    url = f"{live_hub.url}/v1/preferences"
    saved = await request(
        "put", url, json={"auto_review": False, "min_trust": 3}, headers=user(live_hub)
    )
    assert saved.status_code == 200, saved.text
    try:
        assert (await request("get", url, headers=user(live_hub))).json()["min_trust"] == 3
        async with raw_worker(live_hub, "picky-model", name=unique("established")):
            response = await anyio.to_thread.run_sync(chat, live_hub, "picky-model")
            assert response.headers["X-Iamine-Route"] == "degraded"  # trust 2 < the user's 3
        for bad in (4, -1, "3", True):
            refused = await request(
                "put", url, json={"auto_review": False, "min_trust": bad}, headers=user(live_hub)
            )
            assert refused.status_code == 400, (bad, refused.text)
    finally:
        await request("put", url, json={"auto_review": False}, headers=user(live_hub))
    assert (await request("get", url, headers=user(live_hub))).json()["min_trust"] == 0


async def test_an_exclusion_outlives_a_reconnection(live_hub: LiveHub, policy: None) -> None:
    put_config(live_hub, catalog=["allowed-model"])
    name = unique("outsider")
    async with raw_worker(live_hub, "outside-model", name=name):
        assert live_worker(live_hub, name)["excluded"] == "unknown_model"
    put_config(live_hub)  # the catalog allows any model again
    async with raw_worker(live_hub, "outside-model", name=name):
        # Same record: still excluded until the admin readmits it.
        assert live_worker(live_hub, name)["excluded"] == "unknown_model"


async def test_the_admin_registers_a_worker_and_sets_its_trust(live_hub: LiveHub) -> None:
    name = unique("admin-made")
    base = f"{live_hub.url}/admin/api/workers"
    spec = {"name": name, "owner": "volunteer", "hardware": "gpu", "max_slots": 3, "trust": 3}
    made = await request("post", base, json=spec, headers=admin(live_hub))
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["worker"]["trust"] == 3 and body["worker"]["hardware"] == "gpu"
    assert body["token"].startswith("iam_")
    assert (await request("post", base, json=spec, headers=admin(live_hub))).status_code == 409
    async with raw_worker(live_hub, "admin-model", name=name, token=body["token"]):
        listed = (await request("get", base, headers=admin(live_hub))).json()
        record = next(r for r in listed["records"] if r["name"] == name)
        assert record["connected"] is True
    lowered = await request(
        "put", f"{base}/{name}/trust", json={"level": 0, "reason": "audit"}, headers=admin(live_hub)
    )
    assert lowered.status_code == 200
    detail = (await request("get", f"{base}/{name}", headers=admin(live_hub))).json()
    assert detail["trust"] == 0
    assert detail["trust_history"][0] == {
        "from_level": 3,
        "to_level": 0,
        "reason": "audit",
        "created_at": detail["trust_history"][0]["created_at"],
    }
    changed = await request(
        "patch", f"{base}/{name}", json={"max_slots": 8}, headers=admin(live_hub)
    )
    assert changed.json()["max_slots"] == 8


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("put", "/admin/api/workers/nobody-here/trust", {"level": 1}, 404),
        ("put", "/admin/api/workers/volunteer/trust", {"level": 4}, 400),
        ("put", "/admin/api/workers/volunteer/trust", {"level": "1"}, 400),
        ("post", "/admin/api/workers", {"name": "bad name", "owner": "volunteer"}, 400),
        ("post", "/admin/api/workers", {"name": "x", "owner": "nobody-at-all"}, 404),
        ("patch", "/admin/api/workers/volunteer", {"hardware": "tpu"}, 400),
        ("patch", "/admin/api/workers/volunteer", {"surprise": 1}, 400),
    ],
)
def test_bad_admin_requests_get_clear_errors(
    live_hub: LiveHub, method: str, path: str, body: dict[str, Any], status: int
) -> None:
    response = httpx.request(method, f"{live_hub.url}{path}", json=body, headers=admin(live_hub))
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def test_the_worker_admin_api_needs_the_admin_token(live_hub: LiveHub) -> None:
    path = f"{live_hub.url}/admin/api/workers/volunteer/trust"
    assert httpx.put(path, json={"level": 3}).status_code == 401
    assert httpx.put(path, json={"level": 3}, headers=user(live_hub)).status_code in (401, 403)


def test_an_owner_registers_lists_and_changes_only_their_own_workers(live_hub: LiveHub) -> None:
    name = unique("mine")
    made = httpx.post(
        f"{live_hub.url}/v1/workers",
        json={"name": name, "hardware": "gpu", "max_slots": 2, "models": ["m1"]},
        headers=user(live_hub),
    )
    assert made.status_code == 201, made.text
    assert made.json()["worker"]["trust"] == 0  # an owner cannot vouch for their own machine
    vouching = httpx.post(
        f"{live_hub.url}/v1/workers",
        json={"name": unique("vouch"), "trust": 3},
        headers=user(live_hub),
    )
    assert vouching.status_code == 400 and vouching.json()["error"]["param"] == "trust"
    mine = httpx.get(f"{live_hub.url}/v1/workers", headers=user(live_hub)).json()["data"]
    assert [w["name"] for w in mine] == [name]
    other = httpx.patch(
        f"{live_hub.url}/v1/workers/volunteer", json={"max_slots": 1}, headers=user(live_hub)
    )
    assert other.status_code == 404  # volunteer's worker, not alice's
    changed = httpx.patch(
        f"{live_hub.url}/v1/workers/{name}", json={"models": []}, headers=user(live_hub)
    )
    assert changed.status_code == 200 and changed.json()["models"] == []


async def test_a_worker_token_names_one_of_my_workers_or_is_refused(live_hub: LiveHub) -> None:
    name = unique("tokened")
    async with httpx.AsyncClient(base_url=live_hub.url) as http:
        made = await http.post("/v1/workers", json={"name": name}, headers=user(live_hub))
        assert made.status_code == 201
        conn = await asyncpg.connect(live_hub.database_url)
        try:
            alice = await accounts.get_user(conn, "alice")
            both = await accounts.create_token(conn, user_id=alice.id, scopes=("user", "worker"))
        finally:
            await conn.close()
        caller = {"Authorization": f"Bearer {both.token}"}
        minted = await http.post(
            "/v1/tokens", json={"scopes": ["worker"], "worker": name}, headers=caller
        )
        assert minted.status_code == 201, minted.text
        assert minted.json()["worker_id"] == made.json()["worker"]["id"]
        inherited = await http.post("/v1/tokens", json={"scopes": ["worker"]}, headers=caller)
        assert inherited.json()["worker_id"] == str(both.record.worker_id)
        cases = [
            ({"scopes": ["worker"], "worker": "volunteer"}, 404),  # someone else's worker
            ({"scopes": ["user"], "worker": name}, 400),
            ({"scopes": ["worker"], "worker": "bad name"}, 400),
        ]
        for body, status in cases:
            response = await http.post("/v1/tokens", json=body, headers=caller)
            assert response.status_code == status, (body, response.text)


async def test_worker_tokens_from_before_records_get_a_record_each(
    empty_database_url: str,
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        before = [m for m in load_migrations() if m.version < 10]
        await migrate(conn, before)
        owner = await conn.fetchval("INSERT INTO users (name) VALUES ('old') RETURNING id")
        await conn.execute(
            "INSERT INTO tokens (user_id, prefix, hash, scopes) VALUES "
            "($1, 'abcdef0123', $2, ARRAY['worker']), ($1, '0123abcdef', $2, ARRAY['user'])",
            owner,
            b"\x00" * 32,
        )
        await migrate(conn)
        rows = await conn.fetch(
            "SELECT t.prefix, w.name, w.trust, w.hardware, w.owner_id FROM tokens t "
            "LEFT JOIN workers w ON w.id = t.worker_id ORDER BY t.prefix"
        )
        assert [(r["prefix"], r["name"]) for r in rows] == [
            ("0123abcdef", None),
            ("abcdef0123", "w-abcdef0123"),
        ]
        assert rows[1]["trust"] == 0 and rows[1]["hardware"] == "cpu"
        assert rows[1]["owner_id"] == owner
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO tokens (user_id, prefix, hash, scopes) "
                "VALUES ($1, 'fedcba9876', $2, ARRAY['worker'])",
                owner,
                b"\x00" * 32,
            )
    finally:
        await conn.close()


async def test_nobody_but_the_hub_gets_the_local_workers_name(live_hub: LiveHub) -> None:
    taken = await request(
        "post", f"{live_hub.url}/v1/workers", json={"name": "local"}, headers=user(live_hub)
    )
    assert taken.status_code == 409 and "hub's own" in taken.json()["error"]["message"]
    conn = await asyncpg.connect(live_hub.database_url)
    try:
        alice = await accounts.get_user(conn, "alice")
        issued = await accounts.create_token(
            conn, user_id=alice.id, scopes=("worker",), name="local"
        )
        assert issued.record.worker_id is not None
        record = await identity.get_worker(conn, issued.record.worker_id)
        assert record is not None and record.name != "local"
    finally:
        await conn.close()
