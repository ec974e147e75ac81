"""Sub-agent roles through MCP: the subagent_run tool on a real worker, and one prompt per role."""

from __future__ import annotations

import pytest

from inference.roles import BUILTIN_ROLES
from tests.hub.conftest import LiveHub
from tests.mcp_server.test_server import http_client

pytestmark = pytest.mark.anyio


async def test_there_is_one_prompt_per_role_carrying_its_system_prompt(live_hub: LiveHub) -> None:
    async with http_client(live_hub, live_hub.user_token) as client:
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        coder = await client.get_prompt("coder", {"task": "reverse a list"})
    assert set(BUILTIN_ROLES) <= prompts
    text = coder.messages[0].content.text  # type: ignore[union-attr]
    assert BUILTIN_ROLES["coder"].system_prompt in text
    assert text.endswith("reverse a list")


@pytest.mark.usefixtures("real_worker")
async def test_subagent_run_answers_as_the_role(live_hub: LiveHub) -> None:
    async with http_client(live_hub, live_hub.user_token) as client:
        result = await client.call_tool(
            "subagent_run", {"role": "scout", "input": "List two colours.", "max_tokens": 8}
        )
        unknown = await client.call_tool("subagent_run", {"role": "wizard", "input": "x"})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    assert result.structured_content["role"] == "scout"
    assert result.structured_content["content"]
    assert result.structured_content["completion_tokens"] <= 8
    assert unknown.is_error
