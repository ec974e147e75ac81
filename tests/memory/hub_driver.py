"""Drive a running test hub's memory: users and tokens over HTTP, exchanges through the chat hook.

The chat hook is exercised without a worker: :func:`chat_exchange` feeds ``record_events`` (the
hook in ``hub/chat.py``) the events a worker would send, on a private background writer that the
helper drains, so every write has landed when it returns (no sleeps, no polling).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from anyio.from_thread import BlockingPortal
from fastapi.testclient import TestClient

from hub.bookkeeping import BackgroundWriter
from hub.chat import ChatCaller, record_events
from hub.openai_schema import ChatCompletionRequest
from hub.state import HubState
from inference.dispatch import JobEvent
from inference.protocol import Chunk, Delta, Done, Usage


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a token."""
    return {"Authorization": f"Bearer {token}"}


def hub_state(client: TestClient) -> HubState:
    """The running hub's state."""
    state: HubState = client.app_state["hub"]
    return state


def new_user(client: TestClient, admin_token: str, name: str, *, memory: bool = True) -> str:
    """Create a user with a first token (which gets their data key); turn memory on."""
    client.post("/admin/api/users", json={"name": name}, headers=bearer(admin_token))
    response = client.post(f"/admin/api/users/{name}/tokens", json={}, headers=bearer(admin_token))
    assert response.status_code == 201, response.text
    assert response.json()["memory"] == "new_key"
    token: str = response.json()["token"]
    if memory:
        settings = {"enabled": True, "compaction": False}
        assert client.put("/v1/memory/settings", json=settings, headers=bearer(token)).is_success
    return token


def second_token(client: TestClient, token: str) -> str:
    """Issue another token from ``token`` (it opens the same memory)."""
    response = client.post("/v1/tokens", json={"name": "second"}, headers=bearer(token))
    assert response.status_code == 201, response.text
    assert response.json()["memory"] == "linked"
    text: str = response.json()["token"]
    return text


async def _events(answer: str) -> AsyncIterator[JobEvent]:
    for piece in (answer[: len(answer) // 2], answer[len(answer) // 2 :]):
        yield Chunk(job_id="job", delta=Delta(content=piece))
    usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    yield Done(job_id="job", finish_reason="stop", usage=usage, model="test-model")


def chat_exchange(
    client: TestClient, token: str, conversation_id: str, user_text: str, answer: str
) -> None:
    """Run one finished exchange through the chat hook and wait until its writes landed."""
    state = hub_state(client)
    body = ChatCompletionRequest.model_validate(
        {"model": "test-model", "messages": [{"role": "user", "content": user_text}]}
    )

    async def run() -> int:
        principal = await state.tokens.resolve(token)
        writer = BackgroundWriter(state.db.pool)
        private = dataclasses.replace(state, writer=writer)
        caller = ChatCaller(principal, token, conversation_id)
        async for _ in record_events(private, caller, body, _events(answer)):
            pass
        await writer.drain()
        return writer.failed

    assert portal(client).call(run) == 0


def portal(client: TestClient) -> BlockingPortal:
    """The test client's event-loop portal (the hub's loop)."""
    assert client.portal is not None
    return client.portal


def fetch(client: TestClient, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Run a query on the hub's database and return plain rows."""
    state = hub_state(client)

    async def run() -> list[dict[str, Any]]:
        async with state.db.pool.acquire() as conn:
            return [dict(r) for r in await conn.fetch(sql, *args)]

    return portal(client).call(run)


def now() -> datetime:
    """The current time, aware."""
    return datetime.now(UTC)
