"""POST /v1/memory/notes with a list: batch ingest, contexts from neighbours, all or nothing."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.hub.test_errors import assert_openai_error
from tests.memory.hub_driver import bearer, new_user


@pytest.fixture
def alice(client: TestClient, admin_token: str) -> str:
    """Alice's first token; her memory is on."""
    return new_user(client, admin_token, "alice")


def post(client: TestClient, token: str, body: Any, status: int = 201, **params: Any) -> Any:
    response = client.post("/v1/memory/notes", json=body, params=params, headers=bearer(token))
    assert response.status_code == status, response.text
    return response.json()


def search(client: TestClient, token: str, query: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get(
        "/v1/memory/notes", params={"query": query, **params}, headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


CONVERSATION = [
    {"speaker": "Kwame", "body": "Wasn't your interview at Quillstone this week? How did it go?"},
    {"speaker": "Ingrid", "body": "Better than I hoped, they offered me the position!"},
    {"speaker": "Ingrid", "body": "Then I went for a long walk by the river last weekend."},
]


def test_a_list_is_stored_in_order_and_each_turn_is_found_by_its_neighbours(
    client: TestClient, alice: str
) -> None:
    turns = [t | {"said_at": "2023-05-08T13:56:00Z", "tags": ["c1"]} for t in CONVERSATION]
    stored = post(client, alice, turns, window=1)
    assert stored["object"] == "list"
    assert [n["body"] for n in stored["data"]] == [t["body"] for t in CONVERSATION]
    reply = stored["data"][1]
    assert reply["speaker"] == "Ingrid" and reply["said_at"] == "2023-05-08T13:56:00+00:00"
    assert reply["context"].splitlines() == [
        "Said by Ingrid on Monday 8 May 2023.",
        f"Before, Kwame: {CONVERSATION[0]['body']}",
        f"After, Ingrid: {CONVERSATION[2]['body']}",
    ]
    assert "(about Saturday 6 May 2023)" in stored["data"][2]["context"]
    found = search(client, alice, "what came of the Quillstone meeting?", mode="keyword")
    assert reply["id"] in [n["id"] for n in found]
    hit = next(n for n in found if n["id"] == reply["id"])
    assert hit["body"] == CONVERSATION[1]["body"] and hit["context"] == reply["context"]


def test_a_single_note_keeps_its_shape_and_takes_a_context(client: TestClient, alice: str) -> None:
    note = post(client, alice, {"body": "Use port 5433", "context": "Project Heron, database"})
    assert note["object"] == "memory.note" and note["context"] == "Project Heron, database"
    [hit] = search(client, alice, "heron", mode="keyword")
    assert hit["id"] == note["id"] and hit["body"] == "Use port 5433"
    plain = post(client, alice, {"body": "no context here"})
    assert plain["context"] == ""


def test_without_a_window_a_list_has_no_neighbours_in_its_contexts(
    client: TestClient, alice: str
) -> None:
    stored = post(client, alice, CONVERSATION)["data"]
    assert [n["context"] for n in stored] == [
        "Said by Kwame.",
        "Said by Ingrid.",
        "Said by Ingrid.",
    ]


def test_bad_batches_are_refused_whole_with_the_field_named(
    client: TestClient, alice: str, admin_token: str
) -> None:
    assert_openai_error(post(client, alice, [], status=400), "invalid_value")
    too_many = [{"body": f"n{i}"} for i in range(1001)]
    assert_openai_error(post(client, alice, too_many, status=400), "invalid_value")
    blank = [{"body": "fine"}, {"body": "  "}]
    assert_openai_error(post(client, alice, blank, status=400), "invalid_value", "[1].body")
    assert_openai_error(post(client, alice, "just text", status=400), "invalid_value")
    quorum = [{"body": "x", "namespace": "fed:ops", "write_quorum": 1}]
    error = post(client, alice, quorum, status=400)
    assert_openai_error(error, "invalid_request", "write_quorum")
    window = post(client, alice, [{"body": "x"}], status=400, window=6)
    assert_openai_error(window, "invalid_value")
    bad_date = [{"body": "x", "said_at": "last Tuesday"}]
    assert_openai_error(post(client, alice, bad_date, status=400), "invalid_value", "[0].said_at")
    long_speaker = [{"body": "x", "speaker": "s" * 65}]
    error = post(client, alice, long_speaker, status=400)
    assert_openai_error(error, "invalid_value", "[0].speaker")
    long_context = [{"body": "x", "context": "c" * 4001}]
    assert_openai_error(post(client, alice, long_context, status=400), "invalid_value")
    unknown = [{"body": "kept?"}, {"body": "lost", "namespace": "pool:nowhere"}]
    missing = post(client, alice, unknown, status=404)
    assert missing["error"]["code"] == "namespace_not_found"
    listed = client.get("/v1/memory/notes", headers=bearer(alice)).json()["data"]
    assert listed == []
