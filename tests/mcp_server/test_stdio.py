"""`iamine mcp`: the MCP server on stdio, as a desktop client spawns it, against a live hub."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.types import ResourceTemplateReference

from hub.client.profile import Profile, save_profile
from tests.hub.conftest import LiveHub
from tests.mcp_server.test_protocol import Logs

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

COMMAND = [sys.executable, "-m", "hub", "mcp"]


def clean_env(config_home: Path, **extra: str) -> dict[str, str]:
    """This environment without IAMINE_* variables, with its own config dir (no profile)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IAMINE_")}
    return env | {"XDG_CONFIG_HOME": str(config_home)} | extra


@asynccontextmanager
async def stdio_session(env: dict[str, str], *args: str, **options: Any) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=COMMAND[0], args=[*COMMAND[1:], *args], env=env)
    async with Client(stdio_client(params), **options) as client:
        yield client


async def test_iamine_mcp_serves_the_tools_logs_and_completions_on_stdio(
    live_hub: LiveHub, tmp_path: Path
) -> None:
    env = clean_env(tmp_path, IAMINE_TOKEN=live_hub.user_token)
    logs = Logs()
    async with stdio_session(env, "--hub", live_hub.url, mode="legacy", logging_callback=logs) as c:
        tools = {tool.name for tool in (await c.list_tools()).tools}
        await c.set_logging_level("info")
        stored = await c.call_tool("remember", {"text": "Alice's stdio test fact."})
        await logs.wait_for(lambda e: "remember: fact" in str(e.data))
        spaces = await c.complete(
            ResourceTemplateReference(uri="notes://{namespace}/{note_id}"),
            {"name": "namespace", "value": "user"},
        )
    assert {"chat", "remember", "recall", "memory_export", "subagent_run"} <= tools
    assert not stored.is_error, stored.content
    assert spaces.completion.values == ["user:me"]
    assert "stdio test fact" not in logs.text()


async def test_iamine_mcp_falls_back_to_the_login_profile(
    live_hub: LiveHub, tmp_path: Path
) -> None:
    save_profile(Profile(live_hub.url, live_hub.user_token), tmp_path / "iamine" / "profile.json")
    async with stdio_session(clean_env(tmp_path)) as client:
        status = await client.call_tool("pool_status", {})
    assert not status.is_error, status.content


async def test_a_bad_token_makes_tool_errors_and_the_session_survives(
    live_hub: LiveHub, tmp_path: Path
) -> None:
    env = clean_env(tmp_path, IAMINE_TOKEN="iam_nope_nope")
    async with stdio_session(env, "--hub", live_hub.url) as client:
        refused = await client.call_tool("pool_status", {})
        listed = await client.list_tools()
    assert refused.is_error
    assert "invalid_api_key" in str(refused.content[0])
    assert listed.tools


def test_iamine_mcp_without_a_token_or_profile_says_so_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        COMMAND, env=clean_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "not logged in" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
