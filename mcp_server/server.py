"""The iamine MCP server: memory, conversations and pool models as MCP tools, resources, prompts.

Built on the official SDK's ``MCPServer``. Each tool resolves the caller's token (the HTTP
request's bearer token, or the fixed token of ``iamine mcp`` on stdio) and calls the hub's HTTP
API with it through :class:`~mcp_server.backend.HubBackend`, so a tool sees exactly what the API
shows that token. Failures come back as MCP tool errors (``is_error``), never a broken session.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from mcp_server.backend import BackendError, HubBackend
from mcp_server.schemas import (
    ChatAnswer,
    ConversationDetail,
    ConversationList,
    ConversationSummary,
    ModelEntry,
    ModelList,
    PoolStatus,
)

INSTRUCTIONS = (
    "iamine hub: a cooperative AI pool with four-tier memory. Use `chat` to ask a pool model, "
    "`conversation_list` / `conversation_get` to read past conversations, `memory_export` for "
    "everything stored about the user, and `models_list` / `pool_status` to see what the pool "
    "can serve."
)

TokenSource = Callable[[Context[Any, Any]], str]


def bearer_from_headers(ctx: Context[Any, Any]) -> str:
    """The caller's token from the HTTP request (the hub already checked it at the door)."""
    headers = ctx.headers or {}
    value = headers.get("authorization") or headers.get("Authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ToolError("This MCP session has no bearer token.")
    return token.strip()


class Tools:
    """The tool implementations, bound to one HTTP client and a way to find the caller's token."""

    def __init__(self, client: httpx.AsyncClient, token_source: TokenSource) -> None:
        self._client = client
        self._token_source = token_source

    def backend(self, ctx: Context[Any, Any]) -> HubBackend:
        """A backend acting with the caller's token."""
        return HubBackend(self._client, self._token_source(ctx))


def _tool_error(exc: BackendError) -> ToolError:
    return ToolError(f"{exc.message} ({exc.code})")


def build_server(client: httpx.AsyncClient, token_source: TokenSource) -> MCPServer:
    """Create the MCP server whose tools call the hub through ``client``."""
    mcp = MCPServer(name="iamine", instructions=INSTRUCTIONS, version="0.1.0")
    tools = Tools(client, token_source)
    _register_pool_tools(mcp, tools)
    _register_conversation_tools(mcp, tools)
    return mcp


def _register_pool_tools(mcp: MCPServer, tools: Tools) -> None:
    @mcp.tool()
    async def models_list(ctx: Context[Any, Any]) -> ModelList:
        """List the models the pool can serve right now, with how many workers serve each."""
        try:
            body = await tools.backend(ctx).get("/v1/models")
        except BackendError as exc:
            raise _tool_error(exc) from exc
        return ModelList(models=[ModelEntry.of(m) for m in body["data"]])

    @mcp.tool()
    async def pool_status(ctx: Context[Any, Any]) -> PoolStatus:
        """Show the pool's state: connected workers, free slots, queue depth, models served."""
        try:
            body = await tools.backend(ctx).get("/v1/pool/status")
        except BackendError as exc:
            raise _tool_error(exc) from exc
        return PoolStatus.model_validate(body)

    @mcp.tool()
    async def chat(
        ctx: Context[Any, Any],
        message: Annotated[str, Field(min_length=1, description="What to ask the model.")],
        model: Annotated[
            str | None, Field(description="Model id from models_list; default: first served.")
        ] = None,
        system: Annotated[str | None, Field(description="Optional system prompt.")] = None,
        conversation_id: Annotated[
            str | None, Field(description="Continue a conversation (recorded in memory).")
        ] = None,
        max_tokens: Annotated[int, Field(gt=0, le=4096, description="Answer length cap.")] = 256,
    ) -> ChatAnswer:
        """Ask a pool model one question and get its whole answer (written to memory like any
        API chat). Use it to delegate a sub-task to a cheaper or different model."""
        backend = tools.backend(ctx)
        try:
            if model is None:
                served = (await backend.get("/v1/models"))["data"]
                if not served:
                    raise ToolError("No model is served by the pool right now.")
                model = str(served[0]["id"])
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": message})
            headers = {"X-Conversation-Id": conversation_id} if conversation_id else None
            body, response_headers = await backend.post_with_headers(
                "/v1/chat/completions",
                {"model": model, "messages": messages, "max_tokens": max_tokens},
                headers=headers,
            )
        except BackendError as exc:
            raise _tool_error(exc) from exc
        return ChatAnswer.of(body, response_headers)


def _register_conversation_tools(mcp: MCPServer, tools: Tools) -> None:
    @mcp.tool()
    async def conversation_list(
        ctx: Context[Any, Any],
        limit: Annotated[int, Field(ge=1, le=1000, description="How many, newest first.")] = 20,
    ) -> ConversationList:
        """List the user's conversations (ids, times, sizes), most recently active first."""
        try:
            body = await tools.backend(ctx).get("/v1/conversations", limit=limit)
        except BackendError as exc:
            raise _tool_error(exc) from exc
        return ConversationList(
            conversations=[ConversationSummary.model_validate(c) for c in body["data"]]
        )

    @mcp.tool()
    async def conversation_get(
        ctx: Context[Any, Any],
        conversation_id: Annotated[str, Field(min_length=1, description="Id from the list.")],
    ) -> ConversationDetail:
        """Read one of the user's conversations, decrypted: its turns and summaries."""
        try:
            body = await tools.backend(ctx).get(f"/v1/conversations/{conversation_id}")
        except BackendError as exc:
            raise _tool_error(exc) from exc
        return ConversationDetail.model_validate(body)

    @mcp.tool()
    async def memory_export(ctx: Context[Any, Any]) -> dict[str, Any]:
        """Export everything the pool stores for the user, decrypted, as one JSON document."""
        try:
            body: dict[str, Any] = await tools.backend(ctx).get("/v1/memory/export")
        except BackendError as exc:
            raise _tool_error(exc) from exc
        return body

    @mcp.resource(
        "conversation://{conversation_id}",
        description="One of the user's conversations, decrypted, as JSON.",
        mime_type="application/json",
    )
    async def conversation_resource(conversation_id: str, ctx: Context[Any, Any]) -> str:
        try:
            body = await tools.backend(ctx).get(f"/v1/conversations/{conversation_id}")
        except BackendError as exc:
            raise ValueError(exc.message) from exc
        return json.dumps(body)
