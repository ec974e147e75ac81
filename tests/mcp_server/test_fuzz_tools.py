"""Every MCP tool, called through the official client with hostile strings: clean answers, no harm.

Tools turn what an agent sends into hub requests, and an id pasted into a path once let
``forget(fact_id="../../memory")`` wipe the caller's memory. The tools are listed from the live
server, so a tool added later is fuzzed without editing this file. Each string argument (and each
string in a list argument) gets a fixed corpus of traversal, encoding, injection and size attacks,
some aimed at the caller's own seeded data, then a bounded, derandomized hypothesis run. Every
call must end in a valid result or a clean tool error; afterwards the caller's facts, notes,
conversation and tokens are all still there, and the hub answered no request with a 5xx.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client, MCPError
from mcp.shared.uri_template import UriTemplate
from mcp.types import INVALID_PARAMS, CallToolResult, TextContent, Tool

from hub import accounts
from tests.fuzzing import fuzz_settings
from tests.hub.conftest import LiveHub
from tests.mcp_server.test_server import chat_through_mcp, http_client

EXAMPLES_PER_ARGUMENT = 8
CALL_TIMEOUT_S = 60
SEEDED_CONVERSATION = "fuzz-seed"
# Codes of errors that are the pool's fault, not the caller's: none may come back.
SERVER_FAULTS = {"internal_error", "hub_unreachable", "http_error", "database_error"}

FRAGMENTS = [
    "..", ".", "/", "\\", "%2e", "%2E", "%2f", "%2F", "%25", "%00", "?", "#", "&", "=", ":",
    "@", "\x00", "\r\n", "\n", " ", "v1", "memory", "tokens", "facts", "user:me", "pool:x",
    "'", '"', ";", "--", "{", "}", "$ne", "é", "\u202e", "\U0001f600",
]  # fmt: skip

HOSTILE_TEXT = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=8).map("".join),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40),
    st.uuids().map(str),
)


def hostile_corpus(seeds: dict[str, str]) -> list[str]:
    """Fixed attacks: traversal (some aimed at the caller's own data), encodings, injections."""
    return [
        "../../memory",
        "../../memory/",
        "..",
        ".",
        "../",
        "./",
        "..%2F..%2Fmemory",
        "%2e%2e/%2e%2e/memory",
        "%2E%2E",
        "..\\..\\memory",
        f"../../conversations/{SEEDED_CONVERSATION}",
        f"../notes/{seeds['note']}",
        f"../facts/{seeds['fact']}",
        f"../../../tokens/{seeds['token_prefix']}",
        f"{seeds['fact']}/../../../memory",
        "/v1/tokens",
        "//evil.example/v1/memory",
        "http://evil.example/",
        "?x=1#",
        "x?limit=1000&namespace=user:me",
        "#fragment",
        "\x00",
        "a\x00b",
        "%00",
        "x\r\nX-Evil: 1",
        "\r\n\r\nGET /v1/memory HTTP/1.1",
        "\n",
        " ",
        "x" * 100_000,
        "é\u202e\u200b\U0001f600 ñ 中文",
        '{"$ne": 1}',
        "' OR '1'='1",
        "'; DROP TABLE facts; --",
        "user:me",
        "pool:../../x",
        "*",
        "null",
        "0",
        "-1",
    ]


def string_arguments(tool: Tool) -> list[tuple[str, bool]]:
    """The tool's arguments that take a string, each with whether it takes a list of them."""
    found = []
    for name, schema in tool.input_schema.get("properties", {}).items():
        options = schema.get("anyOf", [schema])
        if any(option.get("type") == "string" for option in options):
            found.append((name, False))
        elif any(option.get("items", {}).get("type") == "string" for option in options):
            found.append((name, True))
    return found


def baseline(tool: Tool) -> dict[str, Any]:
    """Harmless values for the tool's other arguments: "x" for each required string and each
    free-form optional one (an unknown model fails fast); patterned optional ones are left out."""
    required = set(tool.input_schema.get("required", []))
    values: dict[str, Any] = {}
    for name, schema in tool.input_schema.get("properties", {}).items():
        strings = [o for o in schema.get("anyOf", [schema]) if o.get("type") == "string"]
        free = not any("pattern" in o or "format" in o for o in strings)
        if strings and (name in required or free):
            values[name] = "x"
    return values


def problem(tool: str, result: CallToolResult) -> str | None:
    """Why this result is not a valid result or a clean tool error, or None if it is."""
    if not result.is_error:
        return None if result.structured_content is not None else "no structured output"
    text = " ".join(c.text for c in result.content if isinstance(c, TextContent))
    prefix = f"Error executing tool {tool}: "
    if not text.startswith(prefix):
        return text
    message = text.removeprefix(prefix)
    if re.match(rf"\d+ validation errors? for {tool}Arguments\b", message):
        return None
    code = re.search(r"\(([a-z_]+)\)$", message)
    if code is None or code.group(1) in SERVER_FAULTS:
        return text
    return None


def server_faults(hub: LiveHub) -> float:
    """How many requests the hub has answered with a 5xx so far."""
    metrics = httpx.get(f"{hub.url}/metrics", timeout=30).text
    pattern = r'^iamine_http_requests_total\{[^}]*status="5\d\d"[^}]*\} (\S+)$'
    return sum(float(m.group(1)) for m in re.finditer(pattern, metrics, re.MULTILINE))


async def _new_user(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        user = await accounts.create_user(conn, "fuzzed")
        issued = await accounts.create_token(conn, user_id=user.id, scopes=("user",))
        return issued.token
    finally:
        await conn.close()


def seed(hub: LiveHub, token: str) -> dict[str, str]:
    """Facts, notes and a conversation of the user, made through the REST API."""
    asyncio.run(chat_through_mcp(hub, token, SEEDED_CONVERSATION))
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=hub.url, headers=headers, timeout=30) as api:
        fact = api.post("/v1/memory/facts", json={"text": "Fuzzed's boat is called Petrel."})
        api.post("/v1/memory/facts", json={"text": "Fuzzed lives in Oslo.", "key": "home_city"})
        note = api.post("/v1/memory/notes", json={"title": "Keys", "body": "Spare key: blue jar."})
        api.post("/v1/memory/notes", json={"body": "Standup is at nine."})
        tokens = api.get("/v1/tokens")
    assert fact.status_code == 201, fact.text
    assert note.status_code == 201, note.text
    return {
        "fact": fact.json()["id"],
        "note": note.json()["id"],
        "token_prefix": tokens.json()["data"][0]["prefix"],
    }


def snapshot(hub: LiveHub, token: str) -> dict[str, Any]:
    """What the user has: current facts, notes, conversations with their turns, tokens."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=hub.url, headers=headers, timeout=30) as api:
        export = api.get("/v1/memory/export")
        tokens = api.get("/v1/tokens")
    assert export.status_code == 200, export.text
    assert tokens.status_code == 200, tokens.text
    body = export.json()
    return {
        "facts": {f["id"]: (f["text"], f["valid_to"]) for f in body["facts"]},
        "notes": {n["id"]: (n["title"], n["body"]) for n in body["notes"]},
        "conversations": {c["id"]: c["turns"] for c in body["conversations"]},
        "tokens": {t["prefix"]: t["revoked_at"] for t in tokens.json()["data"]},
    }


@contextmanager
def mcp_session(hub: LiveHub, token: str) -> Iterator[tuple[BlockingPortal, Client]]:
    """An MCP client session over streamable HTTP, driven from this (synchronous) thread."""
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(http_client(hub, token, CALL_TIMEOUT_S)) as client,
    ):
        yield portal, client


async def _call(client: Client, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    with anyio.fail_after(CALL_TIMEOUT_S):
        return await client.call_tool(tool, arguments)


def fuzz_argument(
    portal: BlockingPortal, client: Client, tool: Tool, name: str, many: bool, corpus: list[str]
) -> list[str]:
    """The corpus then hypothesis's strings in one argument: what did not come back clean."""
    problems: list[str] = []

    def check(value: str) -> None:
        arguments = {**baseline(tool), name: [value] if many else value}
        result = portal.call(_call, client, tool.name, arguments)
        if (found := problem(tool.name, result)) is not None:
            problems.append(f"{tool.name}({name}={value!r:.80}): {found:.300}")

    for value in corpus:
        check(value)

    @fuzz_settings(EXAMPLES_PER_ARGUMENT)
    @given(HOSTILE_TEXT)
    def generated(value: str) -> None:
        check(value)

    generated()
    return problems


@dataclass(frozen=True)
class Fuzzed:
    """The fuzzed user: a token and the ids of some of its seeded data."""

    token: str
    seeds: dict[str, str]


@pytest.fixture(scope="module")
def fuzzed(live_hub: LiveHub) -> Fuzzed:
    """A user of its own for the module, with facts, notes and a conversation."""
    token = asyncio.run(_new_user(live_hub.database_url))
    return Fuzzed(token, seed(live_hub, token))


def test_every_tool_answers_hostile_strings_cleanly_and_harms_no_data(
    live_hub: LiveHub, fuzzed: Fuzzed
) -> None:
    token, seeds = fuzzed.token, fuzzed.seeds
    before = snapshot(live_hub, token)
    faults_before = server_faults(live_hub)
    corpus = hostile_corpus(seeds)
    with mcp_session(live_hub, token) as (portal, client):
        tools = portal.call(client.list_tools).tools
        problems = [
            found
            for tool in tools
            for name, many in string_arguments(tool)
            for found in fuzz_argument(portal, client, tool, name, many, corpus)
        ]
        still = portal.call(_call, client, "pool_status", {})
    after = snapshot(live_hub, token)
    assert not problems, "\n".join(problems)
    assert not still.is_error
    assert {t.name for t in tools} >= {"forget", "note_get", "conversation_get", "chat"}
    for kind in ("facts", "notes", "conversations", "tokens"):
        lost = {k: v for k, v in before[kind].items() if after[kind].get(k) != v}
        assert not lost, f"{kind} lost or changed by the fuzz: {lost}"
    assert server_faults(live_hub) == faults_before


async def _read(client: Client, uri: str) -> str | None:
    """None if the resource was read, else the JSON-RPC error that is not the caller's fault."""
    try:
        with anyio.fail_after(CALL_TIMEOUT_S):
            await client.read_resource(uri)
    except MCPError as exc:
        return None if exc.error.code == INVALID_PARAMS else f"{exc.error.code} {exc.message}"
    return None


def test_every_resource_template_answers_hostile_values_cleanly(
    live_hub: LiveHub, fuzzed: Fuzzed
) -> None:
    token, seeds = fuzzed.token, fuzzed.seeds
    before = snapshot(live_hub, token)
    faults_before = server_faults(live_hub)
    corpus = [v for v in hostile_corpus(seeds) if len(v) < 2000]
    problems = []
    with mcp_session(live_hub, token) as (portal, client):
        templates = portal.call(client.list_resource_templates).resource_templates
        for template in templates:
            parsed = UriTemplate.parse(template.uri_template)
            names = parsed.variable_names
            for name in names:
                for value in corpus:
                    uri = parsed.expand({**{n: "user:me" for n in names}, name: value})
                    if (found := portal.call(_read, client, uri)) is not None:
                        problems.append(f"{uri[:120]!r}: {found[:300]}")
    after = snapshot(live_hub, token)
    assert {t.uri_template for t in templates} >= {"conversation://{conversation_id}"}
    assert not problems, "\n".join(problems)
    assert after == before
    assert server_faults(live_hub) == faults_before
