"""Ready configurations of agent clients for one hub: OpenCode, Cursor, aider, Claude, Continue
and the OpenAI SDK, plus the Markdown guide that gathers them (``GET /v1/opencode-md``).

Pure functions of the hub's base URL and the models it serves now. No file ever holds a token:
each client reads it from the ``IAMINE_TOKEN`` environment variable, in its own syntax.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from inference.placement import ModelSummary

TOKEN_ENV = "IAMINE_TOKEN"  # noqa: S105 (the name of the variable, not a token)
PROVIDER_ID = "iamine"
MAX_OUTPUT_TOKENS = 4096


@dataclass(frozen=True)
class ConfigFile:
    """One file a client reads: where it goes (relative to a project folder) and its text."""

    path: str
    content: str
    format: str

    def as_dict(self) -> dict[str, str]:
        """The file as ``/v1/client-config`` shows it."""
        return {"path": self.path, "content": self.content, "format": self.format}


@dataclass(frozen=True)
class ClientConfig:
    """What one client needs to use this hub: its files and the steps no file can do."""

    client: str
    title: str
    files: list[ConfigFile]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The configuration as ``/v1/client-config/{client}`` returns it."""
        return {
            "object": "client.config",
            "client": self.client,
            "title": self.title,
            "files": [f.as_dict() for f in self.files],
            "notes": self.notes,
        }


def output_tokens(context: int) -> int:
    """The answer budget announced to clients: half the context, at most 4096.

    A llama.cpp worker's context holds the prompt and the answer together, so a client told the
    whole context as its output limit would leave no room for the prompt.
    """
    return max(1, min(MAX_OUTPUT_TOKENS, context // 2))


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def _yaml_scalar(value: str | int | bool) -> str:
    """A YAML scalar: JSON's quoted strings are valid YAML double-quoted strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else json.dumps(value, ensure_ascii=False)


def opencode(base: str, models: Sequence[ModelSummary]) -> ClientConfig:
    """``opencode.json``: a provider on ``@ai-sdk/openai-compatible`` and the remote MCP server."""
    provider = {
        "npm": "@ai-sdk/openai-compatible",
        "name": "iamine pool",
        "options": {"baseURL": f"{base}/v1", "apiKey": f"{{env:{TOKEN_ENV}}}"},
        "models": {
            m.id: {
                "name": m.id,
                "tool_call": m.supports_tools,
                "limit": {"context": m.context_size, "output": output_tokens(m.context_size)},
            }
            for m in models
        },
    }
    config: dict[str, Any] = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {PROVIDER_ID: provider},
        "mcp": {
            PROVIDER_ID: {
                "type": "remote",
                "url": f"{base}/mcp",
                "headers": {"Authorization": f"Bearer {{env:{TOKEN_ENV}}}"},
            }
        },
    }
    if models:
        config["model"] = f"{PROVIDER_ID}/{models[0].id}"
    return ClientConfig(
        "opencode",
        "OpenCode",
        [ConfigFile("opencode.json", _json(config), "json")],
        [
            f"Put `opencode.json` at the root of your project (or merge it into "
            f"`~/.config/opencode/opencode.json`); OpenCode reads the token from `{TOKEN_ENV}`.",
            "Pick a pool model with `/models` (they are listed as `iamine/<model>`).",
        ],
    )


def cursor(base: str, models: Sequence[ModelSummary]) -> ClientConfig:
    """``.cursor/mcp.json`` for the memory tools; the chat models need Cursor's settings."""
    config = {
        "mcpServers": {
            PROVIDER_ID: {
                "url": f"{base}/mcp",
                "headers": {"Authorization": f"Bearer ${{env:{TOKEN_ENV}}}"},
            }
        }
    }
    names = ", ".join(f"`{m.id}`" for m in models) or "(none served right now)"
    return ClientConfig(
        "cursor",
        "Cursor",
        [ConfigFile(".cursor/mcp.json", _json(config), "json")],
        [
            f"Start Cursor from a shell where `{TOKEN_ENV}` is set: `.cursor/mcp.json` reads it.",
            f"For chat, open Cursor Settings → Models, turn on *Override OpenAI Base URL* with "
            f"`{base}/v1`, paste your iamine token as the OpenAI API key, and add the model "
            f"names: {names}.",
        ],
    )


def aider(base: str, models: Sequence[ModelSummary]) -> ClientConfig:
    """``.aider.conf.yml`` (API base, model) and ``.aider.model.metadata.json`` (context sizes)."""
    lines = [
        "# aider on the iamine pool; the key comes from OPENAI_API_KEY (your iamine token).",
        f"openai-api-base: {_yaml_scalar(f'{base}/v1')}",
    ]
    if models:
        lines.append(f"model: {_yaml_scalar(f'openai/{models[0].id}')}")
    metadata = {
        f"openai/{m.id}": {
            "max_tokens": output_tokens(m.context_size),
            "max_input_tokens": m.context_size,
            "max_output_tokens": output_tokens(m.context_size),
            "input_cost_per_token": 0,
            "output_cost_per_token": 0,
            "litellm_provider": "openai",
            "mode": "chat",
            "supports_function_calling": m.supports_tools,
        }
        for m in models
    }
    return ClientConfig(
        "aider",
        "aider",
        [
            ConfigFile(".aider.conf.yml", "\n".join(lines) + "\n", "yaml"),
            ConfigFile(".aider.model.metadata.json", _json(metadata), "json"),
        ],
        [
            f'aider reads the key from `OPENAI_API_KEY`: run `OPENAI_API_KEY="${TOKEN_ENV}" '
            f"aider` in the folder holding both files (or your git root).",
            "Other pool models: `aider --model openai/<model>`.",
        ],
    )


def claude(base: str, models: Sequence[ModelSummary]) -> ClientConfig:
    """``.mcp.json`` for Claude Code (HTTP); Claude Desktop runs ``iamine mcp`` on stdio."""
    code = {
        "mcpServers": {
            PROVIDER_ID: {
                "type": "http",
                "url": f"{base}/mcp",
                "headers": {"Authorization": f"Bearer ${{{TOKEN_ENV}}}"},
            }
        }
    }
    desktop = {
        "mcpServers": {
            PROVIDER_ID: {
                "command": "iamine",
                "args": ["mcp", "--hub", base],
                "env": {TOKEN_ENV: "<your iamine token>"},
            }
        }
    }
    return ClientConfig(
        "claude",
        "Claude Code and Claude Desktop (MCP)",
        [ConfigFile(".mcp.json", _json(code), "json")],
        [
            f"Claude Code reads `.mcp.json` at the project root and expands `${{{TOKEN_ENV}}}` "
            f"from its environment.",
            "Claude Desktop starts MCP servers itself, without your shell's environment: add "
            "this to `claude_desktop_config.json` with the full path of `iamine` and your token "
            "in place of the placeholder:\n\n```json\n" + _json(desktop) + "```",
        ],
    )


def continue_dev(base: str, models: Sequence[ModelSummary]) -> ClientConfig:
    """A Continue ``config.yaml`` with one model entry per pool model."""
    lines = ["name: iamine", "version: 0.0.1", "schema: v1", "models:" if models else "models: []"]
    for m in models:
        lines += [
            f"  - name: {_yaml_scalar(f'iamine {m.id}')}",
            "    provider: openai",
            f"    model: {_yaml_scalar(m.id)}",
            f"    apiBase: {_yaml_scalar(f'{base}/v1')}",
            f"    apiKey: {_yaml_scalar(f'${{{{ secrets.{TOKEN_ENV} }}}}')}",
            "    roles: [chat, edit, apply]",
            "    defaultCompletionOptions:",
            f"      contextLength: {m.context_size}",
            f"      maxTokens: {output_tokens(m.context_size)}",
        ]
        if m.supports_tools:
            lines.append("    capabilities: [tool_use]")
    return ClientConfig(
        "continue",
        "Continue",
        [ConfigFile(".continue/config.yaml", "\n".join(lines) + "\n", "yaml")],
        [
            "Continue reads `~/.continue/config.yaml`: `iamine connect continue --dir ~` "
            "writes it there.",
            f"Put `{TOKEN_ENV}=<your token>` in `~/.continue/.env`: Continue resolves "
            f"`${{{{ secrets.{TOKEN_ENV} }}}}` from it.",
        ],
    )


def openai_sdk(base: str, models: Sequence[ModelSummary]) -> ClientConfig:
    """A Python snippet on the official OpenAI SDK."""
    model = models[0].id if models else "<model>"
    code = (
        '"""Ask the iamine pool through the OpenAI SDK; the token comes from IAMINE_TOKEN."""\n'
        "\n"
        "import os\n"
        "\n"
        "from openai import OpenAI\n"
        "\n"
        f'client = OpenAI(base_url="{base}/v1", api_key=os.environ["{TOKEN_ENV}"])\n'
        "reply = client.chat.completions.create(\n"
        f'    model="{model}", messages=[{{"role": "user", "content": "Hello!"}}]\n'
        ")\n"
        "print(reply.choices[0].message.content)\n"
    )
    return ClientConfig(
        "openai",
        "OpenAI SDK (Python)",
        [ConfigFile("iamine_openai.py", code, "python")],
        ["Any OpenAI SDK works the same way: base URL `" + base + "/v1`, the token as API key."],
    )


BUILDERS: dict[str, Callable[[str, Sequence[ModelSummary]], ClientConfig]] = {
    "opencode": opencode,
    "cursor": cursor,
    "aider": aider,
    "claude": claude,
    "continue": continue_dev,
    "openai": openai_sdk,
}


def client_config(client: str, base: str, models: Sequence[ModelSummary]) -> ClientConfig | None:
    """The configuration of one client (``None`` for a client this hub has none for)."""
    builder = BUILDERS.get(client)
    return builder(base.rstrip("/"), models) if builder else None


def guide_markdown(base: str, models: Sequence[ModelSummary]) -> str:
    """The Markdown guide for agent clients: this hub, its models, every client's setup."""
    base = base.rstrip("/")
    out = [
        "# Using this iamine hub from agent clients",
        "",
        f"- OpenAI-compatible API: `{base}/v1`",
        f"- MCP server (streamable HTTP, memory tools): `{base}/mcp`",
        f"- Authentication: `Authorization: Bearer <token>`. Every configuration below reads "
        f"the token from the `{TOKEN_ENV}` environment variable; none contains it.",
        "",
        "```bash",
        f"export {TOKEN_ENV}=iam_…   # your token (or: iamine login --hub {base})",
        "```",
        "",
        "## Models served now",
        "",
    ]
    if models:
        out += ["| model | context (tokens) | tools | workers |", "| --- | --- | --- | --- |"]
        out += [
            f"| `{m.id}` | {m.context_size} | {'yes' if m.supports_tools else 'no'} | {m.workers} |"
            for m in models
        ]
    else:
        out.append("No worker is connected right now; the configurations list no model yet.")
    for name in BUILDERS:
        config = client_config(name, base, models)
        assert config is not None
        out += ["", f"## {config.title}", ""]
        out.append(f"`iamine connect {name}` writes these files (`--print` shows them).")
        for file in config.files:
            body = file.content.rstrip("\n")
            out += ["", f"`{file.path}`:", "", f"```{file.format}", body, "```"]
        out += ["", *(f"- {note}" for note in config.notes)]
    return "\n".join(out) + "\n"
