"""The admin dashboard against a live hub: who may see each page, CSRF, the config editor,
the blacklist (the admin API reflects both), accounts, cleanup and the ledger."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from federation.errors import InviteRefused
from federation.peers import admit_peer
from hub import accounts
from hub.web.session import SESSION_COOKIE, open_session
from tests.hub.raw_worker import hello, raw_worker
from tests.web.conftest import LiveHub

ADMIN_PAGES = [
    "/admin",
    "/admin/pool/tables",
    "/admin/jobs",
    "/admin/red",
    "/admin/benchmarks",
    "/admin/accounts",
    "/admin/tokens",
    "/admin/blacklist",
    "/admin/cleanup",
    "/admin/config",
    "/admin/ledger",
]
PEER = "iam1" + "a" * 52


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None, page.text[:500]
    return found.group(1)


def admin_client(hub: LiveHub) -> httpx.Client:
    """A browser signed in with the pool admin token."""
    client = httpx.Client(base_url=hub.url, timeout=30)
    token = csrf_of(client.get("/login/admin"))
    signed = client.post("/login/admin", data={"csrf_token": token, "token": hub.admin_token})
    assert signed.status_code == 303, signed.text
    return client


async def _session_of(database_url: str, name: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        try:
            user = await accounts.get_user(conn, name)
        except Exception:
            user = await accounts.create_user(conn, name)
        secret, _ = await open_session(conn, method="password", ttl_s=3600, user_id=user.id)
        return secret
    finally:
        await conn.close()


def user_client(hub: LiveHub, name: str = "bob") -> httpx.Client:
    """A browser signed in as an ordinary user ``name`` (a session row, as sign-in makes)."""
    secret = asyncio.run(_session_of(hub.database_url, name))
    client = httpx.Client(base_url=hub.url, timeout=30, cookies={SESSION_COOKIE: secret})
    client.get("/")  # the CSRF cookie
    return client


def api(hub: LiveHub, path: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {hub.admin_token}"}
    return httpx.get(hub.url + path, headers=headers, timeout=30)


def form(client: httpx.Client, path: str, page: str, **fields: str) -> httpx.Response:
    """Post ``fields`` to ``path`` with the CSRF token of ``page``, as the browser would."""
    return client.post(path, data={"csrf_token": csrf_of(client.get(page)), **fields})


def test_admin_pages_send_visitors_to_sign_in_and_refuse_users(live_hub: LiveHub) -> None:
    visitor = httpx.Client(base_url=live_hub.url, timeout=30)
    user = user_client(live_hub)
    admin = admin_client(live_hub)
    for page in ADMIN_PAGES:
        anonymous = visitor.get(page)
        assert anonymous.status_code == 303, page
        assert anonymous.headers["location"].startswith("/login?next=")
        assert user.get(page).status_code == 403, page
        assert admin.get(page).status_code == 200, page
    for page in ["/", "/chat"]:  # public pages, the molecule and the trial chat
        for client in (visitor, user, admin):
            assert client.get(page).status_code == 200, page


def test_admin_posts_without_the_csrf_token_are_refused(live_hub: LiveHub) -> None:
    admin = admin_client(live_hub)
    for path, data in [
        ("/admin/config", {"queue_wait_s": "1"}),
        ("/admin/blacklist", {"kind": "user", "subject": "alice", "reason": "x"}),
        ("/admin/cleanup/tokens", {"confirm": "yes"}),
        ("/admin/accounts/alice/disable", {}),
    ]:
        refused = admin.post(path, data=data)
        assert refused.status_code == 403, path
        assert "security token" in refused.text
    assert api(live_hub, "/admin/api/users").json()["data"]


def test_the_config_editor_shows_each_fields_description_and_the_api_reflects_a_save(
    live_hub: LiveHub,
) -> None:
    admin = admin_client(live_hub)
    page = admin.get("/admin/config")
    assert 'title="Target share of work per hardware class; sums to 1."' in page.text
    assert "Verified jobs (dispute window closed" in page.text
    fields = dict(re.findall(r'name="([a-z_.0-9]+)" value="([^"]*)"', page.text))
    areas = dict(
        re.findall(r'name="([a-z_.0-9]+)" rows="\d+"[^>]*>(.*?)</textarea>', page.text, re.S)
    )
    posted = {**fields, **{k: v.replace("&#34;", '"') for k, v in areas.items()}}
    posted["queue_wait_s"] = "2.5"
    posted["trust.established_jobs"] = "77"
    saved = admin.post("/admin/config", data={**posted, "csrf_token": csrf_of(page)})
    assert saved.status_code == 303, saved.text
    config = api(live_hub, "/admin/api/pool-config").json()
    assert config["queue_wait_s"] == 2.5
    assert config["trust"]["established_jobs"] == 77
    posted["class_shares"] = '{"gpu": 0.5, "cpu": 0.2}'
    refused = admin.post("/admin/config", data={**posted, "csrf_token": csrf_of(page)})
    assert refused.status_code == 400
    assert "class_shares must sum to 1" in refused.text
    posted["class_shares"] = "{not json"
    refused = admin.post("/admin/config", data={**posted, "csrf_token": csrf_of(page)})
    assert refused.status_code == 400
    assert "class_shares: not a valid json" in refused.text
    assert api(live_hub, "/admin/api/pool-config").json()["class_shares"] == {
        "gpu": 0.62,
        "cpu": 0.38,
    }


@pytest.mark.anyio
async def test_a_blacklisted_worker_is_cut_off_and_the_api_reflects_it(live_hub: LiveHub) -> None:
    admin = admin_client(live_hub)
    token = live_hub.worker_token_for("rogue")
    async with raw_worker(live_hub, "m-rogue", name="rogue", token=token) as ws:
        listed = api(live_hub, "/admin/api/workers").json()
        assert "rogue" in [w["name"] for w in listed["data"]]
        banned = form(
            admin,
            "/admin/blacklist",
            "/admin/blacklist",
            kind="worker",
            subject="rogue",
            reason="serves junk",
        )
        assert banned.status_code == 303, banned.text
        await asyncio.wait_for(ws.wait_closed(), 10)
    workers = api(live_hub, "/admin/api/workers").json()
    assert "rogue" not in [w["name"] for w in workers["data"]]
    rogue = [r for r in workers["records"] if r["name"] == "rogue"]
    assert [(r["connected"], r["blacklisted"]) for r in rogue] == [(False, True)]
    async with connect(live_hub.ws_url) as again:
        await again.send(__import__("json").dumps(hello(token, "m-rogue", name="rogue")))
        refused = await asyncio.wait_for(again.recv(), 10)
    assert "invalid_token" in str(refused)
    page = admin.get("/admin/blacklist")
    assert "serves junk" in page.text


@pytest.mark.anyio
async def test_a_blacklisted_peer_cannot_be_admitted_and_a_lifted_one_can(
    live_hub: LiveHub,
) -> None:
    admin = admin_client(live_hub)
    assert (
        form(
            admin, "/admin/blacklist", "/admin/blacklist", kind="peer", subject=PEER, reason="spam"
        ).status_code
        == 303
    )
    conn = await asyncpg.connect(live_hub.database_url)
    try:
        with pytest.raises(InviteRefused) as refused:
            await admit_peer(
                conn,
                pool_id=PEER,
                public_key=b"k" * 32,
                url="https://peer.example",
                admitted_by="test",
                now=datetime.now(UTC),
            )
        assert refused.value.code == "peer_blacklisted"
        lifted = form(admin, f"/admin/blacklist/peer/{PEER}/lift", "/admin/blacklist")
        assert lifted.status_code == 303
        peer = await admit_peer(
            conn,
            pool_id=PEER,
            public_key=b"k" * 32,
            url="https://peer.example",
            admitted_by="test",
            now=datetime.now(UTC),
        )
        assert peer.pool_id == PEER
        await conn.execute("DELETE FROM peers WHERE pool_id = $1", PEER)
    finally:
        await conn.close()


def test_blacklisting_needs_a_reason_and_an_existing_subject(live_hub: LiveHub) -> None:
    admin = admin_client(live_hub)
    no_reason = form(
        admin, "/admin/blacklist", "/admin/blacklist", kind="user", subject="alice", reason=" "
    )
    assert no_reason.status_code == 400
    assert "Give a reason" in no_reason.text
    unknown = form(
        admin,
        "/admin/blacklist",
        "/admin/blacklist",
        kind="worker",
        subject="nobody-here",
        reason="x",
    )
    assert unknown.status_code == 404
    assert "No worker named" in unknown.text


def test_granting_admin_opens_the_dashboard_to_that_user(live_hub: LiveHub) -> None:
    admin = admin_client(live_hub)
    carol = user_client(live_hub, "carol")
    assert carol.get("/admin").status_code == 403
    granted = form(admin, "/admin/accounts/carol/admin", "/admin/accounts", granted="yes")
    assert granted.status_code == 303
    assert carol.get("/admin").status_code == 200
    assert (
        form(admin, "/admin/accounts/carol/admin", "/admin/accounts", granted="no").status_code
        == 303
    )
    assert carol.get("/admin").status_code == 403


def test_disabling_an_account_ends_its_tokens(live_hub: LiveHub) -> None:
    admin = admin_client(live_hub)
    user_client(live_hub, "dave")
    assert form(admin, "/admin/accounts/dave/disable", "/admin/accounts").status_code == 303
    users = {u["name"]: u for u in api(live_hub, "/admin/api/users").json()["data"]}
    assert users["dave"]["disabled_at"] is not None
    assert "disabled" in admin.get("/admin/accounts").text


async def _expired_session(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        user = await accounts.get_user(conn, "alice")
        await conn.execute(
            "INSERT INTO web_sessions (hash, user_id, method, created_at, expires_at) "
            "VALUES ($1, $2, 'password', $3, $3)",
            b"x" * 32,
            user.id,
            datetime.now(UTC) - timedelta(days=1),
        )
    finally:
        await conn.close()


def test_cleanup_shows_what_it_will_delete_and_deletes_only_once_confirmed(
    live_hub: LiveHub,
) -> None:
    asyncio.run(_expired_session(live_hub.database_url))
    admin = admin_client(live_hub)
    page = admin.get("/admin/cleanup")
    count = re.search(r'data-task="sessions"><td>[^<]*</td><td data-count>(\d+)</td>', page.text)
    assert count is not None and int(count.group(1)) >= 1
    review = form(admin, "/admin/cleanup/sessions", "/admin/cleanup")
    assert review.status_code == 200
    assert "rows will be deleted" in review.text
    assert re.search(r'data-task="sessions"><td>[^<]*</td><td data-count>[1-9]', review.text)
    done = form(admin, "/admin/cleanup/sessions", "/admin/cleanup", confirm="yes")
    assert "rows deleted" in done.text
    assert re.search(r'data-task="sessions"><td>[^<]*</td><td data-count>0<', done.text)
    unknown = form(admin, "/admin/cleanup/nothing", "/admin/cleanup")
    assert unknown.status_code == 404
    assert "No cleanup named" in unknown.text


async def _tombstones(database_url: str) -> None:
    """Two deleted shared notes: one past the minimum age (a day), one fresh."""
    conn = await asyncpg.connect(database_url)
    try:
        now = datetime.now(UTC)
        for age in (timedelta(days=2), timedelta(0)):
            await conn.execute(
                "INSERT INTO notes (id, namespace, content_hash, created_at, updated_at, "
                "deleted_at) VALUES (gen_random_uuid(), 'pool:cleanup', $1, $2, $2, $2)",
                b"t" * 32,
                now - age,
            )
    finally:
        await conn.close()


async def _notes_in(database_url: str, namespace: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM notes WHERE namespace = $1", namespace)
        )
    finally:
        await conn.close()


def test_cleanup_purges_only_tombstones_past_their_minimum_age(live_hub: LiveHub) -> None:
    asyncio.run(_tombstones(live_hub.database_url))
    admin = admin_client(live_hub)
    page = admin.get("/admin/cleanup")
    assert re.search(r'data-task="tombstones"><td>[^<]*</td><td data-count>1<', page.text)
    done = form(admin, "/admin/cleanup/tombstones", "/admin/cleanup", confirm="yes")
    assert "1 rows deleted" in done.text
    assert asyncio.run(_notes_in(live_hub.database_url, "pool:cleanup")) == 1


def test_jobs_red_and_ledger_pages_show_their_data(live_hub: LiveHub) -> None:
    admin = admin_client(live_hub)
    jobs = admin.get("/admin/jobs")
    assert "l1_purge" in jobs.text
    assert form(admin, "/admin/jobs/l1_purge/run", "/admin/jobs").status_code == 303
    assert "purged" in admin.get("/admin/jobs").text
    assert (
        form(admin, "/admin/red/playbook", "/admin/red", text="Watch the queue.").status_code == 303
    )
    assert "Watch the queue." in admin.get("/admin/red").text
    assert api(live_hub, "/admin/api/red/playbook").json()["current"]["text"] == "Watch the queue."
    ledger = admin.get("/admin/ledger")
    assert "No dispute." in ledger.text


def test_the_blacklist_api_adds_lists_and_lifts_as_the_page_does(live_hub: LiveHub) -> None:
    headers = {"Authorization": f"Bearer {live_hub.admin_token}"}
    url = live_hub.url + "/admin/api/blacklist"
    peer = "iam1" + "c" * 52
    added = httpx.post(
        url, json={"kind": "peer", "subject": peer, "reason": "spam"}, headers=headers
    )
    assert added.status_code == 201, added.text
    assert added.json()["subject"] == peer
    listed = httpx.get(url, headers=headers).json()["data"]
    assert [e["reason"] for e in listed if e["subject"] == peer] == ["spam"]
    assert peer in admin_client(live_hub).get("/admin/blacklist").text
    unknown = httpx.post(
        url, json={"kind": "user", "subject": "nobody", "reason": "x"}, headers=headers
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    bad = httpx.post(url, json={"kind": "planet", "subject": "x", "reason": "x"}, headers=headers)
    assert bad.status_code == 400
    user = httpx.post(
        url,
        json={"kind": "peer", "subject": peer, "reason": "x"},
        headers={"Authorization": f"Bearer {live_hub.user_token}"},
    )
    assert user.status_code == 403
    lifted = httpx.delete(f"{url}/peer/{peer}", headers=headers)
    assert lifted.status_code == 200
    assert httpx.delete(f"{url}/peer/{peer}", headers=headers).status_code == 404
