"""Memory through MCP: remember, recall, forget, notes and resources, scoped per user."""

from __future__ import annotations

import json

import httpx
import pytest
from mcp import MCPError
from mcp.types import INVALID_PARAMS

from tests.hub.conftest import LiveHub
from tests.mcp_server.test_server import http_client

pytestmark = pytest.mark.anyio


async def test_remember_then_recall_finds_the_fact(live_hub: LiveHub) -> None:
    async with http_client(live_hub, live_hub.user_token) as client:
        stored = await client.call_tool(
            "remember", {"text": "Alice's favourite tea is jasmine.", "tags": ["food"]}
        )
        assert not stored.is_error, stored.content
        recalled = await client.call_tool("recall", {"query": "which tea does alice like"})
    assert recalled.structured_content is not None
    texts = [f["text"] for f in recalled.structured_content["facts"]]
    assert texts[0] == "Alice's favourite tea is jasmine."


async def test_another_user_cannot_recall_or_forget_my_facts(
    live_hub: LiveHub, bob_token: str
) -> None:
    async with http_client(live_hub, live_hub.user_token) as alice:
        stored = await alice.call_tool("remember", {"text": "Alice's locker code is 4321."})
    assert stored.structured_content is not None
    fact_id = stored.structured_content["id"]
    async with http_client(live_hub, bob_token) as bob:
        recalled = await bob.call_tool("recall", {"query": "locker code"})
        forgotten = await bob.call_tool("forget", {"fact_id": fact_id})
    assert recalled.structured_content is not None
    assert all("4321" not in f["text"] for f in recalled.structured_content["facts"])
    assert forgotten.is_error
    async with http_client(live_hub, live_hub.user_token) as alice:
        mine = await alice.call_tool("forget", {"fact_id": fact_id})
    assert not mine.is_error


async def test_notes_are_written_searched_read_and_served_as_resources(
    live_hub: LiveHub, bob_token: str
) -> None:
    async with http_client(live_hub, live_hub.user_token) as client:
        written = await client.call_tool(
            "note_write",
            {
                "title": "Deploy",
                "body": "Deploys run from the blue pipeline on Fridays.",
                "author_agent": "test",
            },
        )
        assert written.structured_content is not None
        note = written.structured_content
        found = await client.call_tool("note_search", {"query": "when do deploys run"})
        read = await client.call_tool("note_get", {"note_id": note["id"]})
        resource = await client.read_resource(f"notes://{note['namespace']}/{note['id']}")
        facts = await client.read_resource("memory://facts")
    assert found.structured_content is not None
    assert found.structured_content["notes"][0]["id"] == note["id"]
    assert read.structured_content is not None
    assert read.structured_content["body"].startswith("Deploys run")
    assert json.loads(resource.contents[0].text)["id"] == note["id"]  # type: ignore[union-attr]
    assert "facts" in json.loads(facts.contents[0].text)  # type: ignore[union-attr]
    async with http_client(live_hub, bob_token) as bob:
        theirs = await bob.call_tool("note_get", {"note_id": note["id"]})
        searched = await bob.call_tool("note_search", {"query": "blue pipeline deploys"})
    assert theirs.is_error
    assert searched.structured_content == {"notes": []}


async def test_bad_memory_arguments_are_tool_errors(live_hub: LiveHub) -> None:
    async with http_client(live_hub, live_hub.user_token) as client:
        empty = await client.call_tool("remember", {"text": ""})
        bad_tag = await client.call_tool("remember", {"text": "x", "tags": ["Not A Tag!"]})
        bad_id = await client.call_tool("forget", {"fact_id": "not-a-uuid"})
        bad_mode = await client.call_tool("note_search", {"query": "x", "mode": "psychic"})
    assert empty.is_error
    assert bad_tag.is_error
    assert bad_id.is_error
    assert bad_mode.is_error


async def test_an_id_that_is_a_path_is_refused_and_memory_survives(live_hub: LiveHub) -> None:
    async with http_client(live_hub, live_hub.user_token) as client:
        stored = await client.call_tool("remember", {"text": "Alice's bike is a green Brompton."})
        assert stored.structured_content is not None
        fact_id = stored.structured_content["id"]
        wipe = await client.call_tool("forget", {"fact_id": "../../memory"})
        sneaky = await client.call_tool("forget", {"fact_id": f"{fact_id}/../../../memory"})
        listing = await client.call_tool("note_get", {"note_id": "..%2F..%2Fexport"})
        export = await client.call_tool("conversation_get", {"conversation_id": ".."})
    async with httpx.AsyncClient(base_url=live_hub.url) as http:
        fact = await http.get(
            f"/v1/memory/facts/{fact_id}",
            headers={"Authorization": f"Bearer {live_hub.user_token}"},
        )
    assert fact.status_code == 200, "the fact was deleted through a path in an id"
    assert fact.json()["text"] == "Alice's bike is a green Brompton."
    assert wipe.is_error and sneaky.is_error and listing.is_error and export.is_error
    assert "validation error for forgetArguments" in wipe.content[0].text  # type: ignore[union-attr]
    assert "invalid_id" in export.content[0].text  # type: ignore[union-attr]


async def test_a_resource_uri_with_a_bad_id_is_an_invalid_params_error(live_hub: LiveHub) -> None:
    async with http_client(live_hub, live_hub.user_token) as client:
        for uri in (
            "notes://user:me/not-a-uuid",
            "notes://user:me/..",
            "notes://nobody/0190b3c0-0000-7000-8000-000000000000",
            "conversation://%2E%2E",
            "conversation://a%20b",
        ):
            with pytest.raises(MCPError) as refused:
                await client.read_resource(uri)
            assert refused.value.error.code == INVALID_PARAMS, (uri, refused.value.error)
