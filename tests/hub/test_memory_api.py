"""The memory HTTP API: opt-in settings, conversations, export, delete, token linking, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hub.app import pool_summariser
from hub.cli import app as cli_app
from hub.config import Settings
from inference.registry import WorkerRegistry
from memory.compaction import SummaryUnavailable
from memory.settings import MemorySettings
from tests.hub.test_errors import assert_openai_error
from tests.memory.hub_driver import bearer, chat_exchange, fetch, new_user

TOKEN = re.compile(r"iam_[0-9a-f]{10}_[A-Za-z0-9_-]{43}")


@pytest.fixture
def alice(client: TestClient, admin_token: str) -> str:
    """Alice's first token; her memory is on."""
    return new_user(client, admin_token, "alice")


def test_memory_settings_are_off_until_the_user_turns_them_on(
    client: TestClient, admin_token: str
) -> None:
    token = new_user(client, admin_token, "dora", memory=False)
    assert client.get("/v1/memory/settings", headers=bearer(token)).json() == {
        "enabled": False,
        "compaction": False,
    }
    body = {"enabled": True, "compaction": True}
    assert client.put("/v1/memory/settings", json=body, headers=bearer(token)).json() == body
    assert client.get("/v1/memory/settings", headers=bearer(token)).json() == body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "enabled"),
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": 1}, "enabled"),
        ({"enabled": True, "compaction": "on"}, "compaction"),
        ({"enabled": True, "retention": 3}, "retention"),
        ([True], None),
    ],
)
def test_malformed_settings_bodies_get_400_with_the_param(
    client: TestClient, alice: str, body: object, param: str | None
) -> None:
    response = client.put("/v1/memory/settings", json=body, headers=bearer(alice))
    assert response.status_code == 400
    assert_openai_error(response.json(), "invalid_value", param)


def test_a_settings_body_that_is_not_json_gets_400(client: TestClient, alice: str) -> None:
    response = client.put(
        "/v1/memory/settings",
        content=b"{enabled",
        headers=bearer(alice) | {"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert_openai_error(response.json(), "invalid_json")


def test_with_memory_off_the_hook_writes_l1_but_nothing_to_l2(
    client: TestClient, admin_token: str
) -> None:
    token = new_user(client, admin_token, "dora", memory=False)
    chat_exchange(client, token, "c1", "the password is swordfish", "noted")
    assert fetch(client, "SELECT * FROM conversation_turns") == []
    assert len(fetch(client, "SELECT * FROM l1_messages")) == 2
    listed = client.get("/v1/conversations", headers=bearer(token)).json()["data"]
    assert [(c["id"], c["exchanges"], c["turn_count"]) for c in listed] == [("c1", 1, 0)]


def test_the_chat_hook_stores_the_exchange_in_l1_and_encrypted_in_l2(
    client: TestClient, alice: str
) -> None:
    chat_exchange(client, alice, "trip", "I fly to Lisbon on May 3", "Have a good flight")
    l1 = fetch(client, "SELECT role, message FROM l1_messages ORDER BY id")
    assert [r["role"] for r in l1] == ["user", "assistant"]
    assert json.loads(l1[1]["message"])["content"] == "Have a good flight"
    (row,) = fetch(client, "SELECT ciphertext FROM conversation_turns")
    assert b"Lisbon" not in row["ciphertext"]
    conversation = client.get("/v1/conversations/trip", headers=bearer(alice)).json()
    assert conversation["exchanges"] == 1 and conversation["unreadable_turns"] == 0
    (turn,) = conversation["turns"]
    assert turn["messages"] == [
        {"role": "user", "content": "I fly to Lisbon on May 3"},
        {"role": "assistant", "content": "Have a good flight"},
    ]


def test_conversations_are_listed_newest_first_and_deleted_one_by_one(
    client: TestClient, alice: str
) -> None:
    chat_exchange(client, alice, "first", "one", "1")
    chat_exchange(client, alice, "second", "two", "2")
    chat_exchange(client, alice, "second", "three", "3")
    listed = client.get("/v1/conversations", headers=bearer(alice)).json()["data"]
    assert [(c["id"], c["turn_count"]) for c in listed] == [("second", 2), ("first", 1)]
    deleted = client.delete("/v1/conversations/second", headers=bearer(alice)).json()
    assert deleted == {
        "id": "second",
        "object": "conversation.deleted",
        "deleted": True,
        "turns": 2,
        "l1_messages": 4,
    }
    response = client.get("/v1/conversations/second", headers=bearer(alice))
    assert response.status_code == 404
    assert_openai_error(response.json(), "not_found", "conversation_id")


def test_export_streams_every_conversation_and_l1_message_decrypted(
    client: TestClient, alice: str
) -> None:
    chat_exchange(client, alice, "a", "alpha question", "alpha answer")
    chat_exchange(client, alice, "b", "beta question", "beta answer")
    response = client.get("/v1/memory/export", headers=bearer(alice))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    export = response.json()
    assert export["object"] == "memory.export" and export["user"] == "alice"
    assert export["settings"] == {"enabled": True, "compaction": False}
    texts = [
        m["content"] for c in export["conversations"] for t in c["turns"] for m in t["messages"]
    ]
    assert sorted(texts) == ["alpha answer", "alpha question", "beta answer", "beta question"]
    assert len(export["l1_messages"]) == 4


def test_delete_memory_returns_what_it_shredded(client: TestClient, alice: str) -> None:
    chat_exchange(client, alice, "a", "q", "a")
    response = client.delete("/v1/memory", headers=bearer(alice))
    assert response.json() == {
        "object": "memory.deleted",
        "deleted": True,
        "wraps": 1,
        "generations": 1,
        "conversations": 1,
        "turns": 1,
        "l1_messages": 2,
        "facts": 0,
        "notes": 0,
    }
    assert client.get("/v1/conversations", headers=bearer(alice)).json()["data"] == []


def test_a_token_issued_by_the_admin_while_the_user_has_memory_is_locked_until_linked(
    client: TestClient, admin_token: str, alice: str
) -> None:
    chat_exchange(client, alice, "a", "secret plan", "ok")
    issued = client.post("/admin/api/users/alice/tokens", json={}, headers=bearer(admin_token))
    assert issued.json()["memory"] == "locked"
    locked = issued.json()["token"]
    response = client.get("/v1/conversations/a", headers=bearer(locked))
    assert response.status_code == 403
    assert_openai_error(response.json(), "memory_locked")
    assert "POST /v1/tokens" in response.json()["error"]["message"]
    assert client.get("/v1/conversations", headers=bearer(locked)).status_code == 200
    linked = client.post("/v1/memory/link", json={"token": locked}, headers=bearer(alice))
    assert linked.json()["linked"] is True
    turns = client.get("/v1/conversations/a", headers=bearer(locked)).json()["turns"]
    assert turns[0]["messages"][0]["content"] == "secret plan"


def test_only_a_live_user_token_of_ones_own_can_be_linked(
    client: TestClient, admin_token: str, alice: str
) -> None:
    bob = new_user(client, admin_token, "bob")
    for token in (bob, "iam_0000000000_" + "x" * 43, "not a token"):
        response = client.post("/v1/memory/link", json={"token": token}, headers=bearer(alice))
        assert response.status_code == 400
        assert_openai_error(response.json(), "invalid_request", "token")


def test_a_worker_token_issued_from_a_user_token_gets_no_memory(
    client: TestClient, admin_token: str
) -> None:
    client.post("/admin/api/users", json={"name": "wes"}, headers=bearer(admin_token))
    body = {"scopes": ["user", "worker"]}
    both = client.post("/admin/api/users/wes/tokens", json=body, headers=bearer(admin_token))
    worker = client.post(
        "/v1/tokens", json={"scopes": ["worker"]}, headers=bearer(both.json()["token"])
    )
    assert worker.json()["memory"] == "none"


def test_turning_memory_on_with_a_locked_token_is_refused(
    client: TestClient, admin_token: str, alice: str
) -> None:
    locked = client.post("/admin/api/users/alice/tokens", json={}, headers=bearer(admin_token))
    body = {"enabled": True}
    response = client.put("/v1/memory/settings", json=body, headers=bearer(locked.json()["token"]))
    assert response.status_code == 403
    assert_openai_error(response.json(), "memory_locked")


@pytest.mark.anyio
async def test_compaction_is_skipped_when_no_worker_serves_the_model(settings: Settings) -> None:
    summarise = pool_summariser(WorkerRegistry(settings.inference), MemorySettings())
    with pytest.raises(SummaryUnavailable, match="no worker"):
        await summarise([{"role": "user", "content": "hi"}])


def _cli(database_url: str, tmp_path: Path, *args: str) -> str:
    env = {"IAMINE_DATABASE_URL": database_url, "IAMINE_DATA_DIR": str(tmp_path / "cli")}
    result = CliRunner().invoke(cli_app, list(args), env=env | {"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_the_cli_warns_when_a_new_token_starts_a_new_memory_key(
    client: TestClient, alice: str, database_url: str, tmp_path: Path
) -> None:
    chat_exchange(client, alice, "a", "remember this", "ok")
    locked = _cli(database_url, tmp_path, "tokens", "create", "--user", "alice")
    assert "no memory access" in locked and TOKEN.search(locked)
    for row in fetch(client, "SELECT prefix FROM tokens t JOIN users u ON u.id = t.user_id"):
        _cli(database_url, tmp_path, "tokens", "revoke", row["prefix"])
    fresh = _cli(database_url, tmp_path, "tokens", "create", "--user", "alice")
    assert "NEW key" in fresh and "unreadable" in fresh


def test_memory_purge_l1_deletes_expired_messages(
    client: TestClient, alice: str, database_url: str, tmp_path: Path
) -> None:
    chat_exchange(client, alice, "a", "q", "a")
    fetch(client, "UPDATE l1_messages SET expires_at = now() - interval '1 second'")
    assert "Purged 2 expired L1 message(s)." in _cli(database_url, tmp_path, "memory", "purge-l1")
    assert fetch(client, "SELECT id FROM l1_messages") == []
