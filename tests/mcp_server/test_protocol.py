"""The MCP utilities through the official client on a live hub: logging, completions, progress,
tool annotations and output schemas, resource templates and prompts, each scoped per user."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import httpx
import httpx2
import jsonschema  # type: ignore[import-untyped]  # the mcp SDK's own dependency
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.types import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    EmptyResult,
    LoggingMessageNotificationParams,
    PromptReference,
    ResourceTemplateReference,
    SetLevelRequest,
    SetLevelRequestParams,
    TextContent,
    TextResourceContents,
)

from inference.roles import BUILTIN_ROLES, DEFAULT_MODEL
from mcp_server.completions import MAX_VALUES, Candidates, bounded
from tests.hub.conftest import LiveHub
from tests.hub.raw_worker import answer, raw_worker, receive
from tests.mcp_server.test_server import chat_through_mcp, http_client

pytestmark = [
    pytest.mark.anyio,
    # logging/setLevel is deprecated by the 2026-07-28 protocol; handshake clients still send it.
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

NOTES = ResourceTemplateReference(uri="notes://{namespace}/{note_id}")
CONVERSATION = ResourceTemplateReference(uri="conversation://{conversation_id}")


@asynccontextmanager
async def client_for(
    hub: LiveHub, token: str, legacy: bool = False, **options: Any
) -> AsyncIterator[Client]:
    """A client over streamable HTTP: the 2026-07-28 protocol, or the handshake one (legacy)."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        Client(
            streamable_http_client(f"{hub.url}/mcp", http_client=http),
            mode="legacy" if legacy else "auto",
            **options,
        ) as client,
    ):
        yield client


class Logs:
    """The log notifications a client received, with a bounded wait for one to arrive."""

    def __init__(self) -> None:
        self.entries: list[LoggingMessageNotificationParams] = []
        self._arrived = anyio.Event()

    async def __call__(self, params: LoggingMessageNotificationParams) -> None:
        self.entries.append(params)
        self._arrived.set()
        self._arrived = anyio.Event()

    async def wait_for(self, found: Callable[[LoggingMessageNotificationParams], bool]) -> None:
        with anyio.fail_after(10):
            while not any(found(entry) for entry in self.entries):
                await self._arrived.wait()

    def text(self) -> str:
        return json.dumps([entry.data for entry in self.entries])


async def test_set_level_filters_the_log_notifications_of_tools(live_hub: LiveHub) -> None:
    logs = Logs()
    secret = "Alice hides the spare key under the blue pot."
    async with client_for(live_hub, live_hub.user_token, legacy=True, logging_callback=logs) as c:
        assert c.server_capabilities.logging is not None
        await c.set_logging_level("warning")
        stored = await c.call_tool("remember", {"text": secret})
        missing = await c.call_tool("forget", {"fact_id": str(uuid.uuid4())})
        await logs.wait_for(lambda e: e.level == "warning")
        assert [e.level for e in logs.entries] == ["warning"], "the info of remember leaked"
        await c.set_logging_level("info")
        await c.call_tool("recall", {"query": "where is the spare key"})
        await logs.wait_for(lambda e: e.level == "info" and "recall:" in str(e.data))
    assert not stored.is_error and missing.is_error
    assert "DELETE /v1/memory/facts/" in str(logs.entries[0].data)
    assert "404 not_found" in str(logs.entries[0].data)
    assert {e.logger for e in logs.entries} == {"iamine"}
    assert "blue pot" not in logs.text() and "spare key" not in logs.text()
    assert live_hub.user_token not in logs.text()


async def test_a_2026_request_gets_the_logs_it_opted_in_to(live_hub: LiveHub) -> None:
    logs = Logs()
    token = live_hub.user_token
    async with client_for(live_hub, token, log_level="info", logging_callback=logs) as c:
        assert c.protocol_version == "2026-07-28"
        await c.call_tool("pool_status", {})
        await logs.wait_for(lambda e: "pool_status:" in str(e.data))
    quiet = Logs()
    async with client_for(live_hub, token, log_level="error", logging_callback=quiet) as c:
        await c.call_tool("pool_status", {})
        failed = await c.call_tool("forget", {"fact_id": str(uuid.uuid4())})
    assert failed.is_error
    assert quiet.entries == [], "info and warning entries below the opted-in level were sent"


async def test_a_bad_level_or_set_level_on_2026_is_a_json_rpc_error(live_hub: LiveHub) -> None:
    bad = SetLevelRequest(params=SetLevelRequestParams.model_construct(level=cast(Any, "loud")))
    async with client_for(live_hub, live_hub.user_token, legacy=True) as client:
        with pytest.raises(MCPError) as refused:
            await client.session.send_request(bad, EmptyResult)
        still_fine = await client.call_tool("pool_status", {})
    assert refused.value.error.code == INVALID_PARAMS
    assert not still_fine.is_error
    async with client_for(live_hub, live_hub.user_token) as client:
        with pytest.raises(MCPError) as gone:
            await client.set_logging_level("info")
    assert gone.value.error.code == METHOD_NOT_FOUND


async def _values(client: Client, ref: Any, name: str, value: str, **context: str) -> list[str]:
    result = await client.complete(ref, {"name": name, "value": value}, context or None)
    assert len(result.completion.values) <= MAX_VALUES
    return result.completion.values


async def _shared_namespace(hub: LiveHub, name: str, subscriber: str) -> None:
    async with httpx.AsyncClient(
        base_url=hub.url, headers={"Authorization": f"Bearer {hub.admin_token}"}
    ) as admin:
        created = await admin.post("/admin/api/namespaces", json={"name": name})
        assert created.status_code == 201, created.text
        joined = await admin.put(f"/admin/api/namespaces/{name}/subscribers/{subscriber}")
        assert joined.status_code == 200, joined.text


async def test_completions_offer_only_the_callers_own_names_and_ids(
    live_hub: LiveHub, bob_token: str
) -> None:
    await chat_through_mcp(live_hub, live_hub.user_token, "complete-alice")
    await chat_through_mcp(live_hub, bob_token, "complete-bob")
    await _shared_namespace(live_hub, "pool:mcp-team", "alice")
    async with client_for(live_hub, live_hub.user_token) as alice:
        written = await alice.call_tool("note_write", {"body": "The team meets on Tuesdays."})
        assert written.structured_content is not None
        note_id = str(written.structured_content["id"])
        spaces = await _values(alice, NOTES, "namespace", "")
        pools = await _values(alice, NOTES, "namespace", "pool:")
        notes = await _values(alice, NOTES, "note_id", note_id[:8], namespace="user:me")
        conversations = await _values(alice, CONVERSATION, "conversation_id", "complete-")
        roles = await _values(alice, PromptReference(name="subagent"), "role", "sc")
        all_roles = await _values(alice, PromptReference(name="subagent"), "role", "")
        resumable = await _values(
            alice, PromptReference(name="resume_conversation"), "conversation_id", "complete-a"
        )
        task = await _values(alice, PromptReference(name="subagent"), "task", "wr")
    async with client_for(live_hub, bob_token) as bob:
        bob_spaces = await _values(bob, NOTES, "namespace", "")
        bob_notes = await _values(bob, NOTES, "note_id", note_id[:8])
        bob_conversations = await _values(bob, CONVERSATION, "conversation_id", "complete-")
    assert spaces == ["user:me", "pool:mcp-team"]
    assert pools == ["pool:mcp-team"]
    assert notes == [note_id]
    assert conversations == ["complete-alice"]
    assert roles == ["scout"]
    assert set(BUILTIN_ROLES) <= set(all_roles)
    assert resumable == ["complete-alice"]
    assert task == []
    assert bob_spaces == ["user:me"]
    assert bob_notes == []
    assert bob_conversations == ["complete-bob"]


async def test_completing_what_the_server_does_not_have_is_invalid_params(
    live_hub: LiveHub,
) -> None:
    async with client_for(live_hub, live_hub.user_token) as client:
        for ref, name, context in (
            (NOTES, "colour", None),
            (PromptReference(name="test_prompt_with_arguments"), "arg1", None),
            (ResourceTemplateReference(uri="test://template/{id}/data"), "id", None),
            (NOTES, "note_id", {"namespace": "../../memory"}),
        ):
            with pytest.raises(MCPError) as refused:
                await client.complete(ref, {"name": name, "value": ""}, context)
            assert refused.value.error.code == INVALID_PARAMS, (ref, name)
        alive = await client.call_tool("pool_status", {})
    assert not alive.is_error


def test_completions_are_capped_at_100_with_the_total_and_has_more() -> None:
    many = Candidates([f"conv-{i:03d}" for i in range(150)] + ["other"])
    capped = bounded(many, "conv-")
    assert capped.values == [f"conv-{i:03d}" for i in range(100)]
    assert (capped.total, capped.has_more) == (150, True)
    few = bounded(many, "conv-14")
    assert few.values == [f"conv-{i}" for i in range(140, 150)]
    assert (few.total, few.has_more) == (10, False)
    cut = bounded(Candidates(["a1", "a2"], cut=True), "a")
    assert (cut.values, cut.total, cut.has_more) == (["a1", "a2"], None, True)
    assert bounded(many, "zzz").values == []


class Progress:
    """The progress notifications of one call."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, float | None, str | None]] = []

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.steps.append((progress, total, message))

    def check_complete(self) -> None:
        values = [progress for progress, _, _ in self.steps]
        assert len(values) >= 2, self.steps
        assert values == sorted(values)
        assert self.steps[-1][0] == self.steps[-1][1], "the last step is not the total"


async def test_long_tools_report_progress_when_asked(live_hub: LiveHub) -> None:
    export, chat, agent = Progress(), Progress(), Progress()
    async with (
        raw_worker(live_hub, DEFAULT_MODEL) as ws,
        client_for(live_hub, live_hub.user_token) as client,
    ):
        exported = await client.call_tool("memory_export", {}, progress_callback=export)
        results: dict[str, Any] = {}
        async with anyio.create_task_group() as tasks:

            async def call() -> None:
                results["chat"] = await client.call_tool(
                    "chat",
                    {"message": "hello", "model": DEFAULT_MODEL},
                    progress_callback=chat,
                )
                results["agent"] = await client.call_tool(
                    "subagent_run", {"role": "scout", "input": "look"}, progress_callback=agent
                )

            tasks.start_soon(call)
            await answer(ws, await receive(ws, "job"), "Hello.")
            await answer(ws, await receive(ws, "job"), "Looked.")
    assert not exported.is_error and not results["chat"].is_error
    assert not results["agent"].is_error, results["agent"].content
    export.check_complete()
    chat.check_complete()
    agent.check_complete()
    assert any(DEFAULT_MODEL in (message or "") for _, _, message in chat.steps)


async def test_every_tool_has_annotations_and_an_output_schema_its_results_match(
    live_hub: LiveHub,
) -> None:
    async with client_for(live_hub, live_hub.user_token) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        fact = await client.call_tool("remember", {"text": "Alice's tea is oolong."})
        note = await client.call_tool("note_write", {"body": "Oolong is brewed at 90 degrees."})
        assert fact.structured_content is not None and note.structured_content is not None
        calls = {
            "remember": fact,
            "note_write": note,
            "models_list": await client.call_tool("models_list", {}),
            "pool_status": await client.call_tool("pool_status", {}),
            "conversation_list": await client.call_tool("conversation_list", {}),
            "memory_export": await client.call_tool("memory_export", {}),
            "recall": await client.call_tool("recall", {"query": "tea"}),
            "note_search": await client.call_tool("note_search", {"query": "oolong"}),
            "note_get": await client.call_tool(
                "note_get", {"note_id": note.structured_content["id"]}
            ),
            "forget": await client.call_tool("forget", {"fact_id": fact.structured_content["id"]}),
        }
    for tool in tools.values():
        assert tool.annotations is not None, tool.name
        hints = tool.annotations
        assert hints.title and hints.read_only_hint is not None, tool.name
        assert None not in (hints.destructive_hint, hints.idempotent_hint, hints.open_world_hint)
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
    assert tools["recall"].annotations.read_only_hint  # type: ignore[union-attr]
    assert tools["forget"].annotations.destructive_hint  # type: ignore[union-attr]
    assert not tools["remember"].annotations.destructive_hint  # type: ignore[union-attr]
    assert tools["chat"].annotations.open_world_hint  # type: ignore[union-attr]
    for name, result in calls.items():
        assert not result.is_error, (name, result.content)
        jsonschema.validate(result.structured_content, tools[name].output_schema)
        text = result.content[0]
        assert isinstance(text, TextContent) and json.loads(text.text) == result.structured_content


async def recorded_chat(hub: LiveHub, conversation_id: str) -> None:
    """Alice (with L2 memory on) chats through MCP, then waits (bounded) for the stored turn."""
    async with httpx.AsyncClient(base_url=hub.url) as http:
        opted_in = await http.put(
            "/v1/memory/settings",
            json={"enabled": True, "compaction": False},
            headers={"Authorization": f"Bearer {hub.user_token}"},
        )
    assert opted_in.status_code == 200, opted_in.text
    await chat_through_mcp(hub, hub.user_token, conversation_id)
    async with client_for(hub, hub.user_token) as client:
        with anyio.fail_after(10):
            while True:
                read = await client.call_tool(
                    "conversation_get", {"conversation_id": conversation_id}
                )
                if read.structured_content and read.structured_content["turns"]:
                    return
                await anyio.sleep(0.05)


async def test_conversation_resources_read_as_json_and_text_for_their_owner_only(
    live_hub: LiveHub, bob_token: str
) -> None:
    await recorded_chat(live_hub, "resource-door")
    async with client_for(live_hub, live_hub.user_token) as alice:
        listed = await alice.list_resource_templates()
        templates = {t.uri_template: t for t in listed.resource_templates}
        as_json = await alice.read_resource("conversation://resource-door")
        as_text = await alice.read_resource("conversation://resource-door/transcript")
    assert set(templates) == {
        "conversation://{conversation_id}",
        "conversation://{conversation_id}/transcript",
        "memory://facts{?query}",
        "notes://{namespace}/{note_id}",
    }
    assert templates["conversation://{conversation_id}/transcript"].mime_type == "text/plain"
    body, text = as_json.contents[0], as_text.contents[0]
    assert isinstance(body, TextResourceContents) and isinstance(text, TextResourceContents)
    assert body.mime_type == "application/json" and text.mime_type == "text/plain"
    conversation = json.loads(body.text)
    assert conversation["id"] == "resource-door"
    assert conversation["turns"][0]["messages"][-1]["content"] == "Noted: the blue door."
    assert "user: remember the blue door\n\nassistant: Noted: the blue door." in text.text
    async with client_for(live_hub, bob_token) as bob:
        for uri in ("conversation://resource-door", "conversation://resource-door/transcript"):
            with pytest.raises(MCPError) as refused:
                await bob.read_resource(uri)
            assert refused.value.error.code == INVALID_PARAMS
            assert "not_found" in refused.value.error.message


async def test_prompts_brief_a_role_by_name_and_resume_a_conversation(
    live_hub: LiveHub, bob_token: str
) -> None:
    await recorded_chat(live_hub, "prompt-door")
    async with http_client(live_hub, live_hub.user_token) as alice:
        coder = await alice.get_prompt("subagent", {"role": "coder", "task": "sort a list"})
        resumed = await alice.get_prompt("resume_conversation", {"conversation_id": "prompt-door"})
        with pytest.raises(MCPError) as no_role:
            await alice.get_prompt("subagent", {"role": "wizard", "task": "x"})
        with pytest.raises(MCPError) as bad_id:
            await alice.get_prompt("resume_conversation", {"conversation_id": ".."})
    coder_text = coder.messages[0].content
    resumed_text = resumed.messages[0].content
    assert isinstance(coder_text, TextContent) and isinstance(resumed_text, TextContent)
    assert coder_text.text.startswith(BUILTIN_ROLES["coder"].system_prompt)
    assert coder_text.text.endswith("sort a list")
    assert "assistant: Noted: the blue door." in resumed_text.text
    assert no_role.value.error.code == INVALID_PARAMS
    assert bad_id.value.error.code == INVALID_PARAMS
    async with http_client(live_hub, bob_token) as bob:
        with pytest.raises(MCPError) as theirs:
            await bob.get_prompt("resume_conversation", {"conversation_id": "prompt-door"})
    assert theirs.value.error.code == INVALID_PARAMS
