"""OpenID Connect sign-in (Authlib's OAuth 2 client over httpx; ID tokens checked with joserfc).

Any issuer works by settings; Google is one configuration of it. The flow is the authorization
code flow with PKCE (S256), a ``state`` bound to the browser by a cookie, and a ``nonce`` checked
in the ID token, whose signature (the issuer's JWKS), issuer, audience and expiry are verified.
The redirect URI is built from the configured public URL, never from the request (a proxy's
``Host`` could be forged).

Who the identity signs in as:

- an identity (issuer, subject) already linked signs in as its user;
- a signed-in user who asked to link (from the dashboard) gets the identity linked to them;
- otherwise a new account is made for it, unless its email belongs to an account already: then
  the sign-in is refused and that account's owner may link it after signing in. Accounts are
  never merged silently by email: that is how account takeovers happened elsewhere.

The issuer must assert ``email_verified: true``; an identity without it is refused.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import structlog
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from fastapi import APIRouter
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from hub.errors import ConflictError
from hub.web.accounts import create_account
from hub.web.login import begin_user_session, signed_in
from hub.web.session import (
    CsrfChecked,
    WebForbidden,
    WebUserDep,
    hub_state,
    local_path,
    web_user,
)
from hub.web.settings import OidcSettings, WebSettings

log = structlog.get_logger()

router = APIRouter()

STATE_COOKIE = "iamine_oidc_state"
CALLBACK_PATH = "/login/oidc/callback"
SCOPE = "openid email profile"


class OidcRefused(WebForbidden):
    """The issuer's answer cannot sign anyone in (refused, unverified, or already taken)."""


@dataclass(frozen=True)
class Identity:
    """What a verified ID token says about its subject."""

    issuer: str
    subject: str
    email: str


def _client(settings: WebSettings) -> AsyncOAuth2Client:
    oidc = settings.oidc
    return AsyncOAuth2Client(
        client_id=oidc.client_id,
        client_secret=oidc.client_secret.get_secret_value(),
        scope=SCOPE,
        redirect_uri=settings.link(CALLBACK_PATH),
        code_challenge_method="S256",
        timeout=oidc.timeout_s,
    )


async def _metadata(client: AsyncOAuth2Client, oidc: OidcSettings) -> dict[str, Any]:
    assert oidc.issuer is not None
    url = oidc.issuer.rstrip("/") + "/.well-known/openid-configuration"
    response = await client.request("GET", url, withhold_token=True)
    response.raise_for_status()
    metadata: dict[str, Any] = response.json()
    if metadata.get("issuer") != oidc.issuer.rstrip("/"):
        raise OidcRefused("The identity provider's discovery document names another issuer.", 502)
    return metadata


def _enabled(settings: WebSettings) -> OidcSettings:
    if not settings.oidc.enabled:
        raise WebForbidden("Sign-in with an identity provider is not configured here.", 404)
    return settings.oidc


async def _start(request: Request, next_path: str, link_user_id: UUID | None) -> Response:
    state = hub_state(request)
    oidc = _enabled(state.settings.web)
    flow_state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
    try:
        async with _client(state.settings.web) as client:
            metadata = await _metadata(client, oidc)
            url, _ = client.create_authorization_url(
                metadata["authorization_endpoint"],
                state=flow_state,
                nonce=nonce,
                code_verifier=verifier,
            )
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        log.warning("oidc_discovery_failed", issuer=oidc.issuer, error=str(exc))
        raise OidcRefused("The identity provider cannot be reached; try again later.", 502) from exc
    async with state.db.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO oidc_flows (state_hash, nonce, code_verifier, next_path, link_user_id, "
            "expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
            hashlib.sha256(flow_state.encode()).digest(),
            nonce,
            verifier,
            next_path,
            link_user_id,
            datetime.now(UTC) + timedelta(seconds=oidc.flow_ttl_s),
        )
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        STATE_COOKIE,
        flow_state,
        max_age=int(oidc.flow_ttl_s),
        path="/login/oidc",
        httponly=True,
        samesite="lax",
        secure=state.settings.web.secure_cookies,
    )
    return response


@router.get("/login/oidc")
async def oidc_login(request: Request, next: str | None = None) -> Response:
    """Go to the identity provider to sign in (or sign up)."""
    return await _start(request, local_path(next, "/dashboard"), None)


@router.post("/dashboard/oidc/link")
async def oidc_link(request: Request, user: WebUserDep, _csrf: CsrfChecked) -> Response:
    """Go to the identity provider to link an identity to the signed-in user."""
    if user.user_id is None:
        raise WebForbidden("The admin token's session has no account to link.")
    return await _start(request, "/dashboard", user.user_id)


async def _verified_identity(
    settings: WebSettings, code: str, verifier: str, nonce: str
) -> Identity:
    oidc = settings.oidc
    async with _client(settings) as client:
        metadata = await _metadata(client, oidc)
        token = await client.fetch_token(
            metadata["token_endpoint"], code=code, code_verifier=verifier
        )
        jwks = await client.request("GET", metadata["jwks_uri"], withhold_token=True)
        jwks.raise_for_status()
    decoded = jwt.decode(token["id_token"], KeySet.import_key_set(jwks.json()))
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": metadata["issuer"]},
        aud={"essential": True, "value": oidc.client_id},
        sub={"essential": True},
        exp={"essential": True},
        nonce={"essential": True, "value": nonce},
    ).validate(decoded.claims)
    claims = decoded.claims
    if claims.get("email_verified") is not True or not isinstance(claims.get("email"), str):
        raise OidcRefused(
            "The identity provider did not confirm this identity's email address, so it cannot "
            "sign in here. Confirm the address with the provider, or sign up with email and "
            "password."
        )
    return Identity(str(metadata["issuer"]), str(claims["sub"]), claims["email"])


async def _take_flow(conn: asyncpg.Connection, flow_state: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "DELETE FROM oidc_flows WHERE state_hash = $1 RETURNING *, expires_at > now() AS live",
        hashlib.sha256(flow_state.encode()).digest(),
    )
    return row if row is not None and row["live"] else None


@router.get(CALLBACK_PATH)
async def oidc_callback(
    request: Request,
    state: str = "",
    code: str = "",
    error: str = "",
) -> Response:
    """The identity provider's answer: sign in, link, or make a new account."""
    hub = hub_state(request)
    _enabled(hub.settings.web)
    cookie = request.cookies.get(STATE_COOKIE, "")
    if error:
        log.info("oidc_sign_in_refused_by_issuer", error=error[:64])
        raise OidcRefused("The identity provider refused the sign-in.")
    if not state or not code or not secrets.compare_digest(cookie, state):
        raise OidcRefused("This sign-in did not start in this browser; start it again.", 400)
    async with hub.db.pool.acquire() as conn:
        flow = await _take_flow(conn, state)
    if flow is None:
        raise OidcRefused("This sign-in is unknown or took too long; start it again.", 400)
    try:
        identity = await _verified_identity(
            hub.settings.web, code, flow["code_verifier"], flow["nonce"]
        )
    except (httpx.HTTPError, OAuthError, JoseError, KeyError, ValueError) as exc:
        log.warning("oidc_callback_failed", issuer=hub.settings.web.oidc.issuer, error=str(exc))
        raise OidcRefused("The identity provider's answer could not be verified.", 502) from exc
    async with hub.db.pool.acquire() as conn:
        if flow["link_user_id"] is not None:
            return await _link(request, conn, identity, flow["link_user_id"])
        user_id = await _user_of(conn, identity)
        secret = await begin_user_session(conn, request, user_id, "oidc", None)
    response = signed_in(hub, secret, flow["next_path"])
    response.delete_cookie(STATE_COOKIE, path="/login/oidc")
    return response


async def _link(
    request: Request, conn: asyncpg.Connection, identity: Identity, user_id: UUID
) -> Response:
    user = await web_user(request)
    if user is None or user.user_id != user_id:
        raise OidcRefused("Sign in to the account you want to link, then start again.")
    linked = await conn.fetchval(
        "INSERT INTO oidc_identities (issuer, subject, user_id, email) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (issuer, subject) DO NOTHING RETURNING user_id",
        identity.issuer,
        identity.subject,
        user_id,
        identity.email,
    )
    owner = linked or await conn.fetchval(
        "SELECT user_id FROM oidc_identities WHERE issuer = $1 AND subject = $2",
        identity.issuer,
        identity.subject,
    )
    if owner != user_id:
        raise OidcRefused("This identity signs in to another account already.", 409)
    return RedirectResponse("/dashboard", status_code=303)


async def _user_of(conn: asyncpg.Connection, identity: Identity) -> UUID:
    """The user this identity signs in as; a new account when it is new and its email is free."""
    row = await conn.fetchrow(
        "SELECT i.user_id, u.disabled_at IS NOT NULL AS disabled FROM oidc_identities i "
        "JOIN users u ON u.id = i.user_id WHERE i.issuer = $1 AND i.subject = $2",
        identity.issuer,
        identity.subject,
    )
    if row is not None:
        if row["disabled"]:
            raise OidcRefused("This account is disabled.")
        user_id: UUID = row["user_id"]
        return user_id
    async with conn.transaction():
        try:
            account = await create_account(
                conn, email=identity.email, password_hash=None, verified=True
            )
        except ConflictError:
            raise OidcRefused(
                "An account with this email exists already. Log in to it with its password, "
                "then link this identity from your dashboard.",
                409,
            ) from None
        await conn.execute(
            "INSERT INTO oidc_identities (issuer, subject, user_id, email) VALUES ($1, $2, $3, $4)",
            identity.issuer,
            identity.subject,
            account.user_id,
            identity.email,
        )
    return account.user_id
