"""The iamine MCP server: memory, conversations and pool models as MCP tools, resources, prompts.

Built on the official SDK's ``MCPServer``. Each tool resolves the caller's token (the HTTP
request's bearer token, or the fixed token of ``iamine mcp`` on stdio) and calls the hub's HTTP
API with it through :class:`~mcp_server.backend.HubBackend`, so a tool sees exactly what the API
shows that token. Failures come back as MCP tool errors (``is_error``), never a broken session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import LoggingLevel, ToolAnnotations
from pydantic import Field

from mcp_server.backend import BackendError, HubBackend
from mcp_server.completions import serve_completions
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
)
from mcp_server.logs import log, serve_set_level
from mcp_server.prompts import register_prompts
from mcp_server.resources import register_resources
from mcp_server.schemas import (
    ChatAnswer,
    ConversationDetail,
    ConversationList,
    ConversationSummary,
    Fact,
    Forgotten,
    MemoryExport,
    ModelEntry,
    ModelList,
    Note,
    NoteInput,
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
    """The tool implementations, bound to one HTTP client and a way to find the caller's token.

    A failed hub call becomes an MCP tool error, and a warning log notification to the client.
    """

    def __init__(self, client: httpx.AsyncClient, token_source: TokenSource) -> None:
        self._client = client
        self._token_source = token_source

    def backend(self, ctx: Context[Any, Any]) -> HubBackend:
        """A backend acting with the caller's token."""
        return HubBackend(self._client, self._token_source(ctx))

    async def get(self, ctx: Context[Any, Any], path: str, **params: Any) -> Any:
        """GET with the caller's token."""
        try:
            return await self.backend(ctx).get(path, **params)
        except BackendError as exc:
            raise await failed(ctx, f"GET {path}", exc) from exc

    async def post(
        self,
        ctx: Context[Any, Any],
        path: str,
        body: dict[str, Any] | list[dict[str, Any]],
        params: dict[str, Any] | None = None,
    ) -> Any:
        """POST with the caller's token."""
        try:
            return await self.backend(ctx).post(path, body, params=params)
        except BackendError as exc:
            raise await failed(ctx, f"POST {path}", exc) from exc

    async def delete(self, ctx: Context[Any, Any], path: str) -> Any:
        """DELETE with the caller's token."""
        try:
            return await self.backend(ctx).delete(path)
        except BackendError as exc:
            raise await failed(ctx, f"DELETE {path}", exc) from exc


async def failed(ctx: Context[Any, Any], call: str, exc: BackendError | InvalidId) -> ToolError:
    """Warn the client that a hub call failed (status and code only) and make the tool error."""
    status = f"{exc.status} " if isinstance(exc, BackendError) else ""
    await log(ctx, "warning", f"{call} failed: {status}{exc.code}")
    return _tool_error(exc)


def _tool_error(exc: BackendError | InvalidId) -> ToolError:
    return ToolError(f"{exc.message} ({exc.code})")


def _parsed[T](parse: Callable[[T], str], value: T) -> str:
    """``parse(value)`` (an id or a hub path); an invalid id becomes an MCP tool error."""
    try:
        return parse(value)
    except InvalidId as exc:
        raise _tool_error(exc) from exc


def _hints(
    *,
    read_only: bool,
    destructive: bool = False,
    idempotent: bool = False,
    open_world: bool = False,
    title: str,
) -> ToolAnnotations:
    """A tool's behaviour hints (MCP tool annotations); a read-only tool is idempotent too."""
    return ToolAnnotations(
        title=title,
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent or read_only,
        open_world_hint=open_world,
    )


def build_server(client: httpx.AsyncClient, token_source: TokenSource) -> MCPServer:
    """Create the MCP server whose tools call the hub through ``client``."""
    mcp = MCPServer(name="iamine", instructions=INSTRUCTIONS, version="0.1.0")
    tools = Tools(client, token_source)
    _register_pool_tools(mcp, tools)
    _register_conversation_tools(mcp, tools)
    _register_memory_tools(mcp, tools)
    _register_agent_tools(mcp, tools)
    register_resources(mcp, tools.backend)
    register_prompts(mcp, tools.backend)
    serve_completions(mcp, tools.backend)
    serve_set_level(mcp)
    return mcp


# Routes where the asked model answered; the others (fallback, degraded) are worth a warning.
HEALTHY_ROUTES = frozenset({"direct", "queued", "forwarded"})


def _register_pool_tools(mcp: MCPServer, tools: Tools) -> None:
    @mcp.tool(annotations=_hints(read_only=True, title="Models served"))
    async def models_list(ctx: Context[Any, Any]) -> ModelList:
        """List the models the pool can serve right now, with how many workers serve each."""
        body = await tools.get(ctx, "/v1/models")
        await log(ctx, "info", f"models_list: {len(body['data'])} models served")
        return ModelList(models=[ModelEntry.of(m) for m in body["data"]])

    @mcp.tool(annotations=_hints(read_only=True, title="Pool status"))
    async def pool_status(ctx: Context[Any, Any]) -> PoolStatus:
        """Show the pool's state: connected workers, free slots, queue depth, models served."""
        status = PoolStatus.model_validate(await tools.get(ctx, "/v1/pool/status"))
        await log(
            ctx, "info", f"pool_status: {status.workers} workers, {status.free_slots} free slots"
        )
        return status

    # Volunteer workers answer (open world); the chat is written to memory (not read-only).
    @mcp.tool(annotations=_hints(read_only=False, open_world=True, title="Ask a pool model"))
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
        await ctx.report_progress(0, 3, "Choosing a model")
        if model is None:
            served = (await tools.get(ctx, "/v1/models"))["data"]
            if not served:
                await log(ctx, "warning", "chat: no model is served by the pool")
                raise ToolError("No model is served by the pool right now. (model_not_found)")
            model = str(served[0]["id"])
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": message})
        headers = (
            {"X-Conversation-Id": _parsed(parse_conversation_id, conversation_id)}
            if conversation_id is not None
            else None
        )
        await ctx.report_progress(1, 3, f"Waiting for {model} on the pool")
        try:
            body, response_headers = await tools.backend(ctx).post_with_headers(
                "/v1/chat/completions",
                {"model": model, "messages": messages, "max_tokens": max_tokens},
                headers=headers,
            )
        except BackendError as exc:
            raise await failed(ctx, "POST /v1/chat/completions", exc) from exc
        answer = ChatAnswer.of(body, response_headers)
        await ctx.report_progress(3, 3, f"Answered by {answer.model}")
        level: LoggingLevel = "info" if answer.route in HEALTHY_ROUTES else "warning"
        await log(
            ctx,
            level,
            f"chat: {answer.model} answered ({answer.route} route, "
            f"{answer.completion_tokens} tokens) in conversation {answer.conversation_id}",
        )
        return answer


def _register_conversation_tools(mcp: MCPServer, tools: Tools) -> None:
    @mcp.tool(annotations=_hints(read_only=True, title="List conversations"))
    async def conversation_list(
        ctx: Context[Any, Any],
        limit: Annotated[int, Field(ge=1, le=1000, description="How many, newest first.")] = 20,
    ) -> ConversationList:
        """List the user's conversations (ids, times, sizes), most recently active first."""
        body = await tools.get(ctx, "/v1/conversations", limit=limit)
        await log(ctx, "info", f"conversation_list: {len(body['data'])} conversations")
        return ConversationList(
            conversations=[ConversationSummary.model_validate(c) for c in body["data"]]
        )

    @mcp.tool(annotations=_hints(read_only=True, title="Read a conversation"))
    async def conversation_get(
        ctx: Context[Any, Any],
        conversation_id: Annotated[ConversationId, Field(description="Id from the list.")],
    ) -> ConversationDetail:
        """Read one of the user's conversations, decrypted: its turns and summaries."""
        body = await tools.get(ctx, _parsed(conversation_path, conversation_id))
        detail = ConversationDetail.model_validate(body)
        await log(ctx, "info", f"conversation_get: {len(detail.turns)} turns")
        return detail

    @mcp.tool(annotations=_hints(read_only=True, title="Export memory"))
    async def memory_export(ctx: Context[Any, Any]) -> MemoryExport:
        """Export everything the pool stores for the user, decrypted, as one JSON document."""
        await ctx.report_progress(0, 2, "Exporting conversations, facts and notes")
        export = MemoryExport.model_validate(await tools.get(ctx, "/v1/memory/export"))
        await ctx.report_progress(2, 2, "Exported")
        await log(
            ctx,
            "info",
            f"memory_export: {len(export.conversations)} conversations, "
            f"{len(export.facts)} facts, {len(export.notes)} notes",
        )
        return export


# The hub's own limits, published in the tools' schemas so an agent sees them before calling.
# Note text and search text are stored or searched as PostgreSQL text, which cannot hold NUL.
MAX_QUERY_CHARS = 2000
MAX_NOTES_PER_BATCH = 1000  # as POST /v1/memory/notes takes
PlainText = Annotated[str, Field(pattern=r"^[^\x00]*$")]
Tag = Annotated[str, Field(pattern=TAG_PATTERN)]
Key = Annotated[str, Field(pattern=KEY_PATTERN)]
Tags = Annotated[list[Tag] | None, Field(description="Lower-case tags to filter or label by.")]
Query = Annotated[
    PlainText,
    Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What you want to know."),
]


def _register_memory_tools(mcp: MCPServer, tools: Tools) -> None:
    # A near-duplicate merges and a contradiction supersedes with history kept: additive.
    @mcp.tool(annotations=_hints(read_only=False, title="Remember a fact"))
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
        fact = Fact.model_validate(await tools.post(ctx, "/v1/memory/facts", body))
        await log(ctx, "info", f"remember: fact {fact.id} {fact.status or 'stored'}")
        return fact

    @mcp.tool(annotations=_hints(read_only=True, title="Recall from memory"))
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
        found = Recall.model_validate(body)
        await log(ctx, "info", f"recall: {len(found.facts)} facts, {len(found.notes)} notes")
        return found

    # Forgetting twice leaves the same state (the second is a not-found error).
    @mcp.tool(annotations=_hints(read_only=False, destructive=True, idempotent=True,
                                 title="Forget a fact"))  # fmt: skip
    async def forget(
        ctx: Context[Any, Any],
        fact_id: FactId,
    ) -> Forgotten:
        """Forget one fact for good (text, embedding and history)."""
        gone = Forgotten.model_validate(await tools.delete(ctx, _parsed(fact_path, fact_id)))
        await log(ctx, "info", f"forget: fact {gone.id} deleted={gone.deleted}")
        return gone

    @mcp.tool(annotations=_hints(read_only=False, title="Write a note"))
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
        write_quorum: Annotated[
            int | None,
            Field(
                ge=1,
                le=100,
                description="fed: namespaces only: return once this many peer pools stored it.",
            ),
        ] = None,
    ) -> Note:
        """Write a note for the user's agents (or a shared namespace); searchable by meaning
        and by keywords. Notes are stored in clear so they can be searched by keywords. In a
        fed: namespace, write_quorum W waits until W peer pools stored it (an error says how
        many did otherwise; the note stays and syncs later)."""
        payload: dict[str, Any] = {
            "namespace": namespace,
            "title": title,
            "body": body,
            "tags": tags or [],
            "author_agent": author_agent,
        }
        if write_quorum is not None:
            payload["write_quorum"] = write_quorum
        note = Note.model_validate(await tools.post(ctx, "/v1/memory/notes", payload))
        await log(ctx, "info", f"note_write: note {note.id} written in {namespace}")
        return note

    @mcp.tool(annotations=_hints(read_only=False, title="Write many notes"))
    async def note_write_batch(
        ctx: Context[Any, Any],
        notes: Annotated[list[NoteInput], Field(min_length=1, max_length=MAX_NOTES_PER_BATCH)],
        window: Annotated[
            int,
            Field(ge=0, le=5, description="Index each note with this many notes either side."),
        ] = 0,
    ) -> NoteList:
        """Write up to 1000 notes at once, all or none (a conversation's turns, say: give each
        its speaker and said_at, and a window to find a reply by the turn before it)."""
        body = [n.model_dump(mode="json", exclude_none=True) for n in notes]
        answer = await tools.post(ctx, "/v1/memory/notes", body, params={"window": window})
        written = NoteList(notes=[Note.model_validate(n) for n in answer["data"]])
        await log(ctx, "info", f"note_write_batch: {len(written.notes)} notes written")
        return written

    @mcp.tool(annotations=_hints(read_only=True, title="Search notes"))
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
        await log(ctx, "info", f"note_search: {len(body['data'])} notes ({mode})")
        return NoteList(notes=[Note.model_validate(n) for n in body["data"]])

    @mcp.tool(annotations=_hints(read_only=True, title="Read a note"))
    async def note_get(
        ctx: Context[Any, Any],
        note_id: NoteId,
    ) -> Note:
        """Read one note in full."""
        note = Note.model_validate(await tools.get(ctx, _parsed(note_path, note_id)))
        await log(ctx, "info", f"note_get: note {note.id} of {note.namespace}")
        return note


def _register_agent_tools(mcp: MCPServer, tools: Tools) -> None:
    @mcp.tool(annotations=_hints(read_only=False, open_world=True, title="Run a sub-agent"))
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
        await ctx.report_progress(0, 2, f"Waiting for the {role} role on the pool")
        answer = await tools.post(ctx, "/v1/agents/run", body)
        choice = answer["choices"][0]
        result = SubagentAnswer(
            role=answer.get("iamine_role", role),
            content=choice["message"].get("content") or "",
            model=answer["model"],
            finish_reason=choice["finish_reason"],
            completion_tokens=answer["usage"]["completion_tokens"],
            review=answer.get("iamine_review"),
        )
        await ctx.report_progress(2, 2, f"Answered by {result.model}")
        reviewed = ", reviewed" if result.review is not None else ""
        await log(
            ctx,
            "info",
            f"subagent_run: {result.role} answered with {result.model} "
            f"({result.completion_tokens} tokens{reviewed})",
        )
        return result
