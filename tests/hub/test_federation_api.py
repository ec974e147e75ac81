"""The federation admin API and peer routes in one hub: access, validation, off and on.

Peering between several live hubs is in tests/federation/test_peering.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from fastapi.testclient import TestClient

from federation import peers
from federation.errors import IdentityError
from federation.identity import key_file, load_or_create_identity
from federation.settings import FederationSettings
from hub import accounts
from hub.app import create_app
from hub.config import Settings
from tests.federation.conftest import new_identity, signed_request

ORIGIN = "http://testserver"  # the host Starlette's test client sends


@pytest.fixture
def federated(settings: Settings) -> Iterator[TestClient]:
    """A hub with federation on, reached as ``http://testserver``."""
    on = settings.model_copy(
        update={"federation": FederationSettings(enabled=True, public_url=ORIGIN)}
    )
    with TestClient(create_app(on)) as test_client:
        yield test_client


def _admin(settings: Settings) -> dict[str, str]:
    token = (settings.data_dir / "admin-token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def _code(response: Any) -> str:
    """The error code of a test client's answer."""
    code: str = response.json()["error"]["code"]
    return code


async def _user_token(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        user = await accounts.create_user(conn, "mallory")
        issued = await accounts.create_token(conn, user_id=user.id, scopes=("user",))
        return issued.token
    finally:
        await conn.close()


def test_the_admin_routes_need_the_admin_token(
    federated: TestClient, settings: Settings, database_url: str
) -> None:
    user = {"Authorization": f"Bearer {asyncio.run(_user_token(database_url))}"}
    routes = [
        ("GET", "/admin/api/federation"),
        ("GET", "/admin/api/federation/peers"),
        ("POST", "/admin/api/federation/invites"),
        ("DELETE", f"/admin/api/federation/peers/{new_identity().pool_id}"),
    ]
    for method, path in routes:
        assert federated.request(method, path, json={}).status_code == 401
        refused = federated.request(method, path, json={}, headers=user)
        assert refused.status_code == 403 and _code(refused) == "insufficient_scope"
    assert federated.get("/admin/api/federation", headers=_admin(settings)).status_code == 200


def test_with_federation_off_peers_see_no_federation_and_the_admin_is_told(
    client: TestClient, admin_token: str
) -> None:
    admin = {"Authorization": f"Bearer {admin_token}"}
    ping = client.get("/v1/federation/ping")
    assert ping.status_code == 404 and _code(ping) == "federation_disabled"
    invite = client.post("/admin/api/federation/invites", json={}, headers=admin)
    assert invite.status_code == 409 and _code(invite) == "federation_disabled"
    assert client.get("/admin/api/federation", headers=admin).json()["enabled"] is False
    assert client.get("/admin/api/federation/peers", headers=admin).json()["data"] == []


def test_an_invite_is_minted_once_with_the_pool_s_id_and_url(
    federated: TestClient, settings: Settings
) -> None:
    shown = federated.get("/admin/api/federation", headers=_admin(settings)).json()
    identity = load_or_create_identity(settings.data_dir)
    assert shown == {
        "enabled": True,
        "pool_id": identity.pool_id,
        "public_key": identity.public_key_text,
        "url": ORIGIN,
    }
    bound = new_identity().pool_id
    response = federated.post(
        "/admin/api/federation/invites",
        json={"expires_s": 600, "for_pool_id": bound},
        headers=_admin(settings),
    )
    assert response.status_code == 201, response.text
    minted = response.json()
    assert re.fullmatch(r"iaminv1_[A-Za-z0-9_-]{43}", minted["invite"])
    assert minted["pool_id"] == identity.pool_id and minted["for_pool_id"] == bound
    assert minted["url"] == ORIGIN


@pytest.mark.parametrize(
    "body",
    [
        {"expires_s": 10},
        {"expires_s": "600"},
        {"for_pool_id": "iam1-not-an-id"},
        {"surprise": True},
    ],
)
def test_a_malformed_invite_request_is_a_400(
    federated: TestClient, settings: Settings, body: dict[str, object]
) -> None:
    response = federated.post("/admin/api/federation/invites", json=body, headers=_admin(settings))
    assert response.status_code == 400, response.text


def test_adding_a_peer_refuses_a_bad_url_and_the_pool_itself(
    federated: TestClient, settings: Settings
) -> None:
    identity = load_or_create_identity(settings.data_dir)
    invite = "iaminv1_" + "a" * 43
    cases = [
        ({"url": "ftp://pool.example", "fingerprint": new_identity().pool_id}, "url"),
        ({"url": ORIGIN, "fingerprint": identity.pool_id}, "url"),
        ({"url": "https://pool.example/x", "fingerprint": new_identity().pool_id}, "url"),
    ]
    for body, param in cases:
        response = federated.post(
            "/admin/api/federation/peers", json={**body, "invite": invite}, headers=_admin(settings)
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


def test_removing_or_pinging_an_unknown_peer_is_a_404(
    federated: TestClient, settings: Settings
) -> None:
    stranger = new_identity().pool_id
    for method, path in [
        ("DELETE", f"/admin/api/federation/peers/{stranger}"),
        ("POST", f"/admin/api/federation/peers/{stranger}/ping"),
    ]:
        response = federated.request(method, path, headers=_admin(settings))
        assert response.status_code == 404 and _code(response) == "peer_not_found"
    bad = federated.delete("/admin/api/federation/peers/not-a-pool", headers=_admin(settings))
    assert bad.status_code == 400


async def _admit(database_url: str, pool_id: str, public_key: bytes) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await peers.admit_peer(
            conn,
            pool_id=pool_id,
            public_key=public_key,
            url="https://peer.example",
            admitted_by="test",
            now=datetime.now(UTC),
        )
    finally:
        await conn.close()


def test_a_peer_s_signed_ping_gets_a_signed_answer_and_a_stranger_s_does_not(
    federated: TestClient, settings: Settings, database_url: str
) -> None:
    peer = new_identity()
    request = signed_request(peer, "GET", ORIGIN + "/v1/federation/ping")
    refused = federated.get("/v1/federation/ping", headers=request.headers)
    assert refused.status_code == 401 and _code(refused) == "unknown_peer"

    asyncio.run(_admit(database_url, peer.pool_id, peer.public_key))
    request = signed_request(peer, "GET", ORIGIN + "/v1/federation/ping")
    answer = federated.get("/v1/federation/ping", headers=request.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["peer"] == peer.pool_id
    assert '"signature";req;key="iamine"' in answer.headers["signature-input"]
    listed = federated.get("/admin/api/federation/peers", headers=_admin(settings)).json()
    assert listed["data"][0]["last_seen_at"] is not None


def test_a_malformed_or_unsigned_hello_is_refused(federated: TestClient) -> None:
    garbage = federated.post("/v1/federation/hello", content=b"nope")
    assert garbage.status_code == 400
    joiner = new_identity()
    hello = {
        "pool_id": joiner.pool_id,
        "public_key": joiner.public_key_text,
        "url": "https://joiner.example",
        "invite": "iaminv1_" + "a" * 43,
        "to": joiner.pool_id,
    }
    unsigned = federated.post("/v1/federation/hello", json=hello)
    assert unsigned.status_code == 401 and _code(unsigned) == "signature_missing"


def test_a_hub_refuses_to_start_on_a_key_others_may_read(settings: Settings) -> None:
    on = settings.model_copy(
        update={"federation": FederationSettings(enabled=True, public_url=ORIGIN)}
    )
    load_or_create_identity(on.data_dir)
    key_file(on.data_dir).chmod(0o644)
    with pytest.raises(IdentityError, match="readable by others"), TestClient(create_app(on)):
        pass
