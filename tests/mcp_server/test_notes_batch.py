"""note_write_batch: many notes in one call, stored all or none, indexed with their neighbours."""

from __future__ import annotations

import pytest

from tests.hub.conftest import LiveHub
from tests.mcp_server.test_server import http_client

pytestmark = pytest.mark.anyio

TURNS = [
    {"body": "How was the choir concert on Sunday?", "speaker": "Kwame"},
    {"body": "She nailed it, I cried the whole time.", "speaker": "Ingrid"},
]


async def test_a_batch_is_written_in_order_and_found_by_its_neighbours(live_hub: LiveHub) -> None:
    turns = [t | {"said_at": "2023-05-08T13:56:00Z", "tags": ["mcp-batch"]} for t in TURNS]
    async with http_client(live_hub, live_hub.user_token) as client:
        written = await client.call_tool("note_write_batch", {"notes": turns, "window": 1})
        found = await client.call_tool(
            "note_search", {"query": "choir concert", "tags": ["mcp-batch"], "mode": "keyword"}
        )
    assert not written.is_error, written.content
    assert written.structured_content is not None and found.structured_content is not None
    notes = written.structured_content["notes"]
    assert [n["body"] for n in notes] == [t["body"] for t in TURNS]
    assert notes[1]["id"] in [n["id"] for n in found.structured_content["notes"]]


async def test_a_bad_batch_is_refused_and_stores_nothing(live_hub: LiveHub) -> None:
    async with http_client(live_hub, live_hub.user_token) as client:
        empty = await client.call_tool("note_write_batch", {"notes": []})
        missing = await client.call_tool(
            "note_write_batch",
            {
                "notes": [
                    {"body": "kept?", "tags": ["mcp-refused"]},
                    {"body": "x", "namespace": "pool:nowhere"},
                ]
            },
        )
        listed = await client.call_tool(
            "note_search", {"query": "kept", "tags": ["mcp-refused"], "mode": "keyword"}
        )
    assert empty.is_error and missing.is_error
    assert listed.structured_content is not None and listed.structured_content["notes"] == []
