"""Public request bodies are strict, and every route declares the error answers it gives."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from hub.app import create_app
from hub.config import Settings
from tests.hub.test_errors import assert_openai_error
from tests.memory.hub_driver import bearer, new_user

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
FACT = {"text": "Lives in Lyon."}

# (method, path, body, the param at fault): each value is JSON of another type than the schema's,
# which pydantic's lax mode would have coerced.
COERCIBLE: list[tuple[str, str, dict[str, Any], str]] = [
    ("POST", "/v1/chat/completions", {**CHAT, "max_tokens": "5"}, "max_tokens"),
    ("POST", "/v1/chat/completions", {**CHAT, "max_tokens": 5.0}, "max_tokens"),
    ("POST", "/v1/chat/completions", {**CHAT, "stream": 0}, "stream"),
    ("POST", "/v1/chat/completions", {**CHAT, "temperature": "0.5"}, "temperature"),
    ("POST", "/v1/chat/completions", {**CHAT, "seed": True}, "seed"),
    (
        "POST",
        "/v1/chat/completions",
        {**CHAT, "stream_options": {"include_usage": 1}},
        "stream_options.include_usage",
    ),
    ("POST", "/v1/tokens", {"expires_in_s": "60"}, "expires_in_s"),
    ("POST", "/v1/memory/facts", {**FACT, "confidence": "0.5"}, "confidence"),
    ("POST", "/v1/memory/facts", {**FACT, "valid_from": 0}, "valid_from"),
    ("POST", "/v1/memory/facts", {**FACT, "valid_from": "1700000000"}, "valid_from"),
    ("POST", "/v1/memory/facts", {**FACT, "supersedes": [1]}, "supersedes[0]"),
    ("PUT", "/v1/preferences", {"auto_review": "true"}, "auto_review"),
    ("POST", "/v1/agents/run", {"role": "coder", "input": "x", "max_tokens": "5"}, "max_tokens"),
    ("POST", "/v1/agents/pipeline", {"roles": ["coder"], "input": "x", "stream": 0}, "stream"),
]


@pytest.fixture
def alice(client: TestClient, admin_token: str) -> dict[str, str]:
    """Alice's ``Authorization`` header."""
    return bearer(new_user(client, admin_token, "alice"))


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    COERCIBLE,
    ids=[f"{method} {path} {param}" for method, path, _, param in COERCIBLE],
)
def test_a_json_value_of_another_type_is_refused_not_coerced(
    client: TestClient,
    alice: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any],
    param: str,
) -> None:
    response = client.request(method, path, json=body, headers=alice)
    assert response.status_code == 400, response.text
    assert_openai_error(response.json(), "invalid_value", param=param)


def test_datetimes_and_uuids_still_come_as_iso_strings(
    client: TestClient, alice: dict[str, str]
) -> None:
    first = client.post("/v1/memory/facts", json=FACT, headers=alice)
    assert first.status_code == 201, first.text
    body = {
        "text": "Lives in Paris.",
        "valid_from": "2026-01-02T03:04:05+00:00",
        "supersedes": [first.json()["id"]],
    }
    second = client.post("/v1/memory/facts", json=body, headers=alice)
    assert second.status_code == 201, second.text


def test_every_operation_declares_the_error_shape_and_no_422() -> None:
    document = create_app(Settings(data_dir="unused")).openapi()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, f"{method.upper()} {path}"
            for status in ("400", "401", "403", "404", "4XX"):
                # /metrics answers text: FastAPI files its error answers under that media type.
                (content,) = responses[status]["content"].values()
                assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, path


@pytest.mark.parametrize("name", ["a\x00b", "alice\n", "", "-alice", "a" * 65, "al ice"])
def test_a_user_name_the_database_would_refuse_is_a_400_naming_it(
    client: TestClient, admin_token: str, name: str
) -> None:
    response = client.post("/admin/api/users", json={"name": name}, headers=bearer(admin_token))
    assert response.status_code == 400, response.text
    assert_openai_error(response.json(), "invalid_value", param="name")


# Values PostgreSQL cannot store (NUL in text, a datetime with no UTC time): each was a 500.
UNSTORABLE: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("POST", "/v1/memory/notes", {"body": "a\x00b"}, "body"),
    ("POST", "/v1/memory/notes", {"body": "x", "author_agent": "\x00"}, "author_agent"),
    ("POST", "/v1/tokens", {"name": "a\x00"}, "name"),
    ("POST", "/v1/memory/facts", {**FACT, "valid_from": "0001-01-01T00:00:00+01:00"}, "valid_from"),
    ("GET", "/v1/memory/notes?since=0001-01-01T00:00:00%2B01:00", None, "since"),
    ("GET", "/v1/memory/notes?until=9999-12-31T23:59:59-01:00", None, "until"),
    ("GET", "/v1/memory/notes?query=a%00", None, "query"),
    ("GET", "/v1/memory/facts?query=a%00", None, "query"),
    ("GET", "/v1/memory/recall?query=a%00", None, "query"),
    ("GET", "/v1/conversations/a%00b", None, "conversation_id"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    UNSTORABLE,
    ids=[f"{method} {path.split('?')[0]} {param}" for method, path, _, param in UNSTORABLE],
)
def test_a_value_the_database_cannot_store_is_a_400_naming_it(
    client: TestClient,
    alice: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    param: str,
) -> None:
    response = client.request(method, path, json=body, headers=alice)
    assert response.status_code == 400, response.text
    assert_openai_error(response.json(), "invalid_value", param=param)
