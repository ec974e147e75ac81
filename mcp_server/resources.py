"""The MCP resource templates: conversations (JSON and plain text), facts and notes.

Each read calls the hub's API with the caller's token, like the tools. Ids in a URI are parsed
in the function body, not by its signature, so a bad one is the caller's error (invalid params)
rather than a crash; a hub that failed is an internal error. There are no static resources: the
SDK gives a static resource no request context, so it could not act with the caller's token.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from mcp_server.backend import BackendError, HubBackend
from mcp_server.ids import InvalidId, conversation_path, note_path, parse_namespace
from mcp_server.schemas import FactList

BackendFor = Callable[[Context[Any, Any]], HubBackend]


def resource_error(exc: BackendError | InvalidId) -> ResourceError:
    """A hub error or a bad id as a resource error: the caller's mistake (invalid params) unless
    the hub itself failed."""
    message = f"{exc.message} ({exc.code})"
    if isinstance(exc, BackendError) and exc.status >= 500:
        return ResourceError(message)
    return ResourceNotFoundError(message)


def transcript(conversation: dict[str, Any]) -> str:
    """A conversation as plain text: one ``role: content`` paragraph per message, in order."""
    lines = [f"Conversation {conversation['id']} ({conversation['exchanges']} exchanges)"]
    for turn in conversation["turns"]:
        heading = "summary" if turn["kind"] != "turn" else None
        for message in turn["messages"] or []:
            role = heading or str(message.get("role", "?"))
            lines.append(f"{role}: {_text(message.get('content'))}")
    if conversation.get("unreadable_turns"):
        lines.append(f"({conversation['unreadable_turns']} turns sealed under a lost key)")
    return "\n\n".join(lines)


def _text(content: Any) -> str:
    """A message's content as text (the text parts of a multi-part content)."""
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


async def read_conversation(backend: HubBackend, conversation_id: str) -> dict[str, Any]:
    """One of the caller's conversations, or a resource error."""
    try:
        body: dict[str, Any] = await backend.get(conversation_path(conversation_id))
    except (BackendError, InvalidId) as exc:
        raise resource_error(exc) from exc
    return body


def register_resources(mcp: MCPServer, backend_for: BackendFor) -> None:
    """Add the resources and resource templates to ``mcp``."""

    @mcp.resource(
        "conversation://{conversation_id}",
        description="One of the user's conversations, decrypted, as JSON.",
        mime_type="application/json",
    )
    async def conversation_resource(conversation_id: str, ctx: Context[Any, Any]) -> str:
        return json.dumps(await read_conversation(backend_for(ctx), conversation_id))

    @mcp.resource(
        "conversation://{conversation_id}/transcript",
        description="One of the user's conversations, decrypted, as plain text.",
        mime_type="text/plain",
    )
    async def transcript_resource(conversation_id: str, ctx: Context[Any, Any]) -> str:
        return transcript(await read_conversation(backend_for(ctx), conversation_id))

    @mcp.resource(
        "memory://facts{?query}",
        description="The user's current facts (newest first, or the best for `query`), JSON.",
        mime_type="application/json",
    )
    async def facts_resource(ctx: Context[Any, Any], query: str = "") -> str:
        try:
            body = await backend_for(ctx).get("/v1/memory/facts", query=query or None, k=100)
        except BackendError as exc:
            raise resource_error(exc) from exc
        return json.dumps(FactList(facts=body["data"]).model_dump())

    @mcp.resource(
        "notes://{namespace}/{note_id}",
        description="One note of a namespace the user can read, JSON.",
        mime_type="application/json",
    )
    async def note_resource(namespace: str, note_id: str, ctx: Context[Any, Any]) -> str:
        try:
            namespace = parse_namespace(namespace)
            body = await backend_for(ctx).get(note_path(note_id))
        except (BackendError, InvalidId) as exc:
            raise resource_error(exc) from exc
        if body.get("namespace") != namespace and not (
            namespace == "user:me" and str(body.get("namespace", "")).startswith("user:")
        ):
            raise ResourceNotFoundError(f"Note {note_id} is not in {namespace}. (not_found)")
        return json.dumps(body)
