"""``completion/complete``: values for the arguments of the resource templates and prompts.

An argument is completed by its name, the same way wherever it appears: ``namespace`` (the
caller's private ``user:me`` and the shared namespaces they are subscribed to), ``note_id``
(notes they can read, within the ``namespace`` already chosen), ``conversation_id`` (their
conversations) and ``role`` (the roles in force). Every value comes from the hub's API called
with the caller's token, so another user's ids are never offered. Values are prefix matches,
at most 100 (the spec's cap), with ``total`` and ``hasMore``. Free-text arguments (a task, a
query) complete to nothing. A reference or an argument the server does not have is an
invalid-params error, as the spec asks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp import MCPError
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.uri_template import UriTemplate
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    PromptReference,
    ResourceTemplateReference,
)

from mcp_server.backend import BackendError, HubBackend
from mcp_server.ids import InvalidId, parse_namespace

MAX_VALUES = 100
NOTES_SCANNED = 100  # the hub's own cap on one listing of notes
CONVERSATIONS_SCANNED = 1000  # the hub's own cap on one listing of conversations

BackendFor = Callable[[Context[Any, Any]], HubBackend]


@dataclass(frozen=True)
class Candidates:
    """What the caller could choose from; ``cut`` when the listing stopped at its cap."""

    values: list[str]
    cut: bool = False


Completer = Callable[[HubBackend, Mapping[str, str]], Awaitable[Candidates]]


async def namespaces(backend: HubBackend, _chosen: Mapping[str, str]) -> Candidates:
    """``user:me`` and the shared namespaces the caller is subscribed to."""
    body = await backend.get("/v1/memory/namespaces")
    return Candidates(["user:me", *(n["name"] for n in body["data"] if n["subscribed"])])


async def note_ids(backend: HubBackend, chosen: Mapping[str, str]) -> Candidates:
    """Ids of the newest notes the caller can read, in the chosen namespace if there is one."""
    namespace = chosen.get("namespace")
    spaces = [parse_namespace(namespace)] if namespace else None
    body = await backend.get("/v1/memory/notes", k=NOTES_SCANNED, namespace=spaces)
    return Candidates([n["id"] for n in body["data"]], cut=len(body["data"]) >= NOTES_SCANNED)


async def conversation_ids(backend: HubBackend, _chosen: Mapping[str, str]) -> Candidates:
    """The caller's conversation ids, most recently active first."""
    body = await backend.get("/v1/conversations", limit=CONVERSATIONS_SCANNED)
    ids = [c["id"] for c in body["data"]]
    return Candidates(ids, cut=len(ids) >= CONVERSATIONS_SCANNED)


async def role_names(backend: HubBackend, _chosen: Mapping[str, str]) -> Candidates:
    """The sub-agent roles in force (built in and the pool's own)."""
    body = await backend.get("/v1/agents/roles")
    return Candidates([r["name"] for r in body["data"]])


COMPLETERS: dict[str, Completer] = {
    "namespace": namespaces,
    "note_id": note_ids,
    "conversation_id": conversation_ids,
    "role": role_names,
}


def bounded(candidates: Candidates, prefix: str) -> Completion:
    """The candidates starting with ``prefix``, at most :data:`MAX_VALUES`, in source order."""
    matches = [v for v in candidates.values if v.startswith(prefix)]
    return Completion(
        values=matches[:MAX_VALUES],
        total=None if candidates.cut else len(matches),
        has_more=candidates.cut or len(matches) > MAX_VALUES,
    )


async def argument_names(
    mcp: MCPServer, ref: PromptReference | ResourceTemplateReference
) -> list[str]:
    """The arguments of a prompt or resource template of ``mcp``; invalid params if none is."""
    if isinstance(ref, PromptReference):
        for prompt in await mcp.list_prompts():
            if prompt.name == ref.name:
                return [argument.name for argument in prompt.arguments or []]
        raise MCPError(INVALID_PARAMS, f"No prompt named {ref.name!r}.", {"ref": ref.name})
    for template in await mcp.list_resource_templates():
        if template.uri_template == ref.uri:
            return UriTemplate.parse(template.uri_template).variable_names
    raise MCPError(INVALID_PARAMS, f"No resource template {ref.uri!r}.", {"ref": ref.uri})


def serve_completions(mcp: MCPServer, backend_for: BackendFor) -> None:
    """Serve ``completion/complete`` (and so declare the completions capability).

    Registered on the low-level server because the high-level ``completion`` decorator does not
    hand its handler the request, which carries the caller's token.
    """

    async def complete(
        request: ServerRequestContext[Any, Any], params: CompleteRequestParams
    ) -> CompleteResult:
        name = params.argument.name
        known = await argument_names(mcp, params.ref)
        if name not in known:
            message = f"No argument {name!r} here; the arguments are {', '.join(known) or 'none'}."
            raise MCPError(INVALID_PARAMS, message, {"argument": name})
        completer = COMPLETERS.get(name)
        if completer is None:
            return CompleteResult(completion=Completion(values=[], total=0, has_more=False))
        chosen = (params.context.arguments if params.context else None) or {}
        backend = backend_for(Context(request_context=request, mcp_server=mcp))
        try:
            candidates = await completer(backend, chosen)
        except InvalidId as exc:
            raise MCPError(INVALID_PARAMS, exc.message, {"argument": "namespace"}) from exc
        except BackendError as exc:
            code = INTERNAL_ERROR if exc.status >= 500 else INVALID_PARAMS
            raise MCPError(code, f"{exc.message} ({exc.code})") from exc
        return CompleteResult(completion=bounded(candidates, params.argument.value))

    mcp._lowlevel_server.add_request_handler("completion/complete", CompleteRequestParams, complete)
