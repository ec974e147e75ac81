"""A token minted from a token (``POST /v1/tokens``) never outlives its parent: expiry and scopes
are capped at the parent's, and revoking or expiring the parent ends the child, transitively."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from fastapi.testclient import TestClient

from hub import accounts
from tests.hub.conftest import wait_until


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _root_token(client: TestClient, admin_token: str, **body: Any) -> dict[str, Any]:
    auth = _bearer(admin_token)
    assert client.post("/admin/api/users", json={"name": "alice"}, headers=auth).status_code == 201
    response = client.post("/admin/api/users/alice/tokens", json=body, headers=auth)
    assert response.status_code == 201, response.text
    issued: dict[str, Any] = response.json()
    return issued


def _mint(client: TestClient, parent: str, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/tokens", json=body, headers=_bearer(parent))
    assert response.status_code == 201, response.text
    minted: dict[str, Any] = response.json()
    return minted


def _code(client: TestClient, token: str) -> str | None:
    response = client.get("/v1/tokens", headers=_bearer(token))
    if response.status_code == 200:
        return None
    code: str = response.json()["error"]["code"]
    return code


def _run_sql(database_url: str, sql: str, *args: Any) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()

    asyncio.run(run())


def test_a_child_asking_to_outlive_its_parent_gets_the_parents_expiry(
    client: TestClient, admin_token: str
) -> None:
    parent = _root_token(client, admin_token, expires_in_s=3600)
    longer = _mint(client, parent["token"], expires_in_s=30 * 86400)
    forever = _mint(client, parent["token"])
    assert longer["expires_at"] == parent["expires_at"]
    assert forever["expires_at"] == parent["expires_at"]


def test_a_child_asking_for_less_than_its_parent_keeps_its_own_expiry(
    client: TestClient, admin_token: str
) -> None:
    parent = _root_token(client, admin_token, expires_in_s=3600)
    shorter = _mint(client, parent["token"], expires_in_s=60)
    assert datetime.fromisoformat(shorter["expires_at"]) < datetime.fromisoformat(
        parent["expires_at"]
    )


def test_a_child_of_an_unexpiring_parent_may_never_expire(
    client: TestClient, admin_token: str
) -> None:
    parent = _root_token(client, admin_token)
    assert _mint(client, parent["token"])["expires_at"] is None


def test_a_child_cannot_get_scopes_its_parent_lacks(client: TestClient, admin_token: str) -> None:
    parent = _root_token(client, admin_token, scopes=["user"])
    response = client.post(
        "/v1/tokens", json={"scopes": ["worker"]}, headers=_bearer(parent["token"])
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


def test_revoking_a_parent_revokes_its_descendants(client: TestClient, admin_token: str) -> None:
    parent = _root_token(client, admin_token)
    child = _mint(client, parent["token"], name="child")
    grandchild = _mint(client, child["token"], name="grandchild")
    sibling = _root_token_of_same_user(client, admin_token)
    assert _code(client, grandchild["token"]) is None  # cached now: the revoke must reach it
    revoked = client.delete(f"/v1/tokens/{parent['prefix']}", headers=_bearer(parent["token"]))
    assert revoked.status_code == 200
    assert _code(client, child["token"]) == "token_revoked"
    assert _code(client, grandchild["token"]) == "token_revoked"
    assert _code(client, sibling) is None


def _root_token_of_same_user(client: TestClient, admin_token: str) -> str:
    response = client.post("/admin/api/users/alice/tokens", json={}, headers=_bearer(admin_token))
    assert response.status_code == 201
    token: str = response.json()["token"]
    return token


def test_revoking_a_parent_from_another_process_reaches_a_cached_child(
    client: TestClient, admin_token: str, database_url: str
) -> None:
    parent = _root_token(client, admin_token)
    child = _mint(client, parent["token"])
    assert _code(client, child["token"]) is None
    _run_sql(
        database_url, "UPDATE tokens SET revoked_at = now() WHERE prefix = $1", parent["prefix"]
    )
    wait_until(lambda: _code(client, child["token"]) == "token_revoked", 5, "the child to die")


def test_expiring_a_parent_expires_its_descendants(
    client: TestClient, admin_token: str, database_url: str
) -> None:
    parent = _root_token(client, admin_token, expires_in_s=3600)
    child = _mint(client, parent["token"])
    grandchild = _mint(client, child["token"])
    assert _code(client, child["token"]) is None  # cached now: the expiry must reach it
    past = datetime.now(UTC) - timedelta(seconds=1)
    expire = "UPDATE tokens SET expires_at = $1 WHERE prefix = $2"
    _run_sql(database_url, expire, past, parent["prefix"])

    def expired() -> bool:
        codes = {_code(client, child["token"]), _code(client, grandchild["token"])}
        return codes == {"token_expired"}

    wait_until(expired, 5, "the descendants to expire")


@pytest.mark.anyio
async def test_the_database_refuses_a_child_with_wider_scopes_or_another_user(
    conn: asyncpg.Connection,
) -> None:
    alice = await accounts.create_user(conn, "alice")
    bob = await accounts.create_user(conn, "bob")
    parent = await accounts.create_token(conn, user_id=alice.id, scopes=("user",))
    with pytest.raises(asyncpg.CheckViolationError):
        await accounts.create_token(
            conn, user_id=alice.id, scopes=("user", "worker"), parent_id=parent.record.id
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await accounts.create_token(
            conn, user_id=bob.id, scopes=("user",), parent_id=parent.record.id
        )


@pytest.mark.anyio
async def test_a_child_minted_from_a_revoked_parent_is_born_revoked(
    conn: asyncpg.Connection,
) -> None:
    alice = await accounts.create_user(conn, "alice")
    parent = await accounts.create_token(conn, user_id=alice.id, scopes=("user",))
    await accounts.revoke_token(conn, parent.record.prefix)
    child = await accounts.create_token(
        conn, user_id=alice.id, scopes=("user",), parent_id=parent.record.id
    )
    assert child.record.revoked_at is not None
    assert child.record.parent_id == parent.record.id


@pytest.mark.anyio
async def test_the_lineage_of_a_token_is_itself_and_every_descendant(
    conn: asyncpg.Connection,
) -> None:
    alice = await accounts.create_user(conn, "alice")
    root = await accounts.create_token(conn, user_id=alice.id, scopes=("user",))
    child = await accounts.create_token(
        conn, user_id=alice.id, scopes=("user",), parent_id=root.record.id
    )
    grandchild = await accounts.create_token(
        conn, user_id=alice.id, scopes=("user",), parent_id=child.record.id
    )
    other = await accounts.create_token(conn, user_id=alice.id, scopes=("user",))
    lineage = set(await accounts.token_lineage(conn, root.record.id))
    assert lineage == {root.record.id, child.record.id, grandchild.record.id}
    assert other.record.id not in lineage
