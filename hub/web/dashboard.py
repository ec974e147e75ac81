"""The user's dashboard (``/dashboard``): their API tokens (list, create — shown once — revoke),
and ready configurations of agent clients for this hub (``/dashboard/tools``).

Tokens are the same as the CLI's and the API's (:mod:`hub.accounts`). A token minted here gets the
user's memory key wrapped for it (:func:`memory.keys.link_token`) when the session holds that key
(:mod:`memory.login_keys`); otherwise it is issued the way the admin's tokens are
(:func:`memory.keys.issue_key`): the user's first key, or locked until linked. Only a verified
account may mint tokens.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Form
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from economy.accounts import AccountKey, Balance, read_balance
from economy.errors import AccountNotFound
from hub import accounts
from hub.cli_ledger import credits
from hub.client.configs import BUILDERS, TOKEN_ENV, client_config
from hub.errors import NotFoundError
from hub.preferences import Preferences
from hub.web.session import CsrfChecked, WebForbidden, WebUser, WebUserDep, hub_state
from hub.web.session import session_secret as cookie_secret
from hub.web.templating import render
from memory import l2
from memory.keys import KeyIssue, UserKey, issue_key, link_token
from memory.login_keys import open_with_session

router = APIRouter()

PREFIX_PATTERN = re.compile(r"^[0-9a-f]{10}$")
EXPIRY_DAYS = (0, 7, 30, 90, 365)
TRUST_LEVELS = range(4)  # docs/trust.md


def own_user_id(user: WebUser) -> UUID:
    """The signed-in member's user id; the admin token's session has none (403)."""
    if user.user_id is None:
        # The admin token's session acts for no user: it has the admin pages instead.
        raise WebForbidden("The admin token has no dashboard of its own; use the admin pages.")
    return user.user_id


async def session_key(conn: asyncpg.Connection, request: Request, user: WebUser) -> UserKey | None:
    """The member's memory key as this browser session holds it (None: it holds none)."""
    if user.user_id is None or user.session_id is None:
        return None
    secret = cookie_secret(request) or ""
    return await open_with_session(conn, user.user_id, user.session_id, secret)


async def _credits(conn: asyncpg.Connection, user_id: UUID) -> dict[str, str]:
    """The member's $IAMINE: spending balance, what it leaves available, workers' earnings."""
    now = datetime.now(UTC)
    found = {}
    for name, account in (
        ("spending", AccountKey.user(user_id)),
        ("earnings", AccountKey.worker_owner(user_id)),
    ):
        try:
            found[name] = await read_balance(conn, account, now)
        except AccountNotFound:
            found[name] = Balance(account, 0, 0, 0)
    return {
        "balance": credits(found["spending"].balance),
        "available": credits(found["spending"].available),
        "earned": credits(found["earnings"].balance),
    }


async def _page(
    request: Request, user: WebUser, issued: dict[str, Any] | None = None, status_code: int = 200
) -> HTMLResponse:
    state = hub_state(request)
    user_id = own_user_id(user)
    async with state.db.pool.acquire() as conn:
        tokens = await accounts.list_tokens(conn, user_id=user_id)
        holds_key = await session_key(conn, request, user) is not None
        preferences = await l2.load_preferences(conn, user_id)
        money = await _credits(conn, user_id) if state.settings.economy.enabled else None
    context = {
        "money": money,
        "preferences": preferences,
        "choices": await state.preferences.get(user_id),
        "trust_levels": TRUST_LEVELS,
        "tokens": tokens,
        "issued": issued,
        "holds_key": holds_key,
        "expiry_days": EXPIRY_DAYS,
        "oidc": state.settings.web.oidc,
    }
    return render(request, "dashboard.html", context, status_code)


@router.get("/dashboard")
async def dashboard(request: Request, user: WebUserDep) -> Response:
    """The signed-in user's dashboard (the admin token's session goes to the admin pages)."""
    if user.user_id is None:
        return RedirectResponse("/admin", status_code=303)
    return await _page(request, user)


@router.get("/dashboard/tools")
async def tools(request: Request, user: WebUserDep) -> HTMLResponse:
    """Ready configurations of agent clients for this hub's public URL and its models now.

    The same builders as ``iamine connect`` and ``/v1/client-config`` (OpenCode, Cursor, aider,
    Claude Code, Continue, the OpenAI SDK); no configuration holds a token.
    """
    own_user_id(user)
    state = hub_state(request)
    base = state.settings.web.public_url
    models = state.workers.models()
    configs = [config for name in BUILDERS if (config := client_config(name, base, models))]
    context = {"configs": configs, "base": base.rstrip("/"), "token_env": TOKEN_ENV}
    return render(request, "dashboard_tools.html", context)


@router.get("/me")
async def me(user: WebUserDep) -> Response:
    """The issue's name for the dashboard."""
    return RedirectResponse("/dashboard", status_code=303)


@router.post("/dashboard/tokens")
async def create_token(
    request: Request,
    user: WebUserDep,
    _csrf: CsrfChecked,
    name: Annotated[str, Form(max_length=100)] = "",
    expires_in_days: Annotated[int, Form(ge=0, le=3650)] = 0,
) -> HTMLResponse:
    """Mint an API token for the signed-in, verified user; its text is shown this once."""
    user_id = own_user_id(user)
    if not user.verified:
        raise WebForbidden(
            "Confirm your email address first: follow the link we mailed you, or send a new one "
            "from your dashboard."
        )
    state = hub_state(request)
    expires_at = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    async with state.db.pool.acquire() as conn, conn.transaction():
        issued = await accounts.create_token(
            conn, user_id=user_id, scopes=("user",), name=name.strip(), expires_at=expires_at
        )
        key = await session_key(conn, request, user)
        if key is not None:
            await link_token(conn, key, user_id, issued.record.id, issued.token)
            memory = KeyIssue.LINKED
        else:
            memory = await issue_key(conn, user_id, issued.record.id, issued.token, ("user",))
    shown = {"token": issued.token, "name": issued.record.name, "memory": memory.value}
    return await _page(request, user, shown, 201)


@router.post("/dashboard/preferences")
async def preferences(
    request: Request,
    user: WebUserDep,
    _csrf: CsrfChecked,
    min_trust: Annotated[str, Form(max_length=1)] = "0",
    auto_review: Annotated[bool, Form()] = False,
    federation_chat: Annotated[bool, Form()] = False,
    federation_memory: Annotated[bool, Form()] = False,
) -> Response:
    """Replace the member's chat preferences, as ``PUT /v1/preferences`` does."""
    user_id = own_user_id(user)
    if not min_trust.isdigit() or int(min_trust) not in TRUST_LEVELS:
        raise WebForbidden("The least worker trust is a level from 0 to 3.", status_code=400)
    wanted = Preferences(auto_review, int(min_trust), federation_chat, federation_memory)
    await hub_state(request).preferences.save(user_id, wanted)
    return RedirectResponse("/dashboard", status_code=303)


@router.post("/dashboard/tokens/{prefix}/revoke")
async def revoke_token(
    request: Request, prefix: str, user: WebUserDep, _csrf: CsrfChecked
) -> Response:
    """Revoke one of the user's tokens (and the tokens minted from it); it stops at once."""
    user_id = own_user_id(user)
    if not PREFIX_PATTERN.match(prefix):
        raise WebForbidden("That is not a token prefix.", status_code=400)
    state = hub_state(request)
    try:
        async with state.db.pool.acquire() as conn, conn.transaction():
            record = await accounts.revoke_token(conn, prefix, user_id=user_id)
            lineage = await accounts.token_lineage(conn, record.id)
    except NotFoundError:
        raise WebForbidden("You have no token with this prefix.", status_code=404) from None
    for token_id in lineage:
        state.tokens.forget(token_id)
    return RedirectResponse("/dashboard", status_code=303)
