"""Memory in chats: recalled facts and notes reach the worker as one system message, when on."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import httpx
import pytest
from pgvector.asyncpg import register_vector

from hub.auth import Principal
from hub.semantic import OptInCache, SemanticMemory
from memory.embeddings import Embedder
from memory.recall import CONTEXT_HEADER, Injection
from memory.settings import MemorySettings
from tests.hub.conftest import LiveHub
from tests.hub.raw_worker import answer, raw_worker, receive
from tests.memory.conftest import new_member

pytestmark = pytest.mark.anyio

QUESTION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Which city do I live in?"},
]


def test_the_opt_in_cache_expires_and_forgets() -> None:
    now = [0.0]
    cache = OptInCache(5.0, clock=lambda: now[0])
    user = UUID(int=7)
    assert cache.get(user) is None
    cache.put(user, True)
    now[0] = 4.9
    assert cache.get(user) is True
    now[0] = 5.0
    assert cache.get(user) is None
    cache.put(user, False)
    cache.forget(user)
    assert cache.get(user) is None


async def chat_through_raw_worker(
    hub: LiveHub, http: httpx.AsyncClient, model: str
) -> tuple[dict[str, Any], httpx.Response]:
    """Send the question, capture the job frame the worker receives, answer it."""
    result: dict[str, httpx.Response] = {}
    async with anyio.create_task_group() as tasks, raw_worker(hub, model) as ws:

        async def ask() -> None:
            body = {"model": model, "messages": QUESTION}
            result["response"] = await http.post("/v1/chat/completions", json=body)

        tasks.start_soon(ask)
        job = await receive(ws, "job")
        await answer(ws, job, "Lisbon.")
    return job, result["response"]


async def test_recalled_memory_reaches_the_worker_as_one_system_message(
    live_hub: LiveHub,
) -> None:
    headers = {"Authorization": f"Bearer {live_hub.user_token}"}
    async with httpx.AsyncClient(base_url=live_hub.url, headers=headers, timeout=30) as http:
        settings = {"enabled": True, "compaction": False}
        assert (await http.put("/v1/memory/settings", json=settings)).is_success
        for fact in ("The user lives in Lisbon", "The user's favourite editor is vim"):
            assert (await http.post("/v1/memory/facts", json={"text": fact})).is_success
        note = {"title": "Home", "body": "The user's flat in Lisbon is in Alfama."}
        assert (await http.post("/v1/memory/notes", json=note)).is_success
        job, response = await chat_through_raw_worker(live_hub, http, "rag-model")
    assert response.status_code == 200, response.text
    memory, *rest = job["messages"]
    assert rest == QUESTION
    assert memory["role"] == "system" and memory["content"].startswith(CONTEXT_HEADER)
    lines = memory["content"].splitlines()[1:]
    assert "- Fact: The user lives in Lisbon" in lines
    assert any(line.startswith("- Note (user:") and "Alfama" in line for line in lines)
    assert not any("vim" in line for line in lines)  # below the similarity threshold
    assert response.headers["X-Iamine-Memory"] == str(len(lines))


async def test_with_memory_off_nothing_is_recalled_or_announced(live_hub: LiveHub) -> None:
    headers = {"Authorization": f"Bearer {live_hub.user_token}"}
    async with httpx.AsyncClient(base_url=live_hub.url, headers=headers, timeout=30) as http:
        assert (await http.post("/v1/memory/facts", json={"text": "I live in Porto"})).is_success
        off = {"enabled": False, "compaction": False}
        assert (await http.put("/v1/memory/settings", json=off)).is_success
        job, response = await chat_through_raw_worker(live_hub, http, "rag-model")
    assert response.status_code == 200, response.text
    assert job["messages"] == QUESTION
    assert "X-Iamine-Memory" not in response.headers


async def test_a_missing_model_skips_recall_once_logged_without_failing_the_chat(
    database_url: str, tmp_path: Path, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    async with asyncpg.create_pool(
        database_url, min_size=1, max_size=2, init=register_vector
    ) as pool:
        async with pool.acquire() as conn:
            member = await new_member(conn, "ann")
        semantic = SemanticMemory(pool, MemorySettings(), Embedder(tmp_path / "none"), None)
        principal = Principal(member.token.id, "iam_x", member.user_id, "ann", frozenset({"user"}))
        for _ in range(2):
            memory = await semantic.for_chat(principal, member.token.text, QUESTION)
            assert memory.enabled and memory.injection == Injection(None, 0)
    assert [e["event"] for e in captured_logs].count("chat_recall_skipped") == 1
