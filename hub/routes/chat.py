"""The OpenAI-compatible API: ``/v1/models`` and ``/v1/chat/completions`` (JSON or SSE)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from hub.auth import Principal
from hub.deps import State, UserPrincipal, bearer_token
from hub.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
)
from hub.openai_schema import (
    Answer,
    ChatCompletionRequest,
    NamedToolChoice,
    completion_body,
    completion_id,
)
from hub.relay import (
    QUEUE_HEADER,
    ROUTE_HEADER,
    SERVED_HEADER,
    degrade_late,
    degraded_answer,
    route_headers,
    sse_events,
    worker_failed,
)
from hub.review import REVIEW_HEADER, AutoReview, last_user_text
from hub.routes.memory import remember_exchange
from hub.semantic import NO_MEMORY, ChatMemory
from hub.state import HubState
from inference.budget import prompt_tokens_floor
from inference.dispatch import Degraded, JobEvent, JobFailed, Waiting, run_job
from inference.protocol import Chunk, Done, Job
from inference.registry import ModelSummary, WorkerRegistry
from memory.conversations import (
    is_valid_conversation_id,
    new_conversation_id,
    record_exchange,
)
from memory.l2 import new_messages

router = APIRouter(prefix="/v1", tags=["openai"])

CONVERSATION_HEADER = "X-Conversation-Id"
MEMORY_HEADER = "X-Iamine-Memory"


def _model_object(model: ModelSummary) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": 0,
        "owned_by": "iamine-pool",
        "context_length": model.context_size,
        "supports_tools": model.supports_tools,
        "workers": model.workers,
        "free_slots": model.free_slots,
    }


@router.get("/models")
async def list_models(state: State, _: UserPrincipal) -> dict[str, Any]:
    """Models served by connected workers (and those seen lately, with 0 workers), OpenAI's shape.

    A model whose workers just left stays listed for ``model_memory_s``: its requests queue
    for a worker to return instead of failing.
    """
    return {"object": "list", "data": [_model_object(m) for m in state.workers.models()]}


@router.get("/models/{model_id:path}")
async def retrieve_model(model_id: str, state: State, _: UserPrincipal) -> dict[str, Any]:
    """One model of ``/v1/models`` (OpenAI's retrieve), or 404 ``model_not_found``."""
    model = state.workers.model(model_id)
    if model is None:
        raise ModelNotFoundError(f"The model '{model_id}' does not exist in this pool.")
    return _model_object(model)


def _conversation_id(request: Request, body: ChatCompletionRequest) -> str:
    given = request.headers.get(CONVERSATION_HEADER) or (body.metadata or {}).get("conversation_id")
    if given is None:
        return new_conversation_id()
    if not is_valid_conversation_id(given):
        raise InvalidRequestError(
            "Conversation ids are 1-128 letters, digits and . _ : -.", param="conversation_id"
        )
    return given


def _job(
    body: ChatCompletionRequest, deadline_s: float, memory: dict[str, str] | None = None
) -> Job:
    tool_choice = body.tool_choice
    return Job(
        job_id=uuid.uuid4().hex,
        model=body.model,
        messages=[*([memory] if memory else []), *_messages(body)],
        tools=[t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None,
        tool_choice=tool_choice.model_dump()
        if isinstance(tool_choice, NamedToolChoice)
        else tool_choice,
        params=body.sampling(),
        deadline_s=deadline_s,
    )


def _check_fit(registry: WorkerRegistry, job: Job) -> int:
    """Refuse what no worker of the model can hold; return the context the prompt needs.

    Decided before dispatch from the largest context among the model's workers (connected, or
    seen lately): ``max_tokens`` above it is a 400 on ``max_tokens``, a prompt above it a 400
    ``context_length_exceeded`` on ``messages``. A model known only by policy has no context
    to judge by yet; its workers decide.
    """
    limit = registry.context_limit(job.model)
    if limit is None:
        return 0
    wanted = job.params.max_tokens
    if wanted is not None and wanted > limit:
        raise InvalidRequestError(
            f"max_tokens is too large: {wanted}. The model '{job.model}' has a context of "
            f"{limit} tokens, prompt and answer together.",
            param="max_tokens",
            code="invalid_value",
        )
    needed = prompt_tokens_floor(job.messages, job.tools)
    if needed >= limit:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {limit} tokens. However, your messages "
            f"resulted in at least {needed} tokens. Please reduce the length of the messages.",
            param="messages",
        )
    return needed


def _degraded_text(model: str, degraded: Degraded) -> str:
    return (
        f"[iamine: degraded answer] The pool could not serve '{model}' right now "
        f"({degraded.reason}). Nothing was generated; please retry shortly."
    )


async def _first_event(events: AsyncIterator[JobEvent], stream: bool) -> JobEvent:
    """The event that decides the response: a stream may start while queued, JSON waits."""
    event = await anext(events)
    while isinstance(event, Waiting) and not stream:
        event = await anext(events)
    return event


def _messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True) for m in body.messages]


async def _recall(
    state: HubState, request: Request, principal: Principal, body: ChatCompletionRequest
) -> ChatMemory:
    """Memory to inject before the job: recalled facts and notes, if the user has memory on."""
    if state.semantic is None:
        return NO_MEMORY
    return await state.semantic.for_chat(principal, bearer_token(request), _messages(body))


async def _record(
    state: HubState,
    request: Request,
    principal: Principal,
    conversation_id: str,
    body: ChatCompletionRequest,
    events: AsyncIterator[JobEvent],
    *,
    mine: bool = False,
) -> AsyncIterator[JobEvent]:
    """Relay the job's events; book the exchange, and once answered hand it to L1 and L2."""
    user_id = principal.user_id
    if user_id is not None:
        at = datetime.now(UTC)
        state.writer.submit(
            "conversation",
            lambda conn: record_exchange(conn, user_id, conversation_id, at),
        )
    answer = Answer()
    try:
        async for event in events:
            if isinstance(event, Chunk):
                answer.add(event.delta)
            elif isinstance(event, Done):
                remember_exchange(
                    state,
                    principal,
                    bearer_token(request),
                    conversation_id,
                    [m.model_dump(exclude_none=True) for m in body.messages],
                    answer.message(),
                    now=datetime.now(UTC),
                )
                if mine and state.semantic is not None:
                    exchange = [*new_messages(_messages(body)), answer.message()]
                    state.semantic.mine(principal, bearer_token(request), conversation_id, exchange)
            yield event
    finally:
        # A client that leaves closes this stream; closing the job's stream cancels the job.
        if isinstance(events, AsyncGenerator):
            await events.aclose()


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: State, principal: UserPrincipal
) -> JSONResponse | EventSourceResponse:
    """Answer a chat on a pool worker, as JSON or as an SSE stream of chunks."""
    conversation_id = _conversation_id(request, body)
    registry = state.workers
    if not (
        registry.serves(body.model)
        or registry.recently_seen(body.model)
        or registry.config.knows(body.model)
    ):
        raise ModelNotFoundError(
            f"The model '{body.model}' is not served by this pool. GET /v1/models lists them.",
            param="model",
        )
    review = await AutoReview.for_request(
        state, request, principal, last_user_text(_messages(body))
    )
    memory = await _recall(state, request, principal, body)
    job = _job(body, registry.settings.job_deadline_s, memory.injection.message)
    needs_context = _check_fit(registry, job)
    user = str(principal.user_id)
    events: AsyncIterator[JobEvent] = run_job(
        registry,
        job,
        needs_tools=body.wants_tools(),
        user=user,
        needs_context=needs_context,
        notify_waiting=True,
    )
    try:
        first = await _first_event(events, body.stream)
    except JobFailed as exc:
        raise worker_failed(exc) from exc
    headers = {CONVERSATION_HEADER: conversation_id, **route_headers(first, body.model)}
    if memory.enabled:
        headers[MEMORY_HEADER] = str(memory.injection.count)
    state.metrics.routes.labels(headers[ROUTE_HEADER]).inc()
    state.metrics.queue_wait.observe(int(headers[QUEUE_HEADER]) / 1000)
    if isinstance(first, Degraded):
        events = degraded_answer(job.job_id, job.model, _degraded_text(job.model, first))
    else:
        events = _record(
            state, request, principal, conversation_id, body, events, mine=memory.enabled
        )
        if review is not None:
            headers[REVIEW_HEADER] = "on"
            events = review.capture(events, headers[SERVED_HEADER])
        # A stream that started while queued may still end degraded (no worker came back).
        events = degrade_late(events, job.job_id, job.model, partial(_degraded_text, job.model))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        sse = sse_events(events, body.model, include_usage)
        return EventSourceResponse(review.around(sse) if review else sse, headers=headers, ping=15)
    answer = Answer()
    done: Done | None = None
    try:
        async for event in events:
            if isinstance(event, Chunk):
                answer.add(event.delta)
            elif isinstance(event, Done):
                done = event
    except JobFailed as exc:
        raise worker_failed(exc) from exc
    assert done is not None
    completion = completion_body(completion_id(), body.model, answer, done)
    if review is not None and (reviewed := await review.result()) is not None:
        completion["iamine_review"] = reviewed
    return JSONResponse(completion, headers=headers)
