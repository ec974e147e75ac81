"""``GET /v1/opencode-md`` and ``GET /v1/client-config/{client}`` on a live hub.

A hand-driven worker makes a model appear; every configuration must parse with its format's
loader, carry the model's context size, and never contain the caller's token.
"""

from __future__ import annotations

import ast
import json
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML, from uvicorn[standard]

from hub.client.configs import BUILDERS, TOKEN_ENV, client_config, guide_markdown
from tests.hub.conftest import LiveHub
from tests.hub.raw_worker import raw_worker

pytestmark = pytest.mark.anyio

MODEL = "cfg-model"

# The keys opencode's config schema accepts at the top level, and for a remote MCP server.
OPENCODE_TOP_LEVEL = {
    "$schema", "theme", "keybinds", "logLevel", "tui", "server", "command", "watcher", "plugin",
    "snapshot", "share", "autoshare", "autoupdate", "disabled_providers", "enabled_providers",
    "model", "small_model", "default_agent", "username", "mode", "agent", "provider", "mcp",
    "formatter", "lsp", "instructions", "layout", "permission", "tools", "enterprise",
    "compaction", "experimental",
}  # fmt: skip
OPENCODE_MCP_REMOTE = {"type", "url", "enabled", "headers", "oauth", "timeout"}


def user(hub: LiveHub) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.user_token}"}


async def get(hub: LiveHub, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.get(f"{hub.url}{path}", headers=user(hub) if headers is None else headers)


def parse(file: dict[str, str]) -> Any:
    """Load a configuration file with its format's own parser (a failure raises)."""
    loaders = {"json": json.loads, "yaml": yaml.safe_load, "python": ast.parse}
    return loaders[file["format"]](file["content"])


async def test_client_routes_need_a_user_token(live_hub: LiveHub) -> None:
    for path in ("/v1/opencode-md", "/v1/client-config/opencode"):
        missing = await get(live_hub, path, headers={})
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "missing_api_key"
        admin = await get(live_hub, path, {"Authorization": f"Bearer {live_hub.admin_token}"})
        assert admin.status_code == 403


async def test_opencode_md_names_this_hub_its_models_and_every_client(live_hub: LiveHub) -> None:
    async with raw_worker(live_hub, MODEL, tools=True):
        response = await get(live_hub, "/v1/opencode-md")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/markdown")
    text = response.text
    assert f"`{live_hub.url}/v1`" in text
    assert f"`{live_hub.url}/mcp`" in text
    assert f"| `{MODEL}` | 2048 | yes |" in text
    for name in BUILDERS:
        assert f"iamine connect {name}" in text
    assert '"npm": "@ai-sdk/openai-compatible"' in text
    assert live_hub.user_token not in text


async def test_every_client_config_parses_and_holds_no_token(live_hub: LiveHub) -> None:
    async with raw_worker(live_hub, MODEL, tools=True):
        answers = {name: await get(live_hub, f"/v1/client-config/{name}") for name in BUILDERS}
    for name, response in answers.items():
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["client"] == name
        assert body["files"] and isinstance(body["notes"], list)
        for file in body["files"]:
            assert not file["path"].startswith("/") and ".." not in file["path"]
            assert parse(file) is not None
        assert live_hub.user_token not in response.text
        assert TOKEN_ENV in response.text


async def test_opencode_json_has_the_shape_opencode_loads(live_hub: LiveHub) -> None:
    async with raw_worker(live_hub, MODEL, tools=True):
        body = (await get(live_hub, "/v1/client-config/opencode")).json()
    (file,) = body["files"]
    assert file["path"] == "opencode.json"
    config = json.loads(file["content"])
    assert set(config) <= OPENCODE_TOP_LEVEL
    provider = config["provider"]["iamine"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"] == {"baseURL": f"{live_hub.url}/v1", "apiKey": "{env:IAMINE_TOKEN}"}
    model = provider["models"][MODEL]
    assert model["tool_call"] is True
    assert model["limit"]["context"] == 2048
    assert 0 < model["limit"]["output"] < 2048
    assert config["model"] == f"iamine/{MODEL}"
    mcp = config["mcp"]["iamine"]
    assert set(mcp) <= OPENCODE_MCP_REMOTE
    assert mcp["type"] == "remote"
    assert mcp["url"] == f"{live_hub.url}/mcp"
    assert mcp["headers"] == {"Authorization": "Bearer {env:IAMINE_TOKEN}"}


async def test_aider_files_name_the_api_base_the_model_and_its_context(live_hub: LiveHub) -> None:
    async with raw_worker(live_hub, MODEL):
        body = (await get(live_hub, "/v1/client-config/aider")).json()
    files = {f["path"]: parse(f) for f in body["files"]}
    conf = files[".aider.conf.yml"]
    assert conf["openai-api-base"] == f"{live_hub.url}/v1"
    assert conf["model"] == f"openai/{MODEL}"
    metadata = files[".aider.model.metadata.json"][f"openai/{MODEL}"]
    assert metadata["max_input_tokens"] == 2048
    assert metadata["litellm_provider"] == "openai"
    assert metadata["supports_function_calling"] is False


async def test_mcp_clients_point_at_the_hub_mcp_with_an_env_token(live_hub: LiveHub) -> None:
    async with raw_worker(live_hub, MODEL):
        cursor = (await get(live_hub, "/v1/client-config/cursor")).json()
        claude = (await get(live_hub, "/v1/client-config/claude")).json()
        cont = (await get(live_hub, "/v1/client-config/continue")).json()
    cursor_server = json.loads(cursor["files"][0]["content"])["mcpServers"]["iamine"]
    assert cursor_server["url"] == f"{live_hub.url}/mcp"
    assert cursor_server["headers"]["Authorization"] == "Bearer ${env:IAMINE_TOKEN}"
    claude_server = json.loads(claude["files"][0]["content"])["mcpServers"]["iamine"]
    assert claude_server == {
        "type": "http",
        "url": f"{live_hub.url}/mcp",
        "headers": {"Authorization": "Bearer ${IAMINE_TOKEN}"},
    }
    continue_config = yaml.safe_load(cont["files"][0]["content"])
    assert continue_config["schema"] == "v1"
    entry = next(m for m in continue_config["models"] if m["model"] == MODEL)
    assert entry["provider"] == "openai"
    assert entry["apiBase"] == f"{live_hub.url}/v1"
    assert entry["apiKey"] == "${{ secrets.IAMINE_TOKEN }}"
    assert entry["defaultCompletionOptions"]["contextLength"] == 2048


async def test_unknown_client_is_404_listing_the_known_ones(live_hub: LiveHub) -> None:
    response = await get(live_hub, "/v1/client-config/emacs")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert error["param"] == "client"
    assert all(name in error["message"] for name in BUILDERS)


def test_configs_without_any_model_still_parse() -> None:
    for name in BUILDERS:
        config = client_config(name, "http://hub.example:8420/", [])
        assert config is not None
        assert all(parse(file.as_dict()) is not None for file in config.files)
    opencode = json.loads(BUILDERS["opencode"]("http://hub.example:8420", []).files[0].content)
    assert opencode["provider"]["iamine"]["models"] == {}
    assert "model" not in opencode
    assert "No worker is connected" in guide_markdown("http://hub.example:8420", [])
