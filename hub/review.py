"""Auto-review on the OpenAI API: once an answer is done, the reviewer role critiques it.

Opt-in per request (``X-Iamine-Review: on``; ``off`` overrides the user's choice) or per user
(``PUT /v1/preferences``). The review has its own small budget (``IAMINE_AGENTS__REVIEW_*``).
In a stream it comes as a named SSE event just before ``data: [DONE]``::

    event: review
    data: {"review": "...", "model": "...", "truncated": false, "status": "ok", ...}

Its data is also shaped as a ``chat.completion.chunk`` with no choices (like the usage chunk),
because the OpenAI SDK does not skip named events: it parses every ``data:`` line as a chunk.
A JSON answer carries the same object as the extra field ``iamine_review``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import Request

from hub.auth import Principal
from hub.errors import InvalidRequestError
from hub.state import HubState
from inference.agents import Review, review_answer
from inference.dispatch import JobEvent
from inference.protocol import Chunk, Done
from inference.roles import resolve_roles

REVIEW_HEADER = "X-Iamine-Review"
_ON = frozenset({"on", "true", "1", "yes"})
_OFF = frozenset({"off", "false", "0", "no"})


async def review_wanted(state: HubState, request: Request, principal: Principal) -> bool:
    """The request's ``X-Iamine-Review`` header if present, else the user's preference."""
    header = request.headers.get(REVIEW_HEADER)
    if header is not None:
        value = header.strip().lower()
        if value in _ON | _OFF:
            return value in _ON
        raise InvalidRequestError(
            f"{REVIEW_HEADER} must be 'on' or 'off', not {header!r}.", param=REVIEW_HEADER
        )
    if principal.user_id is None:
        return False
    return (await state.preferences.get(principal.user_id)).auto_review


def review_body(review: Review) -> dict[str, Any]:
    """The review as the client sees it (SSE event data, or ``iamine_review``)."""
    return {
        "id": f"review-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": review.model,
        "choices": [],
        "review": review.text,
        "truncated": review.truncated,
        "status": review.status,
    }


class AutoReview:
    """Watches one answer go by, then has it reviewed."""

    def __init__(self, state: HubState, question: str, user: str) -> None:
        self._state = state
        self._question = question
        self._user = user
        self._text: list[str] = []
        self._model: str | None = None
        self._done = False

    @classmethod
    async def for_request(
        cls, state: HubState, request: Request, principal: Principal, question: str
    ) -> AutoReview | None:
        """An auto-review if this request (or its user) asked for one, else None."""
        if not await review_wanted(state, request, principal):
            return None
        return cls(state, question, str(principal.user_id))

    async def capture(
        self, events: AsyncIterator[JobEvent], served_model: str
    ) -> AsyncIterator[JobEvent]:
        """Relay the answer's events, keeping its text for the reviewer."""
        self._model = served_model
        try:
            async for event in events:
                if isinstance(event, Chunk):
                    self._text.append(event.delta.content or "")
                elif isinstance(event, Done):
                    self._done = True
                yield event
        finally:
            if isinstance(events, AsyncGenerator):
                await events.aclose()

    async def result(self) -> dict[str, Any] | None:
        """The review of the finished answer (None when the answer did not finish)."""
        if not self._done or self._model is None:
            return None
        agents = self._state.settings.agents
        reviewer = resolve_roles(self._state.workers.config.roles).get(agents.review_role)
        if reviewer is None:
            return review_body(Review("", self._model, truncated=True, status="unavailable"))
        review = await review_answer(
            self._state.workers,
            reviewer,
            self._question,
            "".join(self._text),
            answer_model=self._model,
            settings=agents,
            user=self._user,
        )
        return review_body(review)

    async def around(self, sse: AsyncIterator[dict[str, str]]) -> AsyncIterator[dict[str, str]]:
        """The SSE stream with ``event: review`` inserted before ``data: [DONE]``."""
        try:
            async for item in sse:
                if item.get("data") == "[DONE]":
                    body = await self.result()
                    if body is not None:
                        yield {"event": "review", "data": json.dumps(body)}
                yield item
        finally:
            if isinstance(sse, AsyncGenerator):
                await sse.aclose()


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message (text parts joined), the question a review judges."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""
