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
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from pydantic import Field

from inference.roles import BUILTIN_ROLES, Role
from mcp_server.backend import BackendError, HubBackend
from mcp_server.ids import (
    ConversationId,
    FactId,
    InvalidId,
    Namespace,
    NoteId,
    RoleName,
    conversation_path,
    fact_path,
    note_path,
    parse_conversation_id,
    parse_namespace,
)
from mcp_server.schemas import (
    ChatAnswer,
    ConversationDetail,
    ConversationList,
    ConversationSummary,
    Fact,
    FactList,
    Forgotten,
    ModelEntry,
    ModelList,
    Note,
    NoteList,
    PoolStatus,
    Recall,
    SubagentAnswer,
)
from memory.facts import KEY_PATTERN, MAX_FACT_CHARS, TAG_PATTERN
from memory.notes import MAX_AGENT_CHARS, MAX_BODY_CHARS, MAX_TITLE_CHARS

INSTRUCTIONS = (
    "iamine hub: a cooperative AI pool with four-tier memory. Use `remember` for lasting facts "
    "about the user and `recall` before answering questions that may depend on them; "
    "`note_write` / `note_search` keep notes shared by the user's agents (or in a shared "
    "namespace the user is subscribed to). Use `chat` to ask a pool model, "
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

    async def get(self, ctx: Context[Any, Any], path: str, **params: Any) -> Any:
        """GET with the caller's token; a hub error becomes an MCP tool error."""
        try:
            return await self.backend(ctx).get(path, **params)
        except BackendError as exc:
            raise _tool_error(exc) from exc

    async def post(self, ctx: Context[Any, Any], path: str, body: dict[str, Any]) -> Any:
        """POST with the caller's token; a hub error becomes an MCP tool error."""
        try:
            return await self.backend(ctx).post(path, body)
        except BackendError as exc:
            raise _tool_error(exc) from exc

    async def delete(self, ctx: Context[Any, Any], path: str) -> Any:
        """DELETE with the caller's token; a hub error becomes an MCP tool error."""
        try:
            return await self.backend(ctx).delete(path)
        except BackendError as exc:
            raise _tool_error(exc) from exc


def _tool_error(exc: BackendError | InvalidId) -> ToolError:
    return ToolError(f"{exc.message} ({exc.code})")


def _resource_error(exc: BackendError | InvalidId) -> ResourceError:
    """A hub error or a bad id as a resource error: the caller's mistake (invalid params) unless
    the hub itself failed."""
    message = f"{exc.message} ({exc.code})"
    if isinstance(exc, BackendError) and exc.status >= 500:
        return ResourceError(message)
    return ResourceNotFoundError(message)


def _parsed[T](parse: Callable[[T], str], value: T) -> str:
    """``parse(value)`` (an id or a hub path); an invalid id becomes an MCP tool error."""
    try:
        return parse(value)
    except InvalidId as exc:
        raise _tool_error(exc) from exc


def build_server(client: httpx.AsyncClient, token_source: TokenSource) -> MCPServer:
    """Create the MCP server whose tools call the hub through ``client``."""
    mcp = MCPServer(name="iamine", instructions=INSTRUCTIONS, version="0.1.0")
    tools = Tools(client, token_source)
    _register_pool_tools(mcp, tools)
    _register_conversation_tools(mcp, tools)
    _register_memory_tools(mcp, tools)
    _register_agent_tools(mcp, tools)
    return mcp


def _register_pool_tools(mcp: MCPServer, tools: Tools) -> None:
    @mcp.tool()
    async def models_list(ctx: Context[Any, Any]) -> ModelList:
        """List the models the pool can serve right now, with how many workers serve each."""
        body = await tools.get(ctx, "/v1/models")
        return ModelList(models=[ModelEntry.of(m) for m in body["data"]])

    @mcp.tool()
    async def pool_status(ctx: Context[Any, Any]) -> PoolStatus:
        """Show the pool's state: connected workers, free slots, queue depth, models served."""
        body = await tools.get(ctx, "/v1/pool/status")
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
            ConversationId | None,
            Field(description="Continue a conversation (recorded in memory)."),
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
                    raise ToolError("No model is served by the pool right now. (model_not_found)")
                model = str(served[0]["id"])
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": message})
            headers = (
                {"X-Conversation-Id": _parsed(parse_conversation_id, conversation_id)}
                if conversation_id is not None
                else None
            )
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
        body = await tools.get(ctx, "/v1/conversations", limit=limit)
        return ConversationList(
            conversations=[ConversationSummary.model_validate(c) for c in body["data"]]
        )

    @mcp.tool()
    async def conversation_get(
        ctx: Context[Any, Any],
        conversation_id: Annotated[ConversationId, Field(description="Id from the list.")],
    ) -> ConversationDetail:
        """Read one of the user's conversations, decrypted: its turns and summaries."""
        body = await tools.get(ctx, _parsed(conversation_path, conversation_id))
        return ConversationDetail.model_validate(body)

    @mcp.tool()
    async def memory_export(ctx: Context[Any, Any]) -> dict[str, Any]:
        """Export everything the pool stores for the user, decrypted, as one JSON document."""
        body: dict[str, Any] = await tools.get(ctx, "/v1/memory/export")
        return body

    @mcp.resource(
        "conversation://{conversation_id}",
        description="One of the user's conversations, decrypted, as JSON.",
        mime_type="application/json",
    )
    async def conversation_resource(conversation_id: str, ctx: Context[Any, Any]) -> str:
        # Parsed in the body, not by the signature: a bad id is the caller's error, not a crash.
        try:
            body = await tools.backend(ctx).get(conversation_path(conversation_id))
        except (BackendError, InvalidId) as exc:
            raise _resource_error(exc) from exc
        return json.dumps(body)


# The hub's own limits, published in the tools' schemas so an agent sees them before calling.
# Note text and search text are stored or searched as PostgreSQL text, which cannot hold NUL.
MAX_QUERY_CHARS = 2000
PlainText = Annotated[str, Field(pattern=r"^[^\x00]*$")]
Tag = Annotated[str, Field(pattern=TAG_PATTERN)]
Key = Annotated[str, Field(pattern=KEY_PATTERN)]
Tags = Annotated[list[Tag] | None, Field(description="Lower-case tags to filter or label by.")]
Query = Annotated[
    PlainText,
    Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What you want to know."),
]


def _register_memory_tools(mcp: MCPServer, tools: Tools) -> None:
    @mcp.tool()
    async def remember(
        ctx: Context[Any, Any],
        text: Annotated[
            str,
            Field(
                min_length=1, max_length=MAX_FACT_CHARS, description="One fact, one short sentence."
            ),
        ],
        key: Annotated[
            Key | None,
            Field(description="What it is about (`home_city`); a newer fact with it replaces."),
        ] = None,
        tags: Tags = None,
        confidence: Annotated[float, Field(ge=0, le=1)] = 1.0,
    ) -> Fact:
        """Remember a lasting fact about the user (encrypted at rest). Near-duplicates merge;
        a contradicting newer fact supersedes the old one, whose history is kept."""
        body: dict[str, Any] = {"text": text, "tags": tags or [], "confidence": confidence}
        if key is not None:
            body["key"] = key
        return Fact.model_validate(await tools.post(ctx, "/v1/memory/facts", body))

    @mcp.tool()
    async def recall(
        ctx: Context[Any, Any],
        query: Query,
        k: Annotated[int, Field(ge=1, le=100, description="Results per tier.")] = 5,
        tags: Tags = None,
        namespace: Annotated[
            list[Namespace] | None, Field(description="Only notes of these namespaces.")
        ] = None,
    ) -> Recall:
        """Search the user's memory: the facts (L3) and notes (L4) most relevant to `query`."""
        body = await tools.get(
            ctx, "/v1/memory/recall", query=query, k=k, tags=tags, namespace=namespace
        )
        return Recall.model_validate(body)

    @mcp.tool()
    async def forget(
        ctx: Context[Any, Any],
        fact_id: FactId,
    ) -> Forgotten:
        """Forget one fact for good (text, embedding and history)."""
        body = await tools.delete(ctx, _parsed(fact_path, fact_id))
        return Forgotten.model_validate(body)

    @mcp.tool()
    async def note_write(
        ctx: Context[Any, Any],
        body: Annotated[
            PlainText,
            Field(min_length=1, max_length=MAX_BODY_CHARS, description="The note's text."),
        ],
        title: Annotated[PlainText, Field(max_length=MAX_TITLE_CHARS)] = "",
        namespace: Namespace = "user:me",
        tags: Tags = None,
        author_agent: Annotated[
            PlainText, Field(max_length=MAX_AGENT_CHARS, description="Which agent writes it.")
        ] = "",
    ) -> Note:
        """Write a note for the user's agents (or a shared namespace); searchable by meaning
        and by keywords. Notes are stored in clear so they can be searched by keywords."""
        payload = {
            "namespace": namespace,
            "title": title,
            "body": body,
            "tags": tags or [],
            "author_agent": author_agent,
        }
        return Note.model_validate(await tools.post(ctx, "/v1/memory/notes", payload))

    @mcp.tool()
    async def note_search(
        ctx: Context[Any, Any],
        query: Annotated[Query, Field(description="Search text.")],
        k: Annotated[int, Field(ge=1, le=100)] = 10,
        namespace: Annotated[
            list[Namespace] | None, Field(description="Namespaces to search.")
        ] = None,
        tags: Tags = None,
        mode: Annotated[str, Field(pattern="^(hybrid|vector|keyword)$")] = "hybrid",
    ) -> NoteList:
        """Find notes: vector and full-text search fused by reciprocal rank, with snippets."""
        body = await tools.get(
            ctx, "/v1/memory/notes", query=query, k=k, namespace=namespace, tags=tags, mode=mode
        )
        return NoteList(notes=[Note.model_validate(n) for n in body["data"]])

    @mcp.tool()
    async def note_get(
        ctx: Context[Any, Any],
        note_id: NoteId,
    ) -> Note:
        """Read one note in full."""
        return Note.model_validate(await tools.get(ctx, _parsed(note_path, note_id)))

    @mcp.resource(
        "memory://facts{?query}",
        description="The user's current facts (newest first, or the best for `query`), JSON.",
        mime_type="application/json",
    )
    async def facts_resource(ctx: Context[Any, Any], query: str = "") -> str:
        try:
            body = await tools.backend(ctx).get("/v1/memory/facts", query=query or None, k=100)
        except BackendError as exc:
            raise _resource_error(exc) from exc
        return json.dumps(FactList(facts=body["data"]).model_dump())

    @mcp.resource(
        "notes://{namespace}/{note_id}",
        description="One note of a namespace the user can read, JSON.",
        mime_type="application/json",
    )
    async def note_resource(namespace: str, note_id: str, ctx: Context[Any, Any]) -> str:
        try:
            namespace = parse_namespace(namespace)
            body = await tools.backend(ctx).get(note_path(note_id))
        except (BackendError, InvalidId) as exc:
            raise _resource_error(exc) from exc
        if body.get("namespace") != namespace and not (
            namespace == "user:me" and str(body.get("namespace", "")).startswith("user:")
        ):
            raise ResourceNotFoundError(f"Note {note_id} is not in {namespace}. (not_found)")
        return json.dumps(body)


def _register_agent_tools(mcp: MCPServer, tools: Tools) -> None:
    @mcp.tool()
    async def subagent_run(
        ctx: Context[Any, Any],
        role: RoleName,
        input: Annotated[str, Field(min_length=1, description="The task for the sub-agent.")],
        max_tokens: Annotated[int | None, Field(gt=0, description="Tighter token budget.")] = None,
    ) -> SubagentAnswer:
        """Hand a task to a sub-agent role on the pool (its own system prompt, model and
        budget) and get its answer; with auto-review on, the reviewer's critique comes too."""
        body: dict[str, Any] = {"role": role, "input": input}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        answer = await tools.post(ctx, "/v1/agents/run", body)
        choice = answer["choices"][0]
        return SubagentAnswer(
            role=answer.get("iamine_role", role),
            content=choice["message"].get("content") or "",
            model=answer["model"],
            finish_reason=choice["finish_reason"],
            completion_tokens=answer["usage"]["completion_tokens"],
            review=answer.get("iamine_review"),
        )

    for role in BUILTIN_ROLES.values():
        _add_role_prompt(mcp, role)


def _add_role_prompt(mcp: MCPServer, role: Role) -> None:
    """A prompt that briefs an agent as this role (the same system prompt the pool uses)."""

    def brief(task: str) -> str:
        return f"{role.system_prompt}\n\nTask:\n{task}"

    mcp.prompt(name=role.name, description=role.description or f"The {role.name} role.")(brief)
