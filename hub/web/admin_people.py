"""The admin dashboard's people pages: accounts, tokens and the blacklist.

Accounts list every user with their web sign-in (email, verified) and admin grant; the admin
disables a user (as ``POST /admin/api/users/{name}/disable``: their tokens stop at once) and
grants or withdraws the web admin role (``admin_grants``, read by each request's session).
Tokens are listed as the admin API lists them (never their text) and revoked as the owner's
revoke does, lineage included. The blacklist (:mod:`hub.blacklist`) refuses workers, users
and peer pools; each action drops what it ended from the token cache at once.
"""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Form, Path, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from hub import accounts, blacklist
from hub.errors import HubError
from hub.schemas import USER_NAME_PATTERN
from hub.web.session import CsrfChecked, WebAdminDep, WebForbidden, hub_state
from hub.web.templating import render

router = APIRouter()

UserName = Annotated[str, Path(pattern=USER_NAME_PATTERN)]
Prefix = Annotated[str, Path(pattern=r"^[0-9a-f]{10}$")]

_PEOPLE_SQL = """
SELECT u.id, u.name, u.created_at, u.disabled_at, a.email,
       a.email_verified_at IS NOT NULL AS verified, g.user_id IS NOT NULL AS admin
FROM users u
LEFT JOIN web_accounts a ON a.user_id = u.id
LEFT JOIN admin_grants g ON g.user_id = u.id
ORDER BY u.created_at, u.name
"""


async def list_people(conn: asyncpg.Connection) -> list[dict[str, object]]:
    """Every user with their sign-in email, whether verified, admin, disabled."""
    return [dict(row) for row in await conn.fetch(_PEOPLE_SQL)]


async def set_admin(conn: asyncpg.Connection, name: str, granted: bool) -> None:
    """Grant (or withdraw) the web admin role of the user ``name``."""
    user = await accounts.get_user(conn, name)
    if granted:
        await conn.execute(
            "INSERT INTO admin_grants (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user.id
        )
    else:
        await conn.execute("DELETE FROM admin_grants WHERE user_id = $1", user.id)


def _refused(exc: HubError) -> WebForbidden:
    """A domain error shown as the error page, with its own status."""
    return WebForbidden(exc.message, exc.status_code)


@router.get("/admin/accounts")
async def accounts_page(request: Request, _: WebAdminDep) -> HTMLResponse:
    """Every user: email, verified, admin, disabled; and the actions on each."""
    async with hub_state(request).db.pool.acquire() as conn:
        people = await list_people(conn)
    return render(request, "admin/accounts.html", {"people": people})


@router.post("/admin/accounts/{name}/disable")
async def disable(request: Request, name: UserName, _: WebAdminDep, __: CsrfChecked) -> Response:
    """Disable a user: their tokens, sessions and worker links stop at once."""
    state = hub_state(request)
    try:
        async with state.db.pool.acquire() as conn:
            user = await accounts.disable_user(conn, name)
    except HubError as exc:
        raise _refused(exc) from None
    state.tokens.forget_user(user.id)
    return RedirectResponse("/admin/accounts", status_code=303)


@router.post("/admin/accounts/{name}/admin")
async def grant(
    request: Request,
    name: UserName,
    _: WebAdminDep,
    __: CsrfChecked,
    granted: Annotated[str, Form(pattern="^(yes|no)$")],
) -> Response:
    """Grant (``granted=yes``) or withdraw (``no``) the web admin role."""
    try:
        async with hub_state(request).db.pool.acquire() as conn:
            await set_admin(conn, name, granted == "yes")
    except HubError as exc:
        raise _refused(exc) from None
    return RedirectResponse("/admin/accounts", status_code=303)


@router.get("/admin/tokens")
async def tokens_page(request: Request, _: WebAdminDep) -> HTMLResponse:
    """Every token (never its text): owner, scopes, expiry, last use, revoked."""
    async with hub_state(request).db.pool.acquire() as conn:
        tokens = await accounts.list_tokens(conn)
    return render(request, "admin/tokens.html", {"tokens": tokens})


@router.post("/admin/tokens/{prefix}/revoke")
async def revoke(request: Request, prefix: Prefix, _: WebAdminDep, __: CsrfChecked) -> Response:
    """Revoke a token and the tokens minted from it; their links and streams close."""
    state = hub_state(request)
    try:
        async with state.db.pool.acquire() as conn, conn.transaction():
            record = await accounts.revoke_token(conn, prefix)
            lineage = await accounts.token_lineage(conn, record.id)
    except HubError as exc:
        raise _refused(exc) from None
    for token_id in lineage:
        state.tokens.forget(token_id)
    return RedirectResponse("/admin/tokens", status_code=303)


@router.get("/admin/blacklist")
async def blacklist_page(request: Request, _: WebAdminDep) -> HTMLResponse:
    """The blacklist, and forms to add a worker, a user or a peer pool to it."""
    async with hub_state(request).db.pool.acquire() as conn:
        entries = await blacklist.list_entries(conn)
    return render(request, "admin/blacklist.html", {"entries": entries, "kinds": blacklist.KINDS})


@router.post("/admin/blacklist")
async def add_entry(
    request: Request,
    _: WebAdminDep,
    __: CsrfChecked,
    kind: Annotated[blacklist.Kind, Form()],
    subject: Annotated[str, Form(min_length=1, max_length=200)],
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    """Blacklist a worker (by name), a user (by name) or a peer (by pool id)."""
    state = hub_state(request)
    try:
        async with state.db.pool.acquire() as conn:
            banned = await blacklist.ban(conn, kind, subject, reason)
    except HubError as exc:
        raise _refused(exc) from None
    banned.drop_from(state.tokens)
    return RedirectResponse("/admin/blacklist", status_code=303)


@router.post("/admin/blacklist/{kind}/{subject}/lift")
async def lift_entry(
    request: Request,
    kind: Annotated[blacklist.Kind, Path()],
    subject: Annotated[str, Path(max_length=200)],
    _: WebAdminDep,
    __: CsrfChecked,
) -> Response:
    """Take an entry off the blacklist (a disabled user stays disabled)."""
    try:
        async with hub_state(request).db.pool.acquire() as conn:
            await blacklist.lift(conn, kind, subject)
    except HubError as exc:
        raise _refused(exc) from None
    return RedirectResponse("/admin/blacklist", status_code=303)
