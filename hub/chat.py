"""One chat completion as a service: recall → fit → job → record → review.

``/v1/chat/completions`` (``hub/routes/chat.py``) only parses the request and shapes the response;
this module owns what happens between: the memory injected before the job, the checks decided
before dispatch, the job on the pool, and the bookkeeping after the answer (the conversation
record, L1 raw messages, the L2 encrypted turn, fact mining), plus the optional auto-review.
A user's chat is billed on the $IAMINE ledger (``hub/billing.py``): held beside placement,
posted or voided when it ends, both off the request path.

Bookkeeping goes through the hub's background writer, off the request path: the writes capture
the token text and unwrap the data key inside the write, dropping it when it returns.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import asyncpg
import structlog

from federation.client import utc_now
from federation.overflow import ChatPeerStep, PeerCharge
from hub.auth import Principal
from hub.bookkeeping import Rows
from hub.errors import ContextLengthExceededError, InvalidRequestError, ModelNotFoundError
from hub.openai_schema import Answer, ChatCompletionRequest, NamedToolChoice
from hub.preferences import Preferences
from hub.relay import (
    QUEUE_HEADER,
    ROUTE_HEADER,
    SERVED_HEADER,
    degrade_late,
    degraded_answer,
    route_headers,
    worker_failed,
)
from hub.review import REVIEW_HEADER, AutoReview
from hub.semantic import NO_MEMORY, ChatMemory
from hub.state import HubState
from inference.budget import prompt_tokens_floor
from inference.dispatch import Degraded, JobEvent, JobFailed, Started, Waiting, run_job
from inference.link import JobHandle
from inference.protocol import Chunk, Done, Job
from inference.registry import WorkerRegistry
from memory import l1, l2
from memory.compaction import CompactionRequest
from memory.conversations import RECORD_EXCHANGE_SQL, exchange_row

log = structlog.get_logger()

CONVERSATION_HEADER = "X-Conversation-Id"
MEMORY_HEADER = "X-Iamine-Memory"
JOB_HEADER = "X-Iamine-Job-Id"  # the chat's id on the ledger: what a dispute names
PEER_HEADER = "X-Iamine-Peer"  # the peer pool that served a chat (route ``peer``)


@dataclass
class ChatRun:
    """A chat whose job has started (or been answered degraded): what the route relays."""

    headers: dict[str, str]
    events: AsyncIterator[JobEvent]
    review: AutoReview | None


@dataclass(frozen=True)
class ChatCaller:
    """Who asks: the principal, its token text (to open memory) and the conversation."""

    principal: Principal
    token: str
    conversation_id: str


async def start_chat(
    state: HubState,
    caller: ChatCaller,
    body: ChatCompletionRequest,
    review: AutoReview | None = None,
) -> ChatRun:
    """Recall memory, check the request fits, start the job; raise the client's error if not.

    Returns once the response can begin: at once for a stream that has to wait in the queue
    (it then carries SSE comments), after placement otherwise. ``review`` critiques the answer.
    """
    registry = state.workers
    if not (
        registry.serves(body.model)
        or registry.recently_seen(body.model)
        or registry.config.knows(body.model)
        or (registry.remote is not None and registry.remote.serves(body.model))
        or offered_by_peers(state, body.model)
    ):
        raise ModelNotFoundError(
            f"The model '{body.model}' is not served by this pool. GET /v1/models lists them.",
            param="model",
        )
    principal = caller.principal
    memory = await _recall(state, caller, request_messages(body))
    job = build_job(body, registry.settings.job_deadline_s, memory.injection.message)
    needs_context = check_fit(registry, job)
    preferences = await user_preferences(state, principal)
    min_trust = max(registry.config.trust.required("chat"), preferences.min_trust)
    charges: list[PeerCharge] = []
    peer = peer_step(state, principal, request_messages(body), charges, preferences)
    billing, user_id = state.billing, principal.user_id
    ticket, priority = None, 0
    if billing is not None and user_id is not None:
        priority = billing.priority(user_id)
        ticket = await billing.open(job, user_id)  # queued: the hold is written beside placement
    trace: list[JobHandle] = []
    events: AsyncIterator[JobEvent] = run_job(
        registry,
        job,
        needs_tools=body.wants_tools(),
        user=str(user_id),
        priority=priority,
        needs_context=needs_context,
        notify_waiting=True,
        trace=trace,
        min_trust=min_trust,
        peer=peer,
    )
    if billing is not None and ticket is not None:
        events = billing.bill(ticket, events, trace, charges)
    try:
        first = await _first_event(events, body.stream)
    except JobFailed as exc:
        raise worker_failed(exc) from exc
    headers = {
        CONVERSATION_HEADER: caller.conversation_id,
        JOB_HEADER: job.job_id,
        **route_headers(first, body.model),
    }
    if isinstance(first, Started) and first.route == "peer":
        headers[PEER_HEADER] = first.worker_id
    if memory.enabled:
        headers[MEMORY_HEADER] = str(memory.injection.count)
    state.metrics.routes.labels(headers[ROUTE_HEADER]).inc()
    state.metrics.queue_wait.observe(int(headers[QUEUE_HEADER]) / 1000)
    if isinstance(first, Degraded):
        if isinstance(events, AsyncGenerator):
            await events.aclose()  # ends the billing of an unanswered chat: its hold is voided
        return ChatRun(headers, degraded_answer(job.job_id, job.model, _degraded(job, first)), None)
    events = record_events(state, caller, body, events, mine=memory.enabled)
    if review is not None:
        headers[REVIEW_HEADER] = "on"
        events = review.capture(events, headers[SERVED_HEADER])
    # A stream that started while queued may still end degraded (no worker came back).
    events = degrade_late(events, job.job_id, job.model, partial(_degraded, job))
    return ChatRun(headers, events, review)


async def chat_min_trust(state: HubState, principal: Principal) -> int:
    """The least worker trust for this user's chat: the pool's minimum, or the user's if higher."""
    pool_minimum = state.workers.config.trust.required("chat")
    return max(pool_minimum, (await user_preferences(state, principal)).min_trust)


def offered_by_peers(state: HubState, model: str) -> bool:
    """Whether a live peer pool offers the model (overflow on): chats for it can be forwarded."""
    federation = state.federation
    if federation is None or not federation.settings.overflow.enabled:
        return False
    return model in federation.capabilities.models(utc_now())


async def user_preferences(state: HubState, principal: Principal) -> Preferences:
    """The caller's preferences (the defaults for a principal that is no user)."""
    if principal.user_id is None:
        return Preferences()
    return await state.preferences.get(principal.user_id)


def peer_step(
    state: HubState,
    principal: Principal,
    messages: list[dict[str, Any]] | None,
    charges: list[PeerCharge],
    preferences: Preferences,
) -> ChatPeerStep | None:
    """The router's peer step for a user's job, unless federation is off or the user said no.

    ``messages`` (the request without recalled memory; ``None``: the job's own) is what the
    peer gets unless the user lets memory travel: then the job's own messages, recalled memory
    included, and the user's id as the OpenAI ``user`` field.
    """
    if state.federation is None or not preferences.federation_chat:
        return None
    travels = preferences.federation_memory and principal.user_id is not None
    return ChatPeerStep(
        state.federation,
        state.db.pool,
        charges,
        messages=None if travels else messages,
        user=str(principal.user_id) if travels else None,
    )


async def collect(run: ChatRun) -> tuple[Answer, Done]:
    """The whole answer of a JSON (non-streaming) chat."""
    answer = Answer()
    done: Done | None = None
    try:
        async for event in run.events:
            if isinstance(event, Chunk):
                answer.add(event.delta)
            elif isinstance(event, Done):
                done = event
    except JobFailed as exc:
        raise worker_failed(exc) from exc
    assert done is not None
    return answer, done


def request_messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The client's messages as plain dicts."""
    return [m.model_dump(exclude_none=True) for m in body.messages]


def build_job(
    body: ChatCompletionRequest, deadline_s: float, memory: dict[str, str] | None = None
) -> Job:
    """The pool job of a chat request, with the recalled memory (if any) first."""
    tool_choice = body.tool_choice
    return Job(
        job_id=uuid.uuid4().hex,
        model=body.model,
        messages=[*([memory] if memory else []), *request_messages(body)],
        tools=[t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None,
        tool_choice=tool_choice.model_dump()
        if isinstance(tool_choice, NamedToolChoice)
        else tool_choice,
        params=body.sampling(),
        deadline_s=deadline_s,
    )


def check_fit(registry: WorkerRegistry, job: Job) -> int:
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


def _degraded(job: Job, degraded: Degraded) -> str:
    return (
        f"[iamine: degraded answer] The pool could not serve '{job.model}' right now "
        f"({degraded.reason}). Nothing was generated; please retry shortly."
    )


async def _first_event(events: AsyncIterator[JobEvent], stream: bool) -> JobEvent:
    """The event that decides the response: a stream may start while queued, JSON waits."""
    event = await anext(events)
    while isinstance(event, Waiting) and not stream:
        event = await anext(events)
    return event


async def _recall(
    state: HubState, caller: ChatCaller, messages: list[dict[str, Any]]
) -> ChatMemory:
    """Memory to inject before the job: recalled facts and notes, if the user has memory on."""
    if state.semantic is None:
        return NO_MEMORY
    return await state.semantic.for_chat(caller.principal, caller.token, messages)


async def record_events(
    state: HubState,
    caller: ChatCaller,
    body: ChatCompletionRequest,
    events: AsyncIterator[JobEvent],
    *,
    mine: bool = False,
) -> AsyncIterator[JobEvent]:
    """Relay the job's events; book the exchange, and once answered hand it to L1 and L2."""
    principal = caller.principal
    user_id = principal.user_id
    if user_id is not None:
        counted = exchange_row(user_id, caller.conversation_id, datetime.now(UTC))
        state.writer.submit("conversation", Rows(RECORD_EXCHANGE_SQL, [counted]))
    answer = Answer()
    try:
        async for event in events:
            if isinstance(event, Chunk):
                answer.add(event.delta)
            elif isinstance(event, Done):
                messages = request_messages(body)
                remember_exchange(state, caller, messages, answer.message(), now=datetime.now(UTC))
                if mine and state.semantic is not None:
                    exchange = [*l2.new_messages(messages), answer.message()]
                    state.semantic.mine(principal, caller.token, caller.conversation_id, exchange)
            yield event
    finally:
        # A client that leaves closes this stream; closing the job's stream cancels the job.
        if isinstance(events, AsyncGenerator):
            await events.aclose()


def remember_exchange(
    state: HubState,
    caller: ChatCaller,
    request: Sequence[dict[str, Any]],
    answer: dict[str, Any],
    *,
    now: datetime,
) -> None:
    """Queue a finished exchange for L1 and, if the user opted in, for L2."""
    principal, token, conversation_id = caller.principal, caller.token, caller.conversation_id
    user_id = principal.user_id
    if user_id is None:
        return
    memory = state.settings.memory
    messages = [*l2.new_messages(request), answer]
    if memory.l1_enabled:
        rows = l1.message_rows(user_id, conversation_id, messages, now=now, ttl_s=memory.l1_ttl_s)
        state.writer.submit("l1", Rows(l1.APPEND_SQL, rows))
    if state.semantic is not None and state.semantic.opt_in.get(user_id) is False:
        # Memory known to be off (this chat's recall just checked): no L2 write to queue, nor
        # its query of the opt-in. Unknown or on, the write checks the opt-in again itself.
        return

    async def write_l2(conn: asyncpg.Connection) -> None:
        outcome = await l2.record_turn(
            conn,
            user_id,
            principal.token_id,
            token,
            conversation_id,
            messages,
            now=now,
            settings=memory,
        )
        if outcome is l2.RecordOutcome.LOCKED:
            log.info("l2_skipped_memory_locked", token=principal.token_prefix)
        elif outcome is l2.RecordOutcome.STORED_OVER_BUDGET and state.compactor is not None:
            state.compactor.submit(
                CompactionRequest(user_id, principal.token_id, token, conversation_id)
            )

    state.writer.submit("l2", write_l2)
