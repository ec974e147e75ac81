"""The semantic memory HTTP API: facts, notes, namespaces, recall, export, delete, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hub.app import create_app
from hub.config import Settings
from memory.settings import MemorySettings
from tests.hub.test_errors import assert_openai_error
from tests.memory.hub_driver import bearer, new_user


@pytest.fixture
def alice(client: TestClient, admin_token: str) -> str:
    """Alice's first token; her memory is on."""
    return new_user(client, admin_token, "alice")


@pytest.fixture
def bob(client: TestClient, admin_token: str) -> str:
    """Bob's first token; his memory is on."""
    return new_user(client, admin_token, "bob")


def post(client: TestClient, token: str, path: str, body: Any, status: int = 201) -> Any:
    response = client.post(path, json=body, headers=bearer(token))
    assert response.status_code == status, response.text
    return response.json()


def get(client: TestClient, token: str, path: str, status: int = 200, **params: Any) -> Any:
    response = client.get(path, params=params, headers=bearer(token))
    assert response.status_code == status, response.text
    return response.json()


def shared(client: TestClient, admin: str, name: str, *users: str, **fields: Any) -> None:
    """Create a shared namespace as the admin and subscribe ``users`` to it."""
    made = client.post(
        "/admin/api/namespaces", json={"name": name, **fields}, headers=bearer(admin)
    )
    assert made.status_code == 201, made.text
    for user in users:
        path = f"/admin/api/namespaces/{name}/subscribers/{user}"
        assert client.put(path, headers=bearer(admin)).is_success


def user_id(client: TestClient, token: str) -> str:
    note = post(client, token, "/v1/memory/notes", {"body": "who am i"})
    namespace: str = note["namespace"]
    return namespace.removeprefix("user:")


def test_a_fact_round_trips_through_the_api(client: TestClient, alice: str) -> None:
    fact = post(client, alice, "/v1/memory/facts", {"text": "I live in Lisbon", "tags": ["home"]})
    assert fact["object"] == "memory.fact" and fact["status"] == "created"
    assert fact["text"] == "I live in Lisbon" and fact["source"] == "explicit"
    assert fact["embedding_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    found = get(client, alice, "/v1/memory/facts", query="where do I live?")["data"]
    assert [f["id"] for f in found] == [fact["id"]] and 0 < found[0]["score"] < 1
    assert get(client, alice, f"/v1/memory/facts/{fact['id']}")["text"] == "I live in Lisbon"
    assert client.delete(f"/v1/memory/facts/{fact['id']}", headers=bearer(alice)).json() == {
        "object": "memory.fact.deleted",
        "id": fact["id"],
        "deleted": True,
    }
    missing = get(client, alice, f"/v1/memory/facts/{fact['id']}", status=404)
    assert_openai_error(missing, "not_found", "fact_id")


def test_duplicates_merge_and_newer_values_supersede_over_http(
    client: TestClient, alice: str
) -> None:
    first = post(client, alice, "/v1/memory/facts", {"text": "I am allergic to peanuts"})
    again = post(client, alice, "/v1/memory/facts", {"text": "I'm allergic to peanuts"})
    assert again["status"] == "duplicate" and again["id"] == first["id"]
    paris = post(client, alice, "/v1/memory/facts", {"text": "I live in Paris"})
    berlin = post(client, alice, "/v1/memory/facts", {"text": "I live in Berlin"})
    assert berlin["superseded"] == [paris["id"]]
    current = {f["text"] for f in get(client, alice, "/v1/memory/facts")["data"]}
    assert current == {"I am allergic to peanuts", "I live in Berlin"}
    history = get(client, alice, "/v1/memory/facts", history="true")["data"]
    old = next(f for f in history if f["id"] == paris["id"])
    assert old["superseded_by"] == berlin["id"] and old["valid_to"] is not None


def test_one_user_never_sees_anothers_facts_or_private_notes(
    client: TestClient, alice: str, bob: str
) -> None:
    fact = post(client, alice, "/v1/memory/facts", {"text": "My safe code is 4711"})
    note = post(client, alice, "/v1/memory/notes", {"body": "Alice's private plan: 4711"})
    alice_space = note["namespace"]
    assert get(client, bob, "/v1/memory/facts", query="safe code 4711")["data"] == []
    assert get(client, bob, "/v1/memory/facts", history="true")["data"] == []
    assert_openai_error(get(client, bob, f"/v1/memory/facts/{fact['id']}", status=404), "not_found")
    response = client.delete(f"/v1/memory/facts/{fact['id']}", headers=bearer(bob))
    assert response.status_code == 404
    searches: list[dict[str, Any]] = [
        {},
        {"query": "private plan"},
        {"query": "4711", "mode": "keyword"},
    ]
    for params in searches:
        assert get(client, bob, "/v1/memory/notes", **params)["data"] == []
    assert get(client, bob, "/v1/memory/recall", query="4711 plan safe code") | {"query": ""} == {
        "object": "memory.recall",
        "query": "",
        "facts": [],
        "notes": [],
    }
    forbidden = get(client, bob, "/v1/memory/notes", status=403, namespace=alice_space)
    assert_openai_error(forbidden, "namespace_forbidden", "namespace")
    assert get(client, bob, f"/v1/memory/notes/{note['id']}", status=404)
    assert client.delete(f"/v1/memory/notes/{note['id']}", headers=bearer(bob)).status_code == 404
    body = {"namespace": alice_space, "body": "planted"}
    assert_openai_error(
        post(client, bob, "/v1/memory/notes", body, status=403), "namespace_forbidden"
    )
    assert get(client, alice, f"/v1/memory/facts/{fact['id']}")["text"] == "My safe code is 4711"


def test_notes_are_searched_hybrid_with_scores_and_snippets(
    client: TestClient, admin_token: str, alice: str
) -> None:
    shared(client, admin_token, "pool:ops", "alice")
    bodies = [
        ("pool:ops", "Rollback", "Run heronctl rollback --to previous to undo a release."),
        ("pool:ops", "Ports", "Postgres listens on port 5433 on the Heron hosts."),
        ("user:me", "Lunch", "The user is allergic to peanuts."),
    ]
    for namespace, title, body in bodies:
        note = {"namespace": namespace, "title": title, "body": body, "author_agent": "aider"}
        assert post(client, alice, "/v1/memory/notes", note)["clock"] == 1
    hits = get(client, alice, "/v1/memory/notes", query="heronctl rollback", k=2)["data"]
    assert hits[0]["title"] == "Rollback" and hits[0]["keyword_rank"] == 1
    assert hits[0]["vector_rank"] == 1 and "**heronctl**" in hits[0]["snippet"]
    assert hits[0]["score"] > hits[1]["score"]
    only = get(client, alice, "/v1/memory/notes", query="port", namespace="user:me")["data"]
    assert [h["title"] for h in only] == ["Lunch"]
    listed = get(client, alice, "/v1/memory/notes", namespace="pool:ops")["data"]
    assert [n["title"] for n in listed] == ["Ports", "Rollback"]
    spaces = get(client, alice, "/v1/memory/namespaces")["data"]
    assert spaces == [
        {
            "object": "memory.namespace",
            "name": "pool:ops",
            "write_rule": "members",
            "open": False,
            "owned": False,
            "subscribed": True,
            "notes": 2,
        }
    ]


def test_a_namespace_owner_restricts_writes_and_deletes_leave_tombstones(
    client: TestClient, admin_token: str, alice: str, bob: str
) -> None:
    shared(client, admin_token, "fed:team", "alice", "bob", owner="alice")
    mine = post(client, alice, "/v1/memory/notes", {"namespace": "fed:team", "body": "first"})
    theirs = post(client, bob, "/v1/memory/notes", {"namespace": "fed:team", "body": "second"})
    rule = {"write_rule": "owner"}
    refused = client.put("/v1/memory/namespaces/fed:team", json=rule, headers=bearer(bob))
    assert refused.status_code == 403
    assert (
        client.put("/v1/memory/namespaces/fed:team", json=rule, headers=bearer(alice)).json()[
            "write_rule"
        ]
        == "owner"
    )
    late = {"namespace": "fed:team", "body": "third"}
    assert_openai_error(post(client, bob, "/v1/memory/notes", late, 403), "namespace_forbidden")
    assert client.delete(f"/v1/memory/notes/{theirs['id']}", headers=bearer(alice)).is_success
    tombstone = get(client, bob, f"/v1/memory/notes/{theirs['id']}")
    assert tombstone["deleted_at"] is not None and tombstone["body"] == ""
    assert tombstone["clock"] == 2
    remaining = get(client, bob, "/v1/memory/notes", namespace="fed:team")["data"]
    assert [n["id"] for n in remaining] == [mine["id"]]


def test_recall_searches_facts_and_notes_together(
    client: TestClient, admin_token: str, alice: str
) -> None:
    shared(client, admin_token, "pool:food", "alice")
    post(client, alice, "/v1/memory/facts", {"text": "I am vegetarian"})
    post(client, alice, "/v1/memory/notes", {"namespace": "pool:food", "body": "Pizza on Fridays"})
    recalled = get(client, alice, "/v1/memory/recall", query="what should we eat?", k=3)
    assert [f["text"] for f in recalled["facts"]] == ["I am vegetarian"]
    assert [n["body"] for n in recalled["notes"]] == ["Pizza on Fridays"]


def test_export_includes_facts_and_notes_and_delete_erases_them(
    client: TestClient, admin_token: str, alice: str
) -> None:
    shared(client, admin_token, "pool:x", "alice")
    fact = post(client, alice, "/v1/memory/facts", {"text": "I live in Oslo"})
    post(client, alice, "/v1/memory/facts", {"text": "I live in Bergen"})
    note = post(client, alice, "/v1/memory/notes", {"body": "private thought"})
    pooled = post(client, alice, "/v1/memory/notes", {"namespace": "pool:x", "body": "shared"})
    export = get(client, alice, "/v1/memory/export")
    assert [f["text"] for f in export["facts"]] == ["I live in Oslo", "I live in Bergen"]
    assert export["facts"][0]["id"] == fact["id"] and export["facts"][0]["valid_to"] is not None
    assert [n["id"] for n in export["notes"]] == [note["id"], pooled["id"]]
    deleted = client.delete("/v1/memory", headers=bearer(alice)).json()
    assert deleted["facts"] == 2 and deleted["notes"] == 1
    assert get(client, alice, "/v1/memory/facts", history="true")["data"] == []
    assert [n["id"] for n in get(client, alice, "/v1/memory/notes")["data"]] == [pooled["id"]]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/memory/facts", {}, "text"),
        ("/v1/memory/facts", {"text": "   "}, "text"),
        ("/v1/memory/facts", {"text": "x" * 1001}, "text"),
        ("/v1/memory/facts", {"text": "ok", "mood": "happy"}, "mood"),
        ("/v1/memory/facts", {"text": "ok", "tags": ["Not A Tag"]}, "tags[0]"),
        ("/v1/memory/facts", {"text": "ok", "confidence": 1.5}, "confidence"),
        ("/v1/memory/facts", {"text": "ok", "key": "Home City"}, "key"),
        ("/v1/memory/facts", {"text": "ok", "valid_from": "2025-01-01T00:00:00"}, "valid_from"),
        ("/v1/memory/facts", {"text": "ok", "supersedes": ["nope"]}, "supersedes[0]"),
        ("/v1/memory/facts", {"text": "ok", "source_conversation": "a b"}, "source_conversation"),
        ("/v1/memory/facts", ["ok"], None),
        ("/v1/memory/notes", {"body": ""}, "body"),
        ("/v1/memory/notes", {"body": "ok", "namespace": "team"}, "namespace"),
        ("/v1/memory/notes", {"body": "ok", "namespace": "user:bob"}, "namespace"),
        ("/v1/memory/notes", {"body": "ok", "author_agent": "a" * 65}, "author_agent"),
        ("/v1/memory/notes", {"body": "ok", "title": "t" * 201}, "title"),
    ],
)
def test_malformed_bodies_get_openai_shaped_400s(
    client: TestClient, alice: str, path: str, body: Any, param: str | None
) -> None:
    response = client.post(path, json=body, headers=bearer(alice))
    assert response.status_code == 400, response.text
    assert_openai_error(response.json(), "invalid_value", param)


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/v1/memory/facts", {"k": 0}, "k"),
        ("/v1/memory/facts", {"k": 101}, "k"),
        ("/v1/memory/facts", {"tags": "Bad Tag"}, "tags"),
        ("/v1/memory/facts", {"history": "maybe"}, "history"),
        ("/v1/memory/facts/not-a-uuid", {}, "fact_id"),
        ("/v1/memory/notes", {"query": "x", "mode": "fuzzy"}, "mode"),
        ("/v1/memory/notes", {"since": "yesterday"}, "since"),
        ("/v1/memory/notes", {"until": "2025-01-01T00:00:00"}, "until"),
        ("/v1/memory/notes/42", {}, "note_id"),
        ("/v1/memory/recall", {}, "query"),
        ("/v1/memory/recall", {"query": ""}, "query"),
        ("/v1/memory/recall", {"query": "x" * 2001}, "query"),
    ],
)
def test_malformed_queries_get_openai_shaped_400s(
    client: TestClient, alice: str, path: str, params: dict[str, Any], param: str
) -> None:
    response = client.get(path, params=params, headers=bearer(alice))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert_openai_error(response.json(), response.json()["error"]["code"], param)


def test_a_malformed_namespace_filter_or_rule_gets_a_400(client: TestClient, alice: str) -> None:
    bad = get(client, alice, "/v1/memory/notes", status=400, namespace="Team")
    assert_openai_error(bad, "invalid_namespace", "namespace")
    rule = client.put(
        "/v1/memory/namespaces/pool:x", json={"write_rule": "everyone"}, headers=bearer(alice)
    )
    assert rule.status_code == 400
    assert_openai_error(rule.json(), "invalid_value", "write_rule")
    private = client.put(
        "/v1/memory/namespaces/user:me", json={"write_rule": "owner"}, headers=bearer(alice)
    )
    assert_openai_error(private.json(), "invalid_namespace")


def test_the_admin_token_has_no_facts_or_notes(client: TestClient, admin_token: str) -> None:
    for path in ("/v1/memory/facts", "/v1/memory/notes", "/v1/memory/namespaces"):
        response = client.get(path, headers=bearer(admin_token))
        assert response.status_code == 403
        assert_openai_error(response.json(), "insufficient_scope")


@pytest.fixture
def modelless(settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    """A hub whose embedding model folder was never installed."""
    memory = MemorySettings(embedding_model_dir=tmp_path / "no-model")
    with TestClient(create_app(settings.model_copy(update={"memory": memory}))) as test_client:
        yield test_client


def test_without_the_model_installed_the_api_says_how_to_install_it(
    modelless: TestClient, settings: Settings
) -> None:
    admin = (settings.data_dir / "admin-token").read_text().strip()
    token = new_user(modelless, admin, "eve")
    response = modelless.post("/v1/memory/facts", json={"text": "hi"}, headers=bearer(token))
    assert response.status_code == 503
    assert_openai_error(response.json(), "embedding_model_missing")
    assert "iamine models install" in response.json()["error"]["message"]
    listed = modelless.get("/v1/memory/notes", headers=bearer(token))
    assert listed.status_code == 200
