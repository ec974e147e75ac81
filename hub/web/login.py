"""Sign-in and sign-out: by email and password, or by the pool admin token.

A successful sign-in opens a server-side session (:mod:`hub.web.session`). A password sign-in
also gives the session the user's memory key, wrapped under the session's cookie
(:mod:`memory.login_keys`), so that tokens minted in the browser open the user's memory.
Failures are counted per address and per account (:mod:`hub.web.login_limits`).
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Form
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from hub.errors import AuthenticationError
from hub.state import HubState
from hub.web.accounts import find_account, password_matches
from hub.web.login_limits import check_login_allowed, clear_login_failures, record_login_failure
from hub.web.session import (
    CsrfChecked,
    clear_session_cookie,
    close_session,
    hub_state,
    local_path,
    open_session,
    session_secret,
    set_session_cookie,
)
from hub.web.templating import render
from memory.login_keys import sign_in_key, wrap_for_session

router = APIRouter()

BAD_SIGN_IN = "Wrong email or password."


def client_ip(request: Request) -> str:
    """The client's address as the server saw it (a proxy's forwarded address, via uvicorn)."""
    return request.client.host if request.client else "unknown"


async def begin_user_session(
    conn: asyncpg.Connection, request: Request, user_id: UUID, method: str, password: str | None
) -> str:
    """Open a session for a user, with their memory key when the sign-in can open it.

    The browser's current session, if any, ends.
    """
    key = await sign_in_key(conn, user_id, password)
    async with conn.transaction():
        secret, session_id = await open_session(
            conn,
            method=method,
            ttl_s=hub_state(request).settings.web.session_ttl_s,
            user_id=user_id,
            replacing=session_secret(request),
        )
        if key is not None:
            await wrap_for_session(conn, user_id, session_id, key, secret)
    return secret


def signed_in(state: HubState, secret: str, target: str) -> Response:
    """Go on to ``target`` with the new session's cookie."""
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, secret, state.settings.web)
    return response


def _login_page(
    request: Request, next_path: str, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    oidc = hub_state(request).settings.web.oidc
    context = {"next": next_path, "error": error, "email": "", "oidc": oidc}
    return render(request, "login.html", context, status_code)


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    """The sign-in page: email and password, OIDC when configured, the admin token."""
    return _login_page(request, local_path(next, "/dashboard"))


@router.post("/login")
async def login(
    request: Request,
    _csrf: CsrfChecked,
    email: Annotated[str, Form(max_length=254)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    """Sign in with email and password (rate-limited per address and per account)."""
    state = hub_state(request)
    web = state.settings.web
    target = local_path(next, "/dashboard")
    ip = client_ip(request)
    async with state.db.pool.acquire() as conn:
        await check_login_allowed(conn, ip, email, web)
        account = await find_account(conn, email) if email.strip() else None
        matches = await password_matches(account.password_hash if account else None, password)
        if account is None or not matches:
            await record_login_failure(conn, ip, email, web)
            return _login_page(request, target, BAD_SIGN_IN, 401)
        if account.disabled:
            return _login_page(request, target, "This account is disabled.", 403)
        await clear_login_failures(conn, email)
        secret = await begin_user_session(conn, request, account.user_id, "password", password)
    return signed_in(state, secret, target)


@router.post("/logout")
async def logout(request: Request, _csrf: CsrfChecked) -> Response:
    """Sign out: the session row (and its key wrap) is deleted, the cookie dropped."""
    secret = session_secret(request)
    if secret:
        async with hub_state(request).db.pool.acquire() as conn:
            await close_session(conn, secret)
    response = RedirectResponse("/", status_code=303)
    clear_session_cookie(response)
    return response


@router.get("/login/admin")
async def admin_login_form(request: Request) -> HTMLResponse:
    """The admin's sign-in page: paste the pool admin token."""
    return render(request, "login_admin.html", {"error": None})


@router.post("/login/admin")
async def admin_login(
    request: Request,
    _csrf: CsrfChecked,
    token: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """Sign in as the pool admin with an admin token (rate-limited per address)."""
    state = hub_state(request)
    ip = client_ip(request)
    # The account key is per address: a stranger failing must not lock the admin out.
    account = f"admin-token@{ip}"
    async with state.db.pool.acquire() as conn:
        await check_login_allowed(conn, ip, account, state.settings.web)
        try:
            principal = await state.tokens.resolve(token.strip())
        except AuthenticationError:
            principal = None
        if principal is None or "admin" not in principal.scopes:
            await record_login_failure(conn, ip, account, state.settings.web)
            context = {"error": "This is not a live admin token."}
            return render(request, "login_admin.html", context, 401)
        await clear_login_failures(conn, account)
        secret, _ = await open_session(
            conn,
            method="admin_token",
            ttl_s=state.settings.web.session_ttl_s,
            admin_token_id=principal.token_id,
            replacing=session_secret(request),
        )
    return signed_in(state, secret, "/admin")
