"""Tokens over HTTP: create, use, revoke, expire, and every bad-token case gets 401."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from fastapi.testclient import TestClient

from hub import accounts
from hub.accounts import hash_token
from tests.hub.conftest import wait_until

BAD_HEADERS = [
    ({}, "missing_api_key"),
    ({"Authorization": ""}, "missing_api_key"),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid_api_key"),
    ({"Authorization": "Bearer"}, "invalid_api_key"),
    ({"Authorization": "Bearer not-a-token"}, "invalid_api_key"),
    ({"Authorization": "Bearer iam_0000000000_" + "A" * 43}, "invalid_api_key"),
]


def _user_token(client: TestClient, admin_token: str, name: str = "alice", **body: object) -> str:
    auth = {"Authorization": f"Bearer {admin_token}"}
    assert client.post("/admin/api/users", json={"name": name}, headers=auth).status_code == 201
    response = client.post(f"/admin/api/users/{name}/tokens", json=body, headers=auth)
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(("headers", "code"), BAD_HEADERS)
def test_bad_tokens_get_401_in_the_openai_shape(
    client: TestClient, headers: dict[str, str], code: str
) -> None:
    response = client.get("/v1/tokens", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["type"] == "authentication_error"


def test_a_valid_token_with_a_wrong_secret_is_rejected(
    client: TestClient, admin_token: str
) -> None:
    token = _user_token(client, admin_token)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    response = client.get("/v1/tokens", headers=_bearer(forged))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_a_user_token_lists_only_its_own_tokens(client: TestClient, admin_token: str) -> None:
    alice = _user_token(client, admin_token, "alice")
    _user_token(client, admin_token, "bob")
    response = client.get("/v1/tokens", headers=_bearer(alice))
    assert response.status_code == 200
    assert {t["user"] for t in response.json()["data"]} == {"alice"}
    assert all("token" not in t for t in response.json()["data"])


def test_a_revoked_token_stops_working_at_once(client: TestClient, admin_token: str) -> None:
    alice = _user_token(client, admin_token)
    assert client.get("/v1/tokens", headers=_bearer(alice)).status_code == 200
    second = client.post("/v1/tokens", json={"name": "laptop"}, headers=_bearer(alice))
    assert second.status_code == 201
    laptop = second.json()["token"]
    assert client.get("/v1/tokens", headers=_bearer(laptop)).status_code == 200
    revoked = client.delete(f"/v1/tokens/{second.json()['prefix']}", headers=_bearer(alice))
    assert revoked.status_code == 200
    response = client.get("/v1/tokens", headers=_bearer(laptop))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_revoked"
    assert client.get("/v1/tokens", headers=_bearer(alice)).status_code == 200


def test_a_user_cannot_revoke_another_users_token(client: TestClient, admin_token: str) -> None:
    alice = _user_token(client, admin_token, "alice")
    bob = _user_token(client, admin_token, "bob")
    bob_prefix = accounts.token_prefix(bob)
    response = client.delete(f"/v1/tokens/{bob_prefix}", headers=_bearer(alice))
    assert response.status_code == 404
    assert client.get("/v1/tokens", headers=_bearer(bob)).status_code == 200


def test_an_expired_token_is_rejected(
    client: TestClient, admin_token: str, database_url: str
) -> None:
    token = _user_token(client, admin_token, expires_in_s=3600)

    async def expire() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE tokens SET expires_at = $1 WHERE hash = $2",
                datetime.now(UTC) - timedelta(seconds=1),
                hash_token(token),
            )
        finally:
            await conn.close()

    asyncio.run(expire())
    response = client.get("/v1/tokens", headers=_bearer(token))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_expired"


def test_a_disabled_users_tokens_stop_working(client: TestClient, admin_token: str) -> None:
    token = _user_token(client, admin_token)
    disabled = client.post("/admin/api/users/alice/disable", headers=_bearer(admin_token))
    assert disabled.status_code == 200
    response = client.get("/v1/tokens", headers=_bearer(token))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "user_disabled"


def test_a_user_token_cannot_reach_the_admin_api(client: TestClient, admin_token: str) -> None:
    token = _user_token(client, admin_token)
    response = client.get("/admin/api/users", headers=_bearer(token))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


def test_the_admin_token_is_not_a_user_token(client: TestClient, admin_token: str) -> None:
    response = client.get("/v1/tokens", headers=_bearer(admin_token))
    assert response.status_code == 403


def test_a_token_cannot_grant_scopes_its_issuer_lacks(client: TestClient, admin_token: str) -> None:
    token = _user_token(client, admin_token)
    response = client.post("/v1/tokens", json={"scopes": ["admin"]}, headers=_bearer(token))
    assert response.status_code == 403


def test_last_used_time_is_written_off_the_request_path(
    client: TestClient, admin_token: str, database_url: str
) -> None:
    token = _user_token(client, admin_token)
    assert client.get("/v1/tokens", headers=_bearer(token)).status_code == 200
    assert client.portal is not None
    client.portal.call(client.app_state["hub"].tokens.flush_last_used)

    async def last_used() -> datetime | None:
        conn = await asyncpg.connect(database_url)
        try:
            value: datetime | None = await conn.fetchval(
                "SELECT last_used_at FROM tokens WHERE hash = $1", hash_token(token)
            )
            return value
        finally:
            await conn.close()

    assert asyncio.run(last_used()) is not None


def test_a_cached_token_revoked_by_another_process_stops_working_within_the_check_interval(
    client: TestClient, admin_token: str, database_url: str
) -> None:
    token = _user_token(client, admin_token)
    assert client.get("/v1/tokens", headers=_bearer(token)).status_code == 200  # cached now

    async def revoke_like_the_cli() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await accounts.revoke_token(conn, accounts.token_prefix(token) or "")
        finally:
            await conn.close()

    asyncio.run(revoke_like_the_cli())
    # The cache keeps a token for 30 s; the hub re-reads cached tokens every 0.5 s.
    wait_until(
        lambda: client.get("/v1/tokens", headers=_bearer(token)).status_code == 401,
        5,
        "the revocation to reach the cache",
    )
    response = client.get("/v1/tokens", headers=_bearer(token))
    assert response.json()["error"]["code"] == "token_revoked"
