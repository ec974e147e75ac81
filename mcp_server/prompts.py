"""The MCP prompts: one per built-in role, a role chosen by name, and a past conversation.

``subagent`` and ``resume_conversation`` read the hub with the caller's token (the pool's roles
in force, the caller's conversation); a name or id the caller cannot use is an invalid-params
error, like the completions that offer them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from mcp import MCPError
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS
from pydantic import Field

from inference.roles import BUILTIN_ROLES, Role
from mcp_server.backend import BackendError, HubBackend
from mcp_server.ids import InvalidId, conversation_path
from mcp_server.resources import transcript

BackendFor = Callable[[Context[Any, Any]], HubBackend]


def _prompt_error(exc: BackendError | InvalidId) -> MCPError:
    """The caller's mistake (invalid params) unless the hub itself failed."""
    failed = isinstance(exc, BackendError) and exc.status >= 500
    return MCPError(INTERNAL_ERROR if failed else INVALID_PARAMS, f"{exc.message} ({exc.code})")


def role_brief(system_prompt: str, task: str) -> str:
    """The text that briefs an agent as a role: the role's system prompt, then the task."""
    return f"{system_prompt}\n\nTask:\n{task}"


def _add_role_prompt(mcp: MCPServer, role: Role) -> None:
    """A prompt that briefs an agent as this role (the same system prompt the pool uses)."""

    def brief(task: str) -> str:
        return role_brief(role.system_prompt, task)

    mcp.prompt(name=role.name, description=role.description or f"The {role.name} role.")(brief)


def register_prompts(mcp: MCPServer, backend_for: BackendFor) -> None:
    """Add the prompts to ``mcp``."""
    for role in BUILTIN_ROLES.values():
        _add_role_prompt(mcp, role)

    @mcp.prompt(
        name="subagent",
        description="Brief an agent as any role in force on the pool (built in or the pool's).",
    )
    async def subagent(
        role: Annotated[str, Field(description="A role name, as `subagent_run` takes.")],
        task: Annotated[str, Field(description="The task for the role.")],
        ctx: Context[Any, Any],
    ) -> str:
        try:
            roles = (await backend_for(ctx).get("/v1/agents/roles"))["data"]
        except BackendError as exc:
            raise _prompt_error(exc) from exc
        for known in roles:
            if known["name"] == role:
                return role_brief(str(known["system_prompt"]), task)
        raise MCPError(INVALID_PARAMS, f"No role named {role!r} on this pool.", {"role": role})

    @mcp.prompt(
        name="resume_conversation",
        description="Pick up one of the user's past conversations: its transcript to go on from.",
    )
    async def resume_conversation(
        conversation_id: Annotated[str, Field(description="A conversation id of the user.")],
        ctx: Context[Any, Any],
    ) -> str:
        try:
            body = await backend_for(ctx).get(conversation_path(conversation_id))
        except (BackendError, InvalidId) as exc:
            raise _prompt_error(exc) from exc
        return (
            "Here is an earlier conversation of mine. Read it, then continue it with me.\n\n"
            + transcript(body)
        )
