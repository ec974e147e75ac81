"""Running sub-agent roles on the pool: one role, a pipeline of roles, and the auto-review.

:func:`run_role` is the one entry point (the HTTP API and the MCP tool ``subagent_run`` both use
it): it builds the role's job, runs it through the pool like any chat job, and enforces the role's
budget. Running past the wall budget stops the job on its worker and ends the answer with
``finish_reason: "length"``, as running out of tokens does, so a caller sees one rule for both.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from pydantic import BaseModel, Field

from inference.dispatch import Degraded, JobEvent, JobFailed, PeerStep, Started, run_job
from inference.link import JobHandle
from inference.protocol import Chunk, Done, Job, SamplingParams, Usage
from inference.registry import WorkerRegistry
from inference.roles import DEFAULT_MODEL, Role, RoleName


class AgentSettings(BaseModel):
    """Sub-agent runs and auto-review: the ``IAMINE_AGENTS__*`` group of the hub's settings."""

    default_model: str = Field(
        DEFAULT_MODEL,
        min_length=1,
        description="Model of roles that prefer none, or whose preferred model is not served.",
    )
    review_role: RoleName = Field("reviewer", description="Role that writes auto-reviews.")
    review_wall_s: float = Field(
        1.0, gt=0, le=600, description="Most seconds an auto-review may take, queue included."
    )
    review_max_tokens: int = Field(
        64, gt=0, le=4096, description="Most tokens an auto-review may generate."
    )
    review_priority: int = Field(
        10, ge=0, description="Queue priority of auto-reviews (user traffic is 0; lower is first)."
    )
    max_pipeline_stages: int = Field(
        8, ge=1, le=32, description="Most roles one `POST /v1/agents/pipeline` may chain."
    )


@dataclass(frozen=True)
class Stage:
    """Marks the start of one stage of a pipeline; its events follow."""

    index: int
    role: Role
    model: str


@dataclass
class RoleResult:
    """A whole role run, collected (for callers that do not stream)."""

    role: str
    model: str
    worker_id: str | None = None
    route: str = "direct"
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: Usage | None = None
    degraded: str | None = None

    @property
    def truncated(self) -> bool:
        """Whether the budget (tokens or wall time) cut the answer short."""
        return self.finish_reason == "length"


@dataclass(frozen=True)
class Review:
    """The reviewer's critique of one answer."""

    text: str
    model: str
    truncated: bool
    status: Literal["ok", "truncated", "unavailable"]


def choose_model(
    registry: WorkerRegistry, role: Role, requested: str | None, default_model: str
) -> str:
    """The caller's model if given, else the role's preferred one when the pool has it."""
    if requested:
        return requested
    preferred = role.model
    if preferred and (registry.serves(preferred) or registry.config.knows(preferred)):
        return preferred
    return default_model


def role_messages(
    role: Role, task: str, previous: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    """The role's chat: its system prompt, then the task (and the previous stage's output)."""
    content = task
    if previous is not None:
        prior_role, prior_text = previous
        content = f"{task}\n\nOutput of the previous stage ({prior_role}):\n{prior_text}"
    return [
        {"role": "system", "content": role.system_prompt},
        {"role": "user", "content": content},
    ]


Meter = Callable[
    [Job, AsyncIterator[JobEvent], list[JobHandle]], Awaitable[AsyncIterator[JobEvent]]
]
"""Books a user's run (the hub's ledger): given the job before it starts, its events and the
trace of the workers it ran on, returns the events to relay (the booking ends with them)."""


async def run_role(
    registry: WorkerRegistry,
    role: Role,
    task: str,
    *,
    model: str,
    previous: tuple[str, str] | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
    max_tokens: int | None = None,
    wall_s: float | None = None,
    user: str = "pool",
    priority: int = 0,
    min_trust: int | None = None,
    meter: Meter | None = None,
    peer: PeerStep | None = None,
) -> AsyncGenerator[JobEvent, None]:
    """Run one role on the pool: ``Started`` (or ``Degraded``), chunks, one ``Done``.

    ``min_trust`` defaults to the pool config's level for sub-agents (``agent``); ``meter``
    books the run for the user who asked (a run cut by its wall budget counts as unanswered);
    ``peer`` lets a peer pool run it when no local worker serves its model soon.

    ``max_tokens`` and ``wall_s`` can only tighten the role's budget. Tools must already be
    checked against :meth:`Role.allows_tool`. Raises :class:`JobFailed` like ``run_job``.
    """
    budget_tokens = min(max_tokens or role.max_tokens, role.max_tokens)
    budget_s = min(wall_s or role.wall_s, role.wall_s)
    job = Job(
        job_id=uuid.uuid4().hex,
        model=model,
        messages=role_messages(role, task, previous),
        tools=list(tools) if tools else None,
        params=SamplingParams(max_tokens=budget_tokens, temperature=role.temperature),
        deadline_s=budget_s + 5,
    )
    if min_trust is None:
        min_trust = registry.config.trust.required("agent")
    trace: list[JobHandle] = []
    events: AsyncIterator[JobEvent] = run_job(
        registry,
        job,
        needs_tools=bool(tools),
        user=user,
        priority=priority,
        min_trust=min_trust,
        trace=trace,
        peer=peer,
    )
    if meter is not None:
        events = await meter(job, events, trace)
    # Closed explicitly: a nested generator left to the GC would keep its job running.
    async with aclosing(within_wall_budget(events, job, budget_s)) as relayed:
        async for event in relayed:
            yield event


async def within_wall_budget(
    events: AsyncIterator[JobEvent], job: Job, wall_s: float
) -> AsyncGenerator[JobEvent, None]:
    """Relay a job's events until ``wall_s`` runs out; then stop the job and end with ``length``.

    Only the wait for the next event is inside the cancel scope, never the ``yield``. A budget
    that runs out before any worker took the job ends it as ``Degraded``.
    """
    deadline = anyio.current_time() + wall_s
    served: str | None = None
    chunks = 0
    try:
        while True:
            event: JobEvent | None = None
            with anyio.move_on_after(max(deadline - anyio.current_time(), 0)):
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    return
            if event is None:
                break
            if isinstance(event, Started):
                served = event.served_model
            elif isinstance(event, Chunk):
                chunks += event.pieces
            yield event
            if isinstance(event, Done | Degraded):
                return
    finally:
        # Closing the job's stream cancels the job on its worker.
        if isinstance(events, AsyncGenerator):
            await events.aclose()
    if served is None:
        yield Degraded(
            f"no worker took the job within its {wall_s:g} s budget", round(wall_s * 1000)
        )
        return
    usage = Usage(prompt_tokens=0, completion_tokens=chunks, total_tokens=chunks, estimated=True)
    yield Done(job_id=job.job_id, finish_reason="length", usage=usage, model=served)


def fold(result: RoleResult, event: JobEvent) -> None:
    """Add one event of a role run to its collected result."""
    if isinstance(event, Started):
        result.model, result.worker_id, result.route = (
            event.served_model,
            event.worker_id,
            event.route,
        )
    elif isinstance(event, Degraded):
        result.degraded, result.route = event.reason, "degraded"
    elif isinstance(event, Chunk):
        result.text += event.delta.content or ""
        for piece in event.delta.tool_calls or []:
            while len(result.tool_calls) <= piece.index:
                result.tool_calls.append(
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                )
            call = result.tool_calls[piece.index]
            call["id"] = piece.id or call["id"]
            call["function"]["name"] += piece.function.name or ""
            call["function"]["arguments"] += piece.function.arguments or ""
    elif isinstance(event, Done):
        result.finish_reason, result.usage = event.finish_reason, event.usage


async def collect(role: Role, model: str, events: AsyncGenerator[JobEvent, None]) -> RoleResult:
    """Run a role's events to the end and return the whole result."""
    result = RoleResult(role=role.name, model=model)
    async with aclosing(events):
        async for event in events:
            fold(result, event)
    return result


async def run_pipeline(
    registry: WorkerRegistry,
    stages: Sequence[Role],
    task: str,
    *,
    settings: AgentSettings,
    model: str | None = None,
    max_tokens: int | None = None,
    user: str = "pool",
    priority: int = 0,
    meter: Meter | None = None,
    peer: PeerStep | None = None,
) -> AsyncGenerator[Stage | JobEvent, None]:
    """Run roles in order, each seeing the previous stage's output; a degraded stage ends it.

    ``max_tokens`` tightens every stage's token budget; ``meter`` books each stage; ``peer``
    lets a peer pool run a stage whose model no local worker serves soon.
    """
    previous: tuple[str, str] | None = None
    for index, role in enumerate(stages):
        chosen = choose_model(registry, role, model, settings.default_model)
        yield Stage(index, role, chosen)
        result = RoleResult(role=role.name, model=chosen)
        events = run_role(
            registry,
            role,
            task,
            model=chosen,
            previous=previous,
            max_tokens=max_tokens,
            user=user,
            priority=priority,
            meter=meter,
            peer=peer,
        )
        async with aclosing(events):
            async for event in events:
                fold(result, event)
                yield event
        if result.degraded is not None:
            return
        previous = (role.name, result.text)


async def review_answer(
    registry: WorkerRegistry,
    reviewer: Role,
    question: str,
    answer: str,
    *,
    answer_model: str,
    settings: AgentSettings,
    user: str = "pool",
) -> Review:
    """Have the reviewer critique an answer within the auto-review budget; never raises."""
    model = choose_model(registry, reviewer, None, answer_model)
    task = f"Question:\n{question}\n\nAnswer to review:\n{answer}"
    events = run_role(
        registry,
        reviewer,
        task,
        model=model,
        max_tokens=settings.review_max_tokens,
        wall_s=settings.review_wall_s,
        user=user,
        priority=settings.review_priority,
        min_trust=registry.config.trust.required("review"),
    )
    try:
        result = await collect(reviewer, model, events)
    except JobFailed:
        return Review("", model, truncated=True, status="unavailable")
    if result.degraded is not None:
        return Review("", model, truncated=True, status="unavailable")
    status: Literal["ok", "truncated"] = "truncated" if result.truncated else "ok"
    return Review(result.text.strip(), result.model, result.truncated, status)
