"""Sub-agents (``/v1/agents``): list the roles, run one role, run a pipeline of roles.

Both runs answer like ``/v1/chat/completions``: a ``chat.completion`` object, or (``stream``) an
SSE stream of ``chat.completion.chunk`` objects ending with ``data: [DONE]``, so OpenAI SDK code
reads them. A pipeline's stream announces each stage with a named event before its chunks::

    event: stage
    data: {"role": "scout", "index": 0, "model": "...", "worker": "...", ...}

whose data is also a choice-less chunk, so the SDK (which does not skip named events) reads it as
an empty chunk.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field
from sse_starlette import EventSourceResponse

from federation.overflow import PeerCharge
from hub.auth import Principal
from hub.chat import PEER_HEADER, offered_by_peers, peer_step, user_preferences
from hub.deps import State, UserPrincipal
from hub.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    error_body,
)
from hub.openai_schema import Answer, ToolSpec, chunk_body, completion_body, completion_id
from hub.relay import (
    SERVED_HEADER,
    degraded_answer,
    route_headers,
    sse_events,
    worker_failed,
    worker_failed_message,
)
from hub.review import REVIEW_HEADER, AutoReview
from hub.schemas import StrictBody
from hub.state import HubState
from inference.agents import Meter, RoleResult, Stage, choose_model, fold, run_pipeline, run_role
from inference.dispatch import Degraded, JobEvent, JobFailed, PeerStep, Started
from inference.protocol import Chunk, Done
from inference.roles import Role, resolve_roles

router = APIRouter(prefix="/v1/agents", tags=["agents"])

ROLE_HEADER = "X-Iamine-Role"
PIPELINE_HEADER = "X-Iamine-Pipeline"

Task = Annotated[str, Field(min_length=1, max_length=200_000, description="The task.")]


class AgentRunRequest(StrictBody):
    """``POST /v1/agents/run``: one role on one task."""

    model_config = ConfigDict(extra="forbid")

    role: str = Field(min_length=1, max_length=64)
    input: Task
    model: str | None = Field(None, min_length=1, max_length=200)
    stream: bool = False
    max_tokens: int | None = Field(None, gt=0, description="Tightens the role's token budget.")
    tools: list[ToolSpec] | None = Field(None, description="Tools, among those the role allows.")


class PipelineRequest(StrictBody):
    """``POST /v1/agents/pipeline``: roles in order, each seeing the previous output."""

    model_config = ConfigDict(extra="forbid")

    roles: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1)
    input: Task
    model: str | None = Field(None, min_length=1, max_length=200)
    stream: bool = False
    max_tokens: int | None = Field(None, gt=0, description="Tightens every stage's budget.")


def _roles(state: HubState) -> dict[str, Role]:
    return resolve_roles(state.workers.config.roles)


def _find(roles: dict[str, Role], name: str, param: str) -> Role:
    role = roles.get(name)
    if role is None:
        known = ", ".join(sorted(roles))
        raise NotFoundError(
            f"No role named {name!r}; GET /v1/agents/roles lists them ({known}).",
            param=param,
            code="role_not_found",
        )
    return role


def _model(state: HubState, role: Role, requested: str | None) -> str:
    registry = state.workers
    model = choose_model(registry, role, requested, state.settings.agents.default_model)
    if not (
        registry.serves(model) or registry.config.knows(model) or offered_by_peers(state, model)
    ):
        raise ModelNotFoundError(
            f"The model '{model}' is not served by this pool. GET /v1/models lists them.",
            param="model",
        )
    return model


async def _booking(
    state: HubState, principal: Principal
) -> tuple[int, Meter | None, PeerStep | None]:
    """The queue priority, ledger meter and peer step of a user's runs (like their chats)."""
    charges: list[PeerCharge] = []
    preferences = await user_preferences(state, principal)
    peer = peer_step(state, principal, None, charges, preferences)
    billing, user_id = state.billing, principal.user_id
    if billing is None or user_id is None:
        return 0, None, peer
    return billing.priority(user_id), billing.meter(user_id, charges), peer


def _tools(role: Role, tools: list[ToolSpec] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    for i, tool in enumerate(tools):
        if not role.allows_tool(tool.function.name):
            raise InvalidRequestError(
                f"The {role.name} role may not use the tool {tool.function.name!r}.",
                param=f"tools[{i}].function.name",
                code="tool_not_allowed",
            )
    return [t.model_dump(exclude_none=True) for t in tools]


@router.get("/roles")
async def list_roles(state: State, _: UserPrincipal) -> dict[str, Any]:
    """The roles in force (built in, with the pool config's overrides)."""
    return {
        "object": "list",
        "data": [role.model_dump() for role in _roles(state).values()],
    }


@router.post("/run", response_model=None)
async def run_agent(
    body: AgentRunRequest, request: Request, state: State, principal: UserPrincipal
) -> JSONResponse | EventSourceResponse:
    """Run one role on the pool within its budget, as JSON or as an SSE stream."""
    role = _find(_roles(state), body.role, "role")
    tools = _tools(role, body.tools)
    model = _model(state, role, body.model)
    review = await AutoReview.for_request(state, request, principal, body.input)
    priority, meter, peer = await _booking(state, principal)
    events = run_role(
        state.workers,
        role,
        body.input,
        model=model,
        tools=tools,
        max_tokens=body.max_tokens,
        user=str(principal.user_id),
        priority=priority,
        meter=meter,
        peer=peer,
    )
    try:
        first = await anext(events)
    except JobFailed as exc:
        raise worker_failed(exc) from exc
    headers = {ROLE_HEADER: role.name, **route_headers(first, model)}
    if isinstance(first, Started) and first.route == "peer":
        headers[PEER_HEADER] = first.worker_id
    stream: AsyncIterator[JobEvent] = _closing(events)
    if isinstance(first, Degraded):
        await events.aclose()
        stream = degraded_answer("degraded", model, degraded_text(role, model, first.reason))
    elif review is not None:
        headers[REVIEW_HEADER] = "on"
        stream = review.capture(events, headers[SERVED_HEADER])
    if body.stream:
        sse = sse_events(stream, model, include_usage=False)
        return EventSourceResponse(review.around(sse) if review else sse, headers=headers, ping=15)
    answer, done = Answer(), None
    try:
        async for event in stream:
            if isinstance(event, Chunk):
                answer.add(event.delta)
            elif isinstance(event, Done):
                done = event
    except JobFailed as exc:
        raise worker_failed(exc) from exc
    assert done is not None
    completion = completion_body(completion_id(), model, answer, done) | {"iamine_role": role.name}
    if review is not None and (reviewed := await review.result()) is not None:
        completion["iamine_review"] = reviewed
    return JSONResponse(completion, headers=headers)


async def _closing(events: AsyncGenerator[JobEvent, None]) -> AsyncIterator[JobEvent]:
    """Relay a role's events; a client that leaves closes this, which cancels the job."""
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()


def degraded_text(role: Role, model: str, reason: str) -> str:
    """The clearly marked answer of a role the pool could not run."""
    return (
        f"[iamine: degraded answer] The pool could not run the {role.name} role on '{model}' "
        f"right now ({reason}). Nothing was generated; please retry shortly."
    )


@router.post("/pipeline", response_model=None)
async def run_agent_pipeline(
    body: PipelineRequest, state: State, principal: UserPrincipal
) -> JSONResponse | EventSourceResponse:
    """Run roles in order, each seeing the previous stage's output; stream each stage named."""
    limit = state.settings.agents.max_pipeline_stages
    if len(body.roles) > limit:
        raise InvalidRequestError(f"A pipeline has at most {limit} stages.", param="roles")
    roles = _roles(state)
    stages = [_find(roles, name, f"roles[{i}]") for i, name in enumerate(body.roles)]
    for role in stages:
        _model(state, role, body.model)
    priority, meter, peer = await _booking(state, principal)
    events = run_pipeline(
        state.workers,
        stages,
        body.input,
        settings=state.settings.agents,
        model=body.model,
        max_tokens=body.max_tokens,
        user=str(principal.user_id),
        priority=priority,
        meter=meter,
        peer=peer,
    )
    headers = {PIPELINE_HEADER: ",".join(r.name for r in stages)}
    if body.stream:
        return EventSourceResponse(_pipeline_sse(events), headers=headers, ping=15)
    try:
        results = await _collect_pipeline(events)
    except JobFailed as exc:
        raise worker_failed(exc) from exc
    return JSONResponse(_pipeline_body(results), headers=headers)


async def _collect_pipeline(
    events: AsyncGenerator[Stage | JobEvent, None],
) -> list[tuple[Role, RoleResult]]:
    results: list[tuple[Role, RoleResult]] = []
    try:
        async for event in events:
            if isinstance(event, Stage):
                results.append((event.role, RoleResult(role=event.role.name, model=event.model)))
            else:
                fold(results[-1][1], event)
    finally:
        await events.aclose()
    return results


def _stage_json(index: int, role: Role, result: RoleResult) -> dict[str, Any]:
    content = result.text
    if result.degraded is not None:
        content = degraded_text(role, result.model, result.degraded)
    return {
        "index": index,
        "role": role.name,
        "model": result.model,
        "worker": result.worker_id,
        "route": result.route,
        "content": content,
        "finish_reason": result.finish_reason,
        "usage": result.usage.model_dump(exclude={"estimated"}) if result.usage else None,
    }


def _pipeline_body(results: Sequence[tuple[Role, RoleResult]]) -> dict[str, Any]:
    stages = [_stage_json(i, role, result) for i, (role, result) in enumerate(results)]
    last = stages[-1]
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": last["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": last["content"]},
                "finish_reason": last["finish_reason"],
                "logprobs": None,
            }
        ],
        "usage": _total_usage(results),
        "iamine_stages": stages,
    }


def _total_usage(results: Sequence[tuple[Role, RoleResult]]) -> dict[str, int]:
    usages = [r.usage for _, r in results if r.usage is not None]
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _pipeline_sse(
    events: AsyncGenerator[Stage | JobEvent, None],
) -> AsyncIterator[dict[str, str]]:
    cid, created = completion_id(), int(time.time())
    stage: Stage | None = None
    model = ""
    try:
        async for event in events:
            if isinstance(event, Stage):
                stage, model = event, event.model
                continue
            assert stage is not None
            if isinstance(event, Started | Degraded):
                if isinstance(event, Started):
                    model = event.served_model
                yield _stage_event(cid, created, stage, event, model)
                yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
                if isinstance(event, Degraded):
                    text = degraded_text(stage.role, model, event.reason)
                    yield _chunk(cid, created, model, {"content": text})
                    yield _chunk(cid, created, model, {}, finish_reason="stop")
            elif isinstance(event, Chunk):
                yield _chunk(cid, created, model, event.delta.model_dump(exclude_none=True))
            elif isinstance(event, Done):
                yield _chunk(cid, created, model, {}, finish_reason=event.finish_reason)
    except JobFailed as exc:
        message = worker_failed_message(exc)
        yield {"data": json.dumps(error_body(message, "server_error", "worker_failed"))}
    finally:
        await events.aclose()
    yield {"data": "[DONE]"}


def _chunk(
    cid: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, str]:
    return {"data": json.dumps(chunk_body(cid, created, model, delta, finish_reason))}


def _stage_event(
    cid: str, created: int, stage: Stage, first: Started | Degraded, model: str
) -> dict[str, str]:
    body = chunk_body(cid, created, model, None) | {
        "role": stage.role.name,
        "index": stage.index,
        "worker": first.worker_id if isinstance(first, Started) else None,
        "route": first.route if isinstance(first, Started) else "degraded",
    }
    return {"event": "stage", "data": json.dumps(body)}
