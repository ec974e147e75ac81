"""The MCP server through the official `mcp` client: in-process and over streamable HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_server.server import build_server
from tests.hub.conftest import LiveHub
from tests.hub.raw_worker import answer, raw_worker, receive

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def http_client(
    hub: LiveHub, token: str | None, timeout_s: float = 30
) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout_s) as http,
        Client(streamable_http_client(f"{hub.url}/mcp", http_client=http)) as client,
    ):
        yield client


@asynccontextmanager
async def in_process_client(hub: LiveHub, token: str) -> AsyncIterator[Client]:
    async with (
        httpx.AsyncClient(base_url=hub.url, timeout=30) as http,
        Client(build_server(http, lambda _ctx: token)) as client,
    ):
        yield client


async def test_the_tools_are_listed_with_descriptions_and_schemas(live_hub: LiveHub) -> None:
    async with http_client(live_hub, live_hub.user_token) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert {
        "chat",
        "models_list",
        "pool_status",
        "conversation_list",
        "conversation_get",
        "memory_export",
    } <= set(tools)
    for tool in tools.values():
        assert tool.description
        assert tool.output_schema is not None


async def test_pool_status_is_structured_output(live_hub: LiveHub) -> None:
    async with in_process_client(live_hub, live_hub.user_token) as client:
        result = await client.call_tool("pool_status", {})
    assert not result.is_error
    assert result.structured_content is not None
    assert set(result.structured_content) >= {"workers", "free_slots", "queue_depth", "models"}


async def test_no_token_or_a_bad_token_is_401_on_mcp(live_hub: LiveHub) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with httpx.AsyncClient() as http:
        missing = await http.post(f"{live_hub.url}/mcp", json=body)
        bad = await http.post(
            f"{live_hub.url}/mcp", json=body, headers={"Authorization": "Bearer iam_nope"}
        )
        worker = await http.post(
            f"{live_hub.url}/mcp",
            json=body,
            headers={"Authorization": f"Bearer {live_hub.worker_token}"},
        )
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    assert bad.status_code == 401
    assert worker.status_code == 403


async def test_bad_arguments_are_tool_errors_and_the_session_survives(live_hub: LiveHub) -> None:
    async with http_client(live_hub, live_hub.user_token) as client:
        wrong_type = await client.call_tool("conversation_list", {"limit": "many"})
        out_of_range = await client.call_tool("conversation_list", {"limit": 0})
        missing = await client.call_tool("chat", {})
        unknown = await client.call_tool("conversation_get", {"conversation_id": "nope"})
        still_fine = await client.call_tool("pool_status", {})
    assert wrong_type.is_error
    assert out_of_range.is_error
    assert missing.is_error
    assert unknown.is_error
    assert "not_found" in json.dumps([c.model_dump() for c in unknown.content])
    assert not still_fine.is_error


async def chat_through_mcp(hub: LiveHub, token: str, conversation_id: str) -> dict[str, Any]:
    async with raw_worker(hub, "mcp-model") as ws, http_client(hub, token) as client:
        result: dict[str, Any] = {}
        async with anyio.create_task_group() as tasks:

            async def call() -> None:
                outcome = await client.call_tool(
                    "chat",
                    {
                        "message": "remember the blue door",
                        "model": "mcp-model",
                        "conversation_id": conversation_id,
                    },
                )
                result["outcome"] = outcome

            tasks.start_soon(call)
            job = await receive(ws, "job")
            await answer(ws, job, "Noted: the blue door.")
    outcome = result["outcome"]
    assert not outcome.is_error, outcome.content
    assert outcome.structured_content is not None
    return dict(outcome.structured_content)


async def test_chat_answers_through_a_worker_and_is_kept_per_user(
    live_hub: LiveHub, bob_token: str
) -> None:
    answer_body = await chat_through_mcp(live_hub, live_hub.user_token, "mcp-door")
    assert answer_body["content"] == "Noted: the blue door."
    assert answer_body["conversation_id"] == "mcp-door"
    async with http_client(live_hub, live_hub.user_token) as alice:
        with anyio.fail_after(10):
            while True:
                listed = await alice.call_tool("conversation_list", {"limit": 50})
                assert listed.structured_content is not None
                ids = {c["id"] for c in listed.structured_content["conversations"]}
                if "mcp-door" in ids:
                    break
                await anyio.sleep(0.05)
    async with http_client(live_hub, bob_token) as bob:
        theirs = await bob.call_tool("conversation_get", {"conversation_id": "mcp-door"})
        listed = await bob.call_tool("conversation_list", {})
    assert theirs.is_error
    assert listed.structured_content == {"conversations": []}


async def test_mcp_chat_writes_l1_like_the_api(live_hub: LiveHub) -> None:
    import asyncpg

    await chat_through_mcp(live_hub, live_hub.user_token, "mcp-l1")
    with anyio.fail_after(10):
        while True:
            conn = await asyncpg.connect(live_hub.database_url)
            try:
                count = await conn.fetchval(
                    "SELECT count(*) FROM l1_messages WHERE conversation_id = 'mcp-l1'"
                )
            finally:
                await conn.close()
            if count:
                break
            await anyio.sleep(0.05)
    assert count >= 2
