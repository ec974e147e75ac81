"""One error shape on every error path: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from hub.app import create_app
from hub.config import Settings


def assert_openai_error(body: object, code: str, param: str | None = None) -> None:
    """The body is exactly the OpenAI error shape with this code (and param, when given)."""
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param


@pytest.fixture
def alice(client: TestClient, admin_token: str) -> dict[str, str]:
    auth = {"Authorization": f"Bearer {admin_token}"}
    client.post("/admin/api/users", json={"name": "alice"}, headers=auth)
    token = client.post("/admin/api/users/alice/tokens", json={}, headers=auth).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def test_401_has_the_error_shape(client: TestClient) -> None:
    response = client.get("/v1/tokens")
    assert response.status_code == 401
    assert_openai_error(response.json(), "missing_api_key")


def test_403_has_the_error_shape(client: TestClient, alice: dict[str, str]) -> None:
    response = client.get("/admin/api/users", headers=alice)
    assert response.status_code == 403
    assert_openai_error(response.json(), "insufficient_scope")


def test_404_on_an_unknown_route_has_the_error_shape(client: TestClient) -> None:
    response = client.get("/v1/does-not-exist")
    assert response.status_code == 404
    assert_openai_error(response.json(), "not_found")


def test_404_on_an_unknown_resource_has_the_error_shape(
    client: TestClient, alice: dict[str, str]
) -> None:
    response = client.delete("/v1/tokens/ffffffffff", headers=alice)
    assert response.status_code == 404
    assert_openai_error(response.json(), "not_found", "prefix")


def test_405_has_the_error_shape(client: TestClient) -> None:
    response = client.put("/v1/tokens")
    assert response.status_code == 405
    assert_openai_error(response.json(), "method_not_allowed")


def test_malformed_json_gets_400_invalid_json(client: TestClient, alice: dict[str, str]) -> None:
    response = client.post(
        "/v1/tokens",
        content=b'{"name": ',
        headers={**alice, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert_openai_error(response.json(), "invalid_json")


def test_a_wrong_type_gets_400_naming_the_param(client: TestClient, alice: dict[str, str]) -> None:
    response = client.post("/v1/tokens", json={"expires_in_s": "soon"}, headers=alice)
    assert response.status_code == 400
    assert_openai_error(response.json(), "invalid_value", "expires_in_s")


def test_an_unknown_field_gets_400_naming_the_param(
    client: TestClient, alice: dict[str, str]
) -> None:
    response = client.post("/v1/tokens", json={"colour": "red"}, headers=alice)
    assert response.status_code == 400
    assert_openai_error(response.json(), "invalid_value", "colour")


def test_an_unknown_scope_gets_400(client: TestClient, admin_token: str) -> None:
    auth = {"Authorization": f"Bearer {admin_token}"}
    client.post("/admin/api/users", json={"name": "alice"}, headers=auth)
    response = client.post("/admin/api/users/alice/tokens", json={"scopes": ["root"]}, headers=auth)
    assert response.status_code == 400
    assert_openai_error(response.json(), "invalid_request", "scopes")


def test_a_duplicate_user_gets_409(client: TestClient, admin_token: str) -> None:
    auth = {"Authorization": f"Bearer {admin_token}"}
    assert client.post("/admin/api/users", json={"name": "bob"}, headers=auth).status_code == 201
    response = client.post("/admin/api/users", json={"name": "bob"}, headers=auth)
    assert response.status_code == 409
    assert_openai_error(response.json(), "conflict", "name")


@pytest.fixture
def small_body_client(settings: Settings) -> Iterator[TestClient]:
    limited = settings.model_copy(
        update={"server": settings.server.model_copy(update={"max_body_bytes": 2048})}
    )
    with TestClient(create_app(limited)) as test_client:
        yield test_client


def test_an_oversized_body_gets_413_by_content_length(small_body_client: TestClient) -> None:
    response = small_body_client.post("/v1/tokens", content=b"x" * 4096)
    assert response.status_code == 413
    assert_openai_error(response.json(), "request_too_large")


def test_an_oversized_streamed_body_gets_413(small_body_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"y" * 1024

    response = small_body_client.post(
        "/v1/tokens",
        content=chunks(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer x"},
    )
    assert response.status_code == 413
    assert_openai_error(response.json(), "request_too_large")


def test_a_nul_character_in_stored_or_searched_text_is_a_400_not_a_500(
    client: TestClient, alice: dict[str, str]
) -> None:
    note = {"namespace": "user:me", "body": "before\u0000after"}
    stored = client.post("/v1/memory/notes", json=note, headers=alice)
    assert stored.status_code == 400
    assert_openai_error(stored.json(), "invalid_value")
    searched = client.get("/v1/memory/notes", params={"query": "a\u0000b"}, headers=alice)
    assert searched.status_code == 400
    assert_openai_error(searched.json(), "invalid_value")
