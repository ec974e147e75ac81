"""Shared namespaces: made by the admin (or a user the admin allowed), read only by subscribers."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hub.cli import app as cli
from hub.migrations import load_migrations, migrate
from tests.hub.test_errors import assert_openai_error
from tests.memory.hub_driver import bearer, new_user

ADMIN = "/admin/api/namespaces"


@pytest.fixture
def alice(client: TestClient, admin_token: str) -> str:
    """Alice's first token; her memory is on."""
    return new_user(client, admin_token, "alice")


@pytest.fixture
def bob(client: TestClient, admin_token: str) -> str:
    """Bob's first token; his memory is on."""
    return new_user(client, admin_token, "bob")


def call(
    client: TestClient, method: str, path: str, token: str, status: int = 200, **kwargs: Any
) -> Any:
    response = client.request(method, path, headers=bearer(token), **kwargs)
    assert response.status_code == status, response.text
    return response.json()


def create(client: TestClient, admin: str, name: str, **fields: Any) -> Any:
    return call(client, "POST", ADMIN, admin, 201, json={"name": name, **fields})


def subscribe(client: TestClient, admin: str, name: str, user: str) -> Any:
    return call(client, "PUT", f"{ADMIN}/{name}/subscribers/{user}", admin)


def write(client: TestClient, token: str, namespace: str, body: str, status: int = 201) -> Any:
    note = {"namespace": namespace, "body": body}
    return call(client, "POST", "/v1/memory/notes", token, status, json=note)


def test_writing_into_a_namespace_nobody_created_is_a_404_not_an_implicit_creation(
    client: TestClient, admin_token: str, alice: str, bob: str
) -> None:
    missing = write(client, bob, "pool:new", "I was here first", status=404)
    assert_openai_error(missing, "namespace_not_found", "namespace")
    assert "admin" in missing["error"]["message"]
    assert call(client, "GET", ADMIN, admin_token)["data"] == []
    assert call(client, "GET", "/v1/memory/namespaces", bob)["data"] == []
    rule = {"write_rule": "owner"}
    refused = call(client, "PUT", "/v1/memory/namespaces/pool:new", bob, 404, json=rule)
    assert_openai_error(refused, "namespace_not_found")


def test_a_user_cannot_create_a_shared_namespace_without_the_admins_grant(
    client: TestClient, admin_token: str, bob: str
) -> None:
    body = {"name": "pool:new"}
    refused = call(client, "POST", "/v1/memory/namespaces", bob, 403, json=body)
    assert_openai_error(refused, "namespace_forbidden")
    call(client, "PUT", "/admin/api/namespace-creators/bob", admin_token)
    made = call(client, "POST", "/v1/memory/namespaces", bob, 201, json=body)
    assert made["name"] == "pool:new" and made["owned"] and made["subscribed"]
    assert write(client, bob, "pool:new", "Bob's namespace")["namespace"] == "pool:new"
    again = call(client, "POST", "/v1/memory/namespaces", bob, 409, json=body)
    assert_openai_error(again, "namespace_exists", "name")
    call(client, "DELETE", "/admin/api/namespace-creators/bob", admin_token)
    later = call(client, "POST", "/v1/memory/namespaces", bob, 403, json={"name": "fed:two"})
    assert_openai_error(later, "namespace_forbidden")


def test_a_user_reads_and_writes_a_shared_namespace_only_once_subscribed(
    client: TestClient, admin_token: str, alice: str, bob: str
) -> None:
    create(client, admin_token, "pool:team")
    subscribe(client, admin_token, "pool:team", "bob")
    note = write(client, bob, "pool:team", "Deploys freeze on Fridays at noon")
    assert note["author"] == "bob" and note["mine"]
    for params in ({}, {"query": "deploy freeze"}, {"query": "Fridays", "mode": "keyword"}):
        assert call(client, "GET", "/v1/memory/notes", alice, params=params)["data"] == []
    recalled = call(client, "GET", "/v1/memory/recall", alice, params={"query": "deploy freeze"})
    assert recalled["notes"] == []
    call(client, "GET", f"/v1/memory/notes/{note['id']}", alice, 404)
    named = call(client, "GET", "/v1/memory/notes", alice, 403, params={"namespace": "pool:team"})
    assert_openai_error(named, "namespace_forbidden", "namespace")
    planted = write(client, alice, "pool:team", "planted", status=403)
    assert_openai_error(planted, "namespace_forbidden", "namespace")
    subscribe(client, admin_token, "pool:team", "alice")
    found = call(client, "GET", "/v1/memory/notes", alice, params={"query": "deploy freeze"})
    assert [n["id"] for n in found["data"]] == [note["id"]]
    assert found["data"][0]["author"] == "bob" and not found["data"][0]["mine"]
    assert call(client, "GET", f"/v1/memory/notes/{note['id']}", alice)["body"].startswith("Depl")
    write(client, alice, "pool:team", "Alice may write now")
    call(client, "DELETE", f"{ADMIN}/pool:team/subscribers/alice", admin_token)
    gone = call(client, "GET", "/v1/memory/recall", alice, params={"query": "deploy"})
    assert gone["notes"] == []


def test_a_user_subscribes_themself_to_an_open_namespace_but_not_to_a_closed_one(
    client: TestClient, admin_token: str, alice: str
) -> None:
    create(client, admin_token, "pool:open", open=True)
    create(client, admin_token, "pool:closed")
    visible = call(client, "GET", "/v1/memory/namespaces", alice)["data"]
    assert [(n["name"], n["open"], n["subscribed"]) for n in visible] == [
        ("pool:open", True, False)
    ]
    closed = call(client, "PUT", "/v1/memory/namespaces/pool:closed/subscription", alice, 403)
    assert_openai_error(closed, "namespace_forbidden")
    joined = call(client, "PUT", "/v1/memory/namespaces/pool:open/subscription", alice)
    assert joined["subscribed"] is True
    write(client, alice, "pool:open", "Open to all who join")
    visible = call(client, "GET", "/v1/memory/namespaces", alice)["data"]
    assert visible == [
        {
            "object": "memory.namespace",
            "name": "pool:open",
            "write_rule": "members",
            "open": True,
            "owned": False,
            "subscribed": True,
            "notes": 1,
        }
    ]
    left = call(client, "DELETE", "/v1/memory/namespaces/pool:open/subscription", alice)
    assert left["subscribed"] is False
    assert call(client, "GET", "/v1/memory/notes", alice)["data"] == []


def test_the_admin_lists_and_deletes_namespaces_with_their_notes_and_subscribers(
    client: TestClient, admin_token: str, alice: str, bob: str
) -> None:
    made = create(client, admin_token, "fed:recipes", write_rule="owner", owner="bob")
    assert made["owner"] == "bob" and made["write_rule"] == "owner" and not made["open"]
    subscribe(client, admin_token, "fed:recipes", "alice")
    refused = write(client, alice, "fed:recipes", "Alice is only a reader", status=403)
    assert_openai_error(refused, "namespace_forbidden")
    write(client, bob, "fed:recipes", "Tomato soup needs basil")
    [listed] = call(client, "GET", ADMIN, admin_token)["data"]
    assert listed["name"] == "fed:recipes" and listed["notes"] == 1
    assert sorted(listed["subscribers"]) == ["alice", "bob"]
    opened = call(client, "PATCH", f"{ADMIN}/fed:recipes", admin_token, json={"open": True})
    assert opened["open"] is True and opened["write_rule"] == "owner"
    deleted = call(client, "DELETE", f"{ADMIN}/fed:recipes", admin_token)
    assert deleted == {
        "object": "memory.namespace.deleted",
        "name": "fed:recipes",
        "deleted": True,
        "notes": 1,
    }
    assert call(client, "GET", "/v1/memory/notes", bob)["data"] == []
    assert call(client, "GET", ADMIN, admin_token)["data"] == []
    gone = call(client, "DELETE", f"{ADMIN}/fed:recipes", admin_token, 404)
    assert_openai_error(gone, "namespace_not_found")


def test_namespace_admin_routes_refuse_users_and_bad_names(
    client: TestClient, admin_token: str, alice: str
) -> None:
    for method, path in (
        ("GET", ADMIN),
        ("POST", ADMIN),
        ("PUT", f"{ADMIN}/pool:x/subscribers/alice"),
        ("PUT", "/admin/api/namespace-creators/alice"),
    ):
        refused = call(client, method, path, alice, 403, json={"name": "pool:x"})
        assert_openai_error(refused, "insufficient_scope")
    for name in ("user:me", "pool:Team", "team"):
        bad = call(client, "POST", ADMIN, admin_token, 400, json={"name": name})
        assert bad["error"]["param"] == "name"
    for body, param in (
        ({"name": "pool:x", "open": 1}, "open"),
        ({"name": "pool:x", "open": "true"}, "open"),
        ({"name": "pool:x", "write_rule": "everyone"}, "write_rule"),
        ({"name": "pool:x", "colour": "red"}, "colour"),
    ):
        strict = call(client, "POST", ADMIN, admin_token, 400, json=body)
        assert_openai_error(strict, "invalid_value", param)
    create(client, admin_token, "pool:x")
    taken = call(client, "POST", ADMIN, admin_token, 409, json={"name": "pool:x"})
    assert_openai_error(taken, "namespace_exists", "name")
    nobody = call(client, "PUT", f"{ADMIN}/pool:x/subscribers/nobody", admin_token, 404)
    assert_openai_error(nobody, "not_found", "user")
    unknown = call(client, "PUT", f"{ADMIN}/pool:y/subscribers/alice", admin_token, 404)
    assert_openai_error(unknown, "namespace_not_found")


runner = CliRunner()


def invoke(env: dict[str, str], *args: str, code: int = 0) -> str:
    result = runner.invoke(cli, list(args), env=env)
    assert result.exit_code == code, result.output
    return result.output


def test_the_namespaces_cli_creates_lists_subscribes_grants_and_deletes(
    database_url: str, tmp_path: Path
) -> None:
    env = {
        "IAMINE_DATABASE_URL": database_url,
        "IAMINE_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "200",
    }
    invoke(env, "users", "create", "carol")
    assert "Created pool:team" in invoke(env, "namespaces", "create", "pool:team", "--open")
    assert "already exists" in invoke(env, "namespaces", "create", "pool:team", code=1)
    assert "Subscribed carol" in invoke(env, "namespaces", "subscribe", "pool:team", "carol")
    listed = invoke(env, "namespaces", "list")
    assert re.search(r"pool:team\W+members\W+open\W+\(admin\)\W+0\W+carol", listed)
    assert "Unsubscribed carol" in invoke(env, "namespaces", "unsubscribe", "pool:team", "carol")
    assert "carol may now create" in invoke(env, "namespaces", "grant", "carol")
    assert "carol may no longer" in invoke(env, "namespaces", "revoke", "carol")
    assert "Deleted pool:team" in invoke(env, "namespaces", "delete", "pool:team")
    missing = invoke(env, "namespaces", "delete", "pool:team", code=1)
    assert "No shared namespace pool:team" in missing
    assert "pool:team" not in invoke(env, "namespaces", "list")


async def _legacy_namespace_then_migrate(url: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(url)
    try:
        before = [m for m in load_migrations() if m.name != "namespace_membership"]
        await migrate(conn, before)
        ids = {}
        for name in ("first", "writer", "reader"):
            ids[name] = await conn.fetchval(
                "INSERT INTO users (name) VALUES ($1) RETURNING id", name
            )
        await conn.execute(
            "INSERT INTO note_namespaces (namespace, owner_id, write_rule) "
            "VALUES ('pool:old', $1, 'members')",
            ids["first"],
        )
        await conn.execute(
            "INSERT INTO notes (id, namespace, author_id, body, embedding, content_hash, "
            "created_at, updated_at) VALUES (gen_random_uuid(), 'pool:old', $1, 'old note', "
            "$2::text::vector, sha256('x'), now(), now())",
            ids["writer"],
            str([0.1] * 384),
        )
        await migrate(conn)
        rows = await conn.fetch(
            "SELECT s.namespace, u.name FROM namespace_subscriptions s "
            "JOIN users u ON u.id = s.user_id ORDER BY u.name"
        )
        return [(r["namespace"], r["name"]) for r in rows]
    finally:
        await conn.close()


def test_namespaces_made_by_a_first_note_before_the_migration_keep_their_writers_only(
    empty_database_url: str,
) -> None:
    subscribed = asyncio.run(_legacy_namespace_then_migrate(empty_database_url))
    assert subscribed == [("pool:old", "first"), ("pool:old", "writer")]
