"""The chat route's direct way in (hub/chat_path.py) answers exactly as FastAPI's routing did.

A chat request skips FastAPI's middleware and router; these tests hold what it must keep: the
request id, the access metrics under the route's template, the OpenAI error shape for every
error (401, 400, 413, 500), and FastAPI's own answers for whatever is not ``POST`` on the path.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

import hub.routes.chat
from hub.app import create_app
from hub.config import Settings
from tests.hub.test_errors import alice, assert_openai_error

__all__ = ["alice"]  # a fixture, imported for these tests

CHAT = "/v1/chat/completions"
HELLO = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}]}


def test_a_chat_without_a_token_is_401_with_a_request_id_and_counted(client: TestClient) -> None:
    response = client.post(CHAT, json=HELLO, headers={"X-Request-Id": "trace-7"})
    assert response.status_code == 401
    assert_openai_error(response.json(), "missing_api_key")
    assert response.headers["x-request-id"] == "trace-7"
    text = client.get("/metrics").text
    assert f'iamine_http_requests_total{{method="POST",route="{CHAT}",status="401"}} 1.0' in text
    assert f'iamine_http_request_duration_seconds_count{{method="POST",route="{CHAT}"}} 1.0' in text


def test_bad_bodies_get_400_naming_the_problem(client: TestClient, alice: dict[str, str]) -> None:
    broken = client.post(CHAT, content=b'{"model": ', headers=alice)
    assert broken.status_code == 400
    assert_openai_error(broken.json(), "invalid_json")
    wrong = client.post(CHAT, json={**HELLO, "messages": "hi"}, headers=alice)
    assert wrong.status_code == 400
    assert_openai_error(wrong.json(), "invalid_value", "messages")


def test_other_methods_and_a_trailing_slash_are_fastapis(client: TestClient) -> None:
    listed = client.get(CHAT)
    assert listed.status_code == 405
    assert_openai_error(listed.json(), "method_not_allowed")
    assert "x-request-id" in listed.headers
    slashed = client.post(CHAT + "/", json=HELLO, follow_redirects=False)
    assert slashed.status_code in (307, 404)


def test_the_schema_still_describes_the_chat_route(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "requestBody" in schema["paths"][CHAT]["post"]


@pytest.fixture
def small_body_client(settings: Settings) -> Iterator[TestClient]:
    limited = settings.model_copy(
        update={"server": settings.server.model_copy(update={"max_body_bytes": 2048})}
    )
    with TestClient(create_app(limited)) as test_client:
        yield test_client


def test_an_oversized_chat_gets_413_declared_or_streamed(
    small_body_client: TestClient, alice: dict[str, str]
) -> None:
    declared = small_body_client.post(CHAT, content=b"x" * 4096)
    assert declared.status_code == 413
    assert_openai_error(declared.json(), "request_too_large")

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"y" * 1024

    streamed = small_body_client.post(
        CHAT, content=chunks(), headers={**alice, "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    assert_openai_error(streamed.json(), "request_too_large")


def test_a_failure_inside_the_chat_is_a_500_in_the_error_shape_and_logged(
    settings: Settings, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault injected into the chat service: the client gets the hub's 500, not a hang."""

    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(hub.routes.chat, "start_chat", broken)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.post(CHAT, json=HELLO, headers=alice)
        assert response.status_code == 500
        assert_openai_error(response.json(), "internal_error")
        assert "x-request-id" in response.headers
        text = client.get("/metrics").text
    assert f'iamine_http_requests_total{{method="POST",route="{CHAT}",status="500"}} 1.0' in text
