"""Browser sessions (server-side rows), the signed-in :class:`WebUser`, and CSRF protection.

The session cookie ``iamine_session`` holds 256 random bits; the ``web_sessions`` row keeps only
their SHA-256, so a database dump opens no session. The cookie is HttpOnly, SameSite=Lax, and
Secure when the configured public URL is https. Forms are protected by a double-submit token: the
``iamine_csrf`` cookie's value must come back as the ``csrf_token`` form field or the
``X-CSRF-Token`` header (htmx), which another site can neither read nor set.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated
from urllib.parse import quote
from uuid import UUID

import asyncpg
from fastapi import Depends
from starlette.requests import Request
from starlette.responses import Response

from hub.state import HubState
from hub.web.settings import WebSettings

SESSION_COOKIE = "iamine_session"
CSRF_COOKIE = "iamine_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class WebUser:
    """Who is signed in: a user (``user_id``), or the pool admin by its token (no user)."""

    user_id: UUID | None
    name: str
    is_admin: bool
    email: str | None
    verified: bool = False
    session_id: UUID | None = None


class WebRedirect(Exception):
    """Leave the page for another (303), e.g. to the sign-in page."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class WebForbidden(Exception):
    """Refuse a page or a form with an HTML error page (403 unless told otherwise)."""

    def __init__(self, message: str, status_code: int = 403) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


def hash_secret(secret: str) -> bytes:
    """SHA-256 of a cookie's or a link's secret, as stored."""
    return hashlib.sha256(secret.encode()).digest()


def hub_state(request: Request) -> HubState:
    """The running hub's state (the lifespan's)."""
    state: HubState = request.state.hub
    return state


async def open_session(
    conn: asyncpg.Connection,
    *,
    method: str,
    ttl_s: float,
    user_id: UUID | None = None,
    admin_token_id: UUID | None = None,
    replacing: str | None = None,
) -> tuple[str, UUID]:
    """Store a new session and return its cookie secret (shown to the browser only) and id.

    ``replacing``: the browser's current session cookie, if any; that session ends, so signing
    in again never leaves the old session alive beside the new one.
    """
    if replacing:
        await close_session(conn, replacing)
    secret = secrets.token_urlsafe(32)
    session_id: UUID = await conn.fetchval(
        "INSERT INTO web_sessions (hash, user_id, admin_token_id, method, expires_at) "
        "VALUES ($1, $2, $3, $4, $5) RETURNING id",
        hash_secret(secret),
        user_id,
        admin_token_id,
        method,
        datetime.now(UTC) + timedelta(seconds=ttl_s),
    )
    return secret, session_id


_SESSION_SQL = """
SELECT s.id, s.user_id, u.name, a.email, a.email_verified_at IS NOT NULL AS verified,
       g.user_id IS NOT NULL AS granted
FROM web_sessions s
LEFT JOIN users u ON u.id = s.user_id
LEFT JOIN web_accounts a ON a.user_id = s.user_id
LEFT JOIN admin_grants g ON g.user_id = s.user_id
LEFT JOIN tokens t ON t.id = s.admin_token_id
WHERE s.hash = $1 AND s.expires_at > now()
  AND (u.id IS NULL OR u.disabled_at IS NULL)
  AND (s.admin_token_id IS NULL OR (t.revoked_at IS NULL
       AND (t.expires_at IS NULL OR t.expires_at > now())))
"""


async def load_session(conn: asyncpg.Connection, secret: str) -> WebUser | None:
    """The user of a live session: unexpired, user not disabled, admin token not rotated."""
    row = await conn.fetchrow(_SESSION_SQL, hash_secret(secret))
    if row is None:
        return None
    if row["user_id"] is None:
        return WebUser(None, "admin", True, None, True, row["id"])
    return WebUser(
        row["user_id"], row["name"], row["granted"], row["email"], row["verified"], row["id"]
    )


async def close_session(conn: asyncpg.Connection, secret: str) -> None:
    """Delete a session (sign-out); its key wrap goes with it."""
    await conn.execute("DELETE FROM web_sessions WHERE hash = $1", hash_secret(secret))


async def close_user_sessions(conn: asyncpg.Connection, user_id: UUID) -> None:
    """Delete every session of a user (after a password reset)."""
    await conn.execute("DELETE FROM web_sessions WHERE user_id = $1", user_id)


def set_session_cookie(response: Response, secret: str, web: WebSettings) -> None:
    """Give the browser its session cookie (and a fresh CSRF token: no fixation across sign-in)."""
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        max_age=int(web.session_ttl_s),
        httponly=True,
        samesite="lax",
        secure=web.secure_cookies,
    )
    response.set_cookie(
        CSRF_COOKIE,
        secrets.token_urlsafe(32),
        httponly=True,
        samesite="lax",
        secure=web.secure_cookies,
    )


def clear_session_cookie(response: Response) -> None:
    """Remove the session cookie from the browser."""
    response.delete_cookie(SESSION_COOKIE)


def session_secret(request: Request) -> str | None:
    """The session cookie's secret, if the browser sent one."""
    return request.cookies.get(SESSION_COOKIE)


async def web_user(request: Request) -> WebUser | None:
    """The signed-in user of this request, or None; looked up once and kept on the request."""
    if hasattr(request.state, "web_user"):
        found: WebUser | None = request.state.web_user
        return found
    secret = session_secret(request)
    user = None
    if secret:
        async with hub_state(request).db.pool.acquire() as conn:
            user = await load_session(conn, secret)
    request.state.web_user = user
    return user


def login_redirect(request: Request) -> WebRedirect:
    """A redirect to the sign-in page that comes back to this page afterwards."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return WebRedirect(f"/login?next={quote(here, safe='/')}")


async def require_user(request: Request) -> WebUser:
    """A signed-in user, else a 303 to ``/login?next=…``."""
    user = await web_user(request)
    if user is None:
        raise login_redirect(request)
    return user


async def require_admin(request: Request) -> WebUser:
    """An admin (a user granted admin, or the admin token's session), else sign-in or 403."""
    user = await require_user(request)
    if not user.is_admin:
        raise WebForbidden("This page is for the pool's admins.")
    return user


WebUserDep = Annotated[WebUser, Depends(require_user)]
WebAdminDep = Annotated[WebUser, Depends(require_admin)]


def csrf_token(request: Request) -> str:
    """This browser's CSRF token (its ``iamine_csrf`` cookie), made on first use."""
    token = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf", None)
    if token is None:
        token = request.state.new_csrf = secrets.token_urlsafe(32)
    return str(token)


def set_csrf_cookie(request: Request, response: Response) -> None:
    """Send the CSRF cookie if :func:`csrf_token` had to make one for this request."""
    token = getattr(request.state, "new_csrf", None)
    if token is not None:
        response.set_cookie(
            CSRF_COOKIE,
            token,
            httponly=True,
            samesite="lax",
            secure=hub_state(request).settings.web.secure_cookies,
        )


async def check_csrf(request: Request) -> None:
    """Refuse (403) a POST whose CSRF token is missing or is not this browser's."""
    expected = request.cookies.get(CSRF_COOKIE)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not expected or not sent or not hmac.compare_digest(expected, sent):
        raise WebForbidden(
            "This form was refused: its security token is missing or out of date (a form from "
            "another site, or cookies turned off). Reload the page and try again."
        )


CsrfChecked = Annotated[None, Depends(check_csrf)]


def local_path(target: str | None, default: str = "/") -> str:
    """``target`` if it is a path on this site, else ``default`` (no open redirect).

    Browsers drop tabs and newlines from URLs and read a backslash as ``/``, so ``/<tab>/evil.org``
    would leave the site: a path with either, or starting ``//``, is not local.
    """
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and all(c.isprintable() and not c.isspace() for c in target)
    ):
        return target
    return default
