"""Gossip between live hubs: heartbeats, candidates, capabilities; refusals of bad messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
from typer.testing import CliRunner
from websockets.asyncio.client import connect

from federation.identity import PoolIdentity, encode_public_key
from hub.cli import app
from tests.federation.conftest import FedHub, admit_identity, new_identity, send, signed_request
from tests.hub.conftest import register_test_worker
from tests.hub.raw_worker import hello, receive

MODEL = "gossip-model"


def _peer(inviter: FedHub, joiner: FedHub) -> None:
    minted = inviter.admin("POST", "/admin/api/federation/invites", json={}).json()
    added = joiner.admin(
        "POST",
        "/admin/api/federation/peers",
        json={"url": inviter.url, "fingerprint": minted["pool_id"], "invite": minted["invite"]},
    )
    assert added.status_code == 201, added.text


def _sync(hub: FedHub) -> dict[str, Any]:
    response = hub.admin("POST", "/admin/api/jobs/federation_sync/run")
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    assert run["outcome"] == "ok", run
    return run


def _members(hub: FedHub) -> dict[str, dict[str, Any]]:
    response = hub.admin("GET", "/admin/api/federation/members")
    assert response.status_code == 200, response.text
    return {m["pool_id"]: m for m in response.json()["data"]}


def _candidates(hub: FedHub) -> dict[str, dict[str, Any]]:
    response = hub.admin("GET", "/admin/api/federation/candidates")
    assert response.status_code == 200, response.text
    return {c["pool_id"]: c for c in response.json()["data"]}


@asynccontextmanager
async def _worker(hub: FedHub, slots: int) -> AsyncIterator[None]:
    token = await register_test_worker(hub.database_url, "gossiper", "cpu", slots, 2)
    ws_url = hub.url.replace("http://", "ws://") + "/v1/workers/ws"
    async with connect(ws_url) as ws:
        await ws.send(json.dumps(hello(token, MODEL, slots, "gossiper")))
        await receive(ws, "welcome")
        yield


def test_gossip_spreads_heartbeats_capabilities_and_candidates_the_admin_admits(
    fed_hubs: list[FedHub],
) -> None:
    a, b, c = fed_hubs
    _peer(a, b)
    _peer(a, c)
    ids = {hub.url: hub.identity.pool_id for hub in fed_hubs}
    pa, pb, pc = ids[a.url], ids[b.url], ids[c.url]

    async def with_a_worker_on_b() -> None:
        async with _worker(b, slots=3):
            run = await anyio.to_thread.run_sync(_sync, b)
            assert run["detail"]["ok"] == [pa]

    asyncio.run(with_a_worker_on_b())
    on_a = _members(a)
    assert on_a[pb]["status"] == "alive" and on_a[pb]["heartbeat"][1] >= 1
    offers = on_a[pb]["offers"]
    assert [(o["model"], o["free_slots"], o["url"]) for o in offers] == [(MODEL, 3, b.url)]
    assert offers[0]["tokens_per_s"] is None  # only this pool's own measurement counts

    run = _sync(a)
    assert sorted(run["detail"]["ok"]) == sorted([pb, pc])
    assert run["detail"]["bytes_sent"] > 0 and run["detail"]["bytes_received"] > 0
    # C learned of B (and B of C) through A's gossip: candidates, vouched for by A only.
    assert _candidates(c)[pb]["vouched_by"] == [pa]
    assert _candidates(c)[pb]["url"] == b.url
    assert _candidates(b)[pc]["vouched_by"] == [pa]
    assert pb not in {
        p["pool_id"] for p in c.admin("GET", "/admin/api/federation/peers").json()["data"]
    }

    listed = CliRunner().invoke(app, ["federation", "candidates", "list"], env=c.env())
    assert listed.exit_code == 0 and pb in listed.output, listed.output
    admitted = c.admin("POST", f"/admin/api/federation/candidates/{pb}/admit")
    assert admitted.status_code == 201, admitted.text
    assert admitted.json()["admitted_by"] == "admin"
    by_cli = CliRunner().invoke(app, ["federation", "candidates", "admit", pc], env=b.env())
    assert by_cli.exit_code == 0 and f"Admitted {pc}" in by_cli.output, by_cli.output
    again = c.admin("POST", f"/admin/api/federation/candidates/{pb}/admit")
    assert again.status_code == 404 and again.json()["error"]["code"] == "peer_not_found"

    run = _sync(c)
    assert sorted(run["detail"]["ok"]) == sorted([pa, pb])
    assert _members(b)[pc]["status"] == "alive"
    logged = c.admin("GET", "/admin/api/federation/gossip?limit=5").json()["data"]
    assert {(row["peer"], row["direction"], row["ok"]) for row in logged[:2]} == {
        (pa, "out", True),
        (pb, "out", True),
    }
    assert logged[0]["detail"]["heartbeat"][1] >= 1
    shown = CliRunner().invoke(app, ["federation", "members"], env=a.env())
    assert shown.exit_code == 0, shown.output
    assert pb in shown.output and pc in shown.output and shown.output.count("alive") == 2


def _gossip_body(identity: PoolIdentity, **overrides: object) -> bytes:
    message: dict[str, object] = {
        "pool_id": identity.pool_id,
        "heartbeat": [1, 1],
        "members": [],
        "suspects": [],
        "capabilities": {"models": [{"model": "m", "free_slots": 1, "price_per_1k": 3}]},
    }
    return orjson.dumps({**message, **overrides})


def test_gossip_from_a_stranger_a_replay_or_a_malformed_body_is_refused(
    fed_hubs: list[FedHub],
) -> None:
    a = fed_hubs[0]
    known, stranger = new_identity(), new_identity()
    admit_identity(a.database_url, known)
    url = a.url + "/v1/federation/gossip"

    body = _gossip_body(known)
    request = signed_request(known, "POST", url, body)
    answered = send(request, body)
    assert answered.status_code == 200, answered.text
    answer = answered.json()
    assert answer["pool_id"] == a.identity.pool_id and len(answer["heartbeat"]) == 2
    assert known.pool_id in {m["pool_id"] for m in answer["members"]}
    assert "signature" in answered.headers

    replayed = send(request, body)
    assert replayed.status_code == 401 and replayed.json()["error"]["code"] == "replayed_request"

    strange = _gossip_body(stranger)
    refused = send(signed_request(stranger, "POST", url, strange), strange)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unknown_peer"

    for bad, param in [
        (b"{not json", None),
        (_gossip_body(known, heartbeat="soon"), "heartbeat"),
        (_gossip_body(known, pool_id=stranger.pool_id), "pool_id"),
        (_gossip_body(known, capabilities={"models": 1}), "capabilities"),
    ]:
        response = send(signed_request(known, "POST", url, bad), bad)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_federation_input" and error["param"] == param
    # The known peer's first message counted; the refused ones changed nothing.
    members = _members(a)
    assert members[known.pool_id]["heartbeat"] == [1, 1]
    offers = members[known.pool_id]["offers"]
    assert [(o["model"], o["price_per_1k"]) for o in offers] == [("m", 3)]


def test_a_listed_pool_under_someone_else_s_key_never_becomes_a_candidate(
    fed_hubs: list[FedHub],
) -> None:
    a = fed_hubs[0]
    known, victim, impostor = new_identity(), new_identity(), new_identity()
    admit_identity(a.database_url, known)
    listed = {
        "pool_id": victim.pool_id,
        "url": "http://127.0.0.1:7",
        "public_key": encode_public_key(impostor.public_key),
        "heartbeat": [1, 1],
    }
    body = _gossip_body(known, members=[listed])
    response = send(signed_request(known, "POST", a.url + "/v1/federation/gossip", body), body)
    assert response.status_code == 200, response.text
    assert victim.pool_id not in _candidates(a)
