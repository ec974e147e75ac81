"""``/chat``: try the pool in the browser, as a visitor (trial quota) or with one's account.

A visitor chats with the pool's ``trial_model`` within the trial quotas (per client address
and per browser, :mod:`hub.web.chat_quota`); a signed-in user with a verified email chats with
their account on any model the pool serves; an unverified account cannot chat. Nothing is
remembered on the hub (:mod:`hub.web.chat_service`). ``POST /chat`` answers a form with the
whole answer (no JavaScript needed); ``POST /chat/stream`` streams it as server-sent events
(``text``, ``waiting``, ``done``, ``error``) for ``static/chat.js``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Form, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import HTMLResponse, Response

from hub.errors import HubError, InvalidRequestError, PermissionDeniedError
from hub.web.chat_quota import Limits, TrialQuota
from hub.web.chat_service import Piece, answer_text, parse_transcript, pieces, start_page_chat
from hub.web.login import client_ip
from hub.web.session import CsrfChecked, WebUser, hub_state
from hub.web.templating import render

TRIAL_COOKIE = "iamine_trial"
TRIAL_COOKIE_MAX_AGE_S = 365 * 24 * 3600


@dataclass(frozen=True)
class Asker:
    """Who chats: a visitor (``user`` None or the admin token's session) or a member."""

    user: WebUser | None

    @property
    def member(self) -> bool:
        """A signed-in user (verified or not)."""
        return self.user is not None and self.user.user_id is not None

    def refusal(self) -> str | None:
        """Why this asker may not chat, if they may not."""
        if self.member and self.user is not None and not self.user.verified:
            return "Verify your email address first: the link is in the mail we sent you."
        return None


def _asker(request: Request) -> Asker:
    return Asker(getattr(request.state, "web_user", None))


def _models(request: Request, asker: Asker) -> list[str]:
    """What the asker may choose: the trial model for a visitor, every served model otherwise."""
    registry = hub_state(request).workers
    trial = registry.config.trial_model
    if not asker.member:
        return [trial] if trial else []
    served = [m.id for m in registry.models()]
    return ([trial] if trial and trial not in served else []) + served


def build_router() -> APIRouter:
    """The chat page's routes, with this app's own trial quota."""
    router = APIRouter()
    quota = TrialQuota()

    def take_quota(request: Request, asker: Asker) -> None:
        if asker.member:
            return
        trial = hub_state(request).settings.web.trial
        limits = Limits(trial.messages_per_ip, trial.messages_per_browser, trial.window_s)
        quota.take(client_ip(request), request.cookies.get(TRIAL_COOKIE), limits)

    def check(request: Request, asker: Asker, model: str | None) -> str:
        """The model to run, after the asker's right to chat and the quota are checked."""
        refusal = asker.refusal()
        if refusal is not None:
            raise PermissionDeniedError(refusal, code="email_unverified")
        models = _models(request, asker)
        if not models:
            raise PermissionDeniedError(
                "The trial chat is closed on this pool; sign up to chat.", code="trial_closed"
            )
        chosen = model or models[0]
        if chosen not in models:
            raise InvalidRequestError(f"You cannot chat with {chosen!r} here.", param="model")
        take_quota(request, asker)
        return chosen

    def page(request: Request, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
        asker = _asker(request)
        trial = hub_state(request).settings.web.trial
        response = render(
            request,
            "chat.html",
            {
                "member": asker.member,
                "refusal": asker.refusal(),
                "models": _models(request, asker),
                "trial": trial,
                "transcript": [],
                "error": None,
                **context,
            },
            status_code,
        )
        if TRIAL_COOKIE not in request.cookies:
            response.set_cookie(
                TRIAL_COOKIE,
                secrets.token_urlsafe(16),
                max_age=TRIAL_COOKIE_MAX_AGE_S,
                httponly=True,
                samesite="lax",
                secure=hub_state(request).settings.web.secure_cookies,
            )
        return response

    @router.get("/chat")
    async def chat_page(request: Request) -> HTMLResponse:
        """The chat page: who may chat with what, the quota, and the form."""
        return page(request, {})

    @router.post("/chat")
    async def chat_form(
        request: Request, _: CsrfChecked, message: str = Form(""), model: str = Form("")
    ) -> HTMLResponse:
        """Answer one message with the whole answer (the page without JavaScript)."""
        asker = _asker(request)
        state = hub_state(request)
        trial = state.settings.web.trial
        asked = [{"role": "user", "content": message}]
        try:
            messages = parse_transcript(asked, trial.max_message_chars)
            chosen = check(request, asker, model or None)
            events = await start_page_chat(
                state, messages, chosen, _user_id(asker), trial.max_tokens
            )
        except HubError as exc:
            return page(request, {"error": exc.message}, exc.status_code)
        text, error = await answer_text(events)
        transcript = [*asked, {"role": "assistant", "content": text}]
        return page(request, {"transcript": transcript, "error": error, "model": chosen})

    @router.post("/chat/stream")
    async def chat_stream(request: Request, _: CsrfChecked) -> Response:
        """Stream the answer to the page's transcript (JSON ``{messages, model}``) as SSE."""
        asker = _asker(request)
        state = hub_state(request)
        trial = state.settings.web.trial
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise InvalidRequestError("Send the chat as JSON.") from None
        if not isinstance(body, dict):
            raise InvalidRequestError("Send the chat as a JSON object.")
        messages = parse_transcript(body.get("messages"), trial.max_message_chars)
        model = body.get("model")
        chosen = check(request, asker, model if isinstance(model, str) and model else None)
        events = await start_page_chat(state, messages, chosen, _user_id(asker), trial.max_tokens)
        return EventSourceResponse(_sse(pieces(events)), ping=15)

    return router


def _user_id(asker: Asker) -> UUID | None:
    return asker.user.user_id if asker.user is not None else None


async def _sse(stream: AsyncIterator[Piece]) -> AsyncIterator[ServerSentEvent]:
    async for piece in stream:
        yield ServerSentEvent(data=orjson.dumps({"text": piece.text}).decode(), event=piece.kind)
