"""The web chat's job: a page's transcript run on the pool, with no memory, as text pieces.

The page keeps its transcript itself and sends it whole each time; the hub keeps nothing of it
(no conversation, no L1 or L2, no fact mining). The job takes the chat path of the API
(:func:`hub.chat.build_job`, :func:`hub.chat.check_fit`, :func:`inference.dispatch.run_job`):
a visitor's job runs on the pool's ``trial_model`` in one shared fair-queue lane (``trial``),
so visitors together never starve members; a signed-in user's runs as theirs, billed and at
the worker trust they asked for, on any model the pool serves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from pydantic import ValidationError

from hub.chat import build_job, check_fit
from hub.errors import InvalidRequestError, ModelNotFoundError
from hub.openai_schema import ChatCompletionRequest
from hub.relay import degrade_late
from hub.state import HubState
from inference.dispatch import Degraded, JobEvent, JobFailed, Waiting, run_job
from inference.link import JobHandle
from inference.protocol import Chunk, Done

TRIAL_LANE = "trial"
MAX_TURNS = 20


@dataclass(frozen=True)
class Piece:
    """One thing the page shows: answer text, a wait in the queue, the end, or a failure."""

    kind: Literal["text", "waiting", "done", "error"]
    text: str = ""


def parse_transcript(raw: Any, max_chars: int) -> list[dict[str, str]]:
    """The page's transcript as chat messages; a clear 400 when it is not one.

    Roles alternate ``user`` / ``assistant``, the last is the user's, each message has
    1..``max_chars`` characters, at most :data:`MAX_TURNS` messages.
    """
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_TURNS:
        raise InvalidRequestError(
            f"Send the conversation as 1 to {MAX_TURNS} messages.", param="messages"
        )
    messages = []
    for i, item in enumerate(raw):
        role = "user" if i % 2 == 0 else "assistant"
        content = item.get("content") if isinstance(item, dict) else None
        if not isinstance(item, dict) or item.get("role") != role or not isinstance(content, str):
            raise InvalidRequestError(
                f"Message {i + 1} must be the {role}'s text.", param="messages"
            )
        if not content.strip() or len(content) > max_chars:
            raise InvalidRequestError(
                f"A message has 1 to {max_chars} characters.", param="messages"
            )
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise InvalidRequestError("The last message must be yours.", param="messages")
    return messages


async def start_page_chat(
    state: HubState,
    messages: list[dict[str, str]],
    model: str,
    user_id: UUID | None,
    max_tokens: int,
) -> AsyncIterator[JobEvent]:
    """Start the job (checked as the API checks a chat); raise the client's error if refused."""
    registry = state.workers
    if not (
        registry.serves(model) or registry.recently_seen(model) or registry.config.knows(model)
    ):
        raise ModelNotFoundError(f"The model '{model}' is not served by this pool.", param="model")
    try:
        body = ChatCompletionRequest.model_validate(
            {"model": model, "messages": messages, "stream": True, "max_tokens": max_tokens}
        )
    except ValidationError as exc:
        raise InvalidRequestError(f"Not a chat: {exc.errors()[0]['msg']}.") from None
    job = build_job(body, registry.settings.job_deadline_s)
    needs_context = check_fit(registry, job)
    min_trust = registry.config.trust.required("chat")
    billing, ticket, priority = state.billing, None, 0
    if user_id is not None:
        min_trust = max(min_trust, (await state.preferences.get(user_id)).min_trust)
        if billing is not None:
            priority = billing.priority(user_id)
            ticket = await billing.open(job, user_id)
    trace: list[JobHandle] = []
    events: AsyncIterator[JobEvent] = run_job(
        registry,
        job,
        needs_tools=False,
        user=str(user_id) if user_id is not None else TRIAL_LANE,
        priority=priority,
        needs_context=needs_context,
        notify_waiting=True,
        trace=trace,
        min_trust=min_trust,
    )
    if billing is not None and ticket is not None:
        events = billing.bill(ticket, events, trace)
    return degrade_late(events, job.job_id, model, _degraded_text)


def _degraded_text(degraded: Degraded) -> str:
    return (
        f"[The pool could not answer right now ({degraded.reason}). It is a community pool: "
        "its capacity is what volunteers lend. Please retry shortly.]"
    )


async def pieces(events: AsyncIterator[JobEvent]) -> AsyncIterator[Piece]:
    """The job's events as what the page shows; a failed job ends with an ``error`` piece."""
    try:
        async for event in events:
            if isinstance(event, Chunk) and event.delta.content:
                yield Piece("text", event.delta.content)
            elif isinstance(event, Waiting):
                yield Piece("waiting", str(event.queue_ms))
            elif isinstance(event, Done):
                yield Piece("done", event.finish_reason)
    except JobFailed as exc:
        yield Piece("error", f"The pool could not finish the answer: {exc.message}")
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def answer_text(events: AsyncIterator[JobEvent]) -> tuple[str, str | None]:
    """The whole answer (for the page without JavaScript), and the error if the job failed."""
    text, error = [], None
    async for piece in pieces(events):
        if piece.kind == "text":
            text.append(piece.text)
        elif piece.kind == "error":
            error = piece.text
    return "".join(text), error
