"""The MCP server mounted at ``/mcp`` (streamable HTTP), behind the hub's bearer-token check.

Requests without a valid ``user`` token get the same 401 as the API, before the MCP transport sees
them. Tools then call the hub's own API in-process (an ASGI transport into this very app, with
the lifespan's state), so MCP and REST share one implementation of every rule.

A session belongs to the token that opened it (the SDK answers 404 to any other credential), and
every request re-resolves its token, so a revoked token's session can do nothing more; its open
streams (the GET stream, a tool call's response) hold a lease on the token and are cut when it
dies. The SDK has no public call to end a session by id: it goes at its idle timeout.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
from fastapi import FastAPI
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.auth import Principal, parse_bearer
from hub.config import Settings
from hub.errors import AuthenticationError, HubError, error_response
from hub.state import HubState
from mcp_server.server import bearer_from_headers, build_server

LOCAL_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
MCP_PATH = "/mcp"


class _InProcess:
    """The hub app, called in-process with the lifespan state that uvicorn gives real requests."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None
        self.state: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "the MCP mount is not attached to an app"
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": dict(self.state)}
        await self.app(scope, receive, send)


class _RequireUserToken:
    """401/403 in the OpenAI shape unless the request carries a live ``user`` token.

    The request then runs under a lease on its token: if the token dies meanwhile, the request
    is cancelled, its stream cut (or a 401 sent, when no response has started).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hub: HubState = scope["state"]["hub"]
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1") or None
        try:
            principal = await hub.tokens.resolve(parse_bearer(header))
            principal.require("user")
        except HubError as exc:
            if isinstance(exc, AuthenticationError):
                hub.metrics.auth_failures.labels(exc.code).inc()
            await _refuse(exc, scope, receive, send)
            return
        started = False
        died: list[str] = []

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        with anyio.CancelScope() as request:

            def end(reason: str) -> None:
                died.append(reason)
                request.cancel()

            with hub.tokens.leases.hold(principal.token_id, principal.user_id, end):
                await self.app({**scope, "user": _session_owner(principal)}, receive, tracked)
        if died and not started:
            message = f"This API key stopped working ({died[0]})."
            await _refuse(AuthenticationError(message, code=died[0]), scope, receive, send)


async def _refuse(exc: HubError, scope: Scope, receive: Receive, send: Send) -> None:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    response = error_response(
        exc.status_code, exc.message, error_type=exc.error_type, code=exc.code, headers=headers
    )
    await response(scope, receive, send)


def _session_owner(principal: Principal) -> AuthenticatedUser:
    """The credential the SDK binds a new session to, and checks on each of its requests."""
    return AuthenticatedUser(
        AccessToken(
            token=principal.token_prefix,
            client_id=str(principal.token_id),
            scopes=sorted(principal.scopes),
            subject=str(principal.user_id),
        )
    )


class McpMount:
    """The MCP server of one hub app: its ASGI app, its in-process client, its session manager."""

    def __init__(self, settings: Settings) -> None:
        self._target = _InProcess()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self._target),
            base_url="http://iamine.internal",
            timeout=settings.inference.job_deadline_s,
        )
        self.server: MCPServer = build_server(self.client, bearer_from_headers)
        allowed = [*LOCAL_HOSTS, *settings.server.mcp_allowed_hosts]
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection="*" not in allowed,
            allowed_hosts=allowed,
            allowed_origins=[f"http://{h}" for h in allowed],
        )
        self.asgi: ASGIApp = _RequireUserToken(
            self.server.streamable_http_app(
                streamable_http_path=MCP_PATH,
                transport_security=security,
                host=settings.server.host,
            )
        )

    def attach(self, app: FastAPI) -> None:
        """Serve the MCP endpoint at ``/mcp`` of ``app`` and let tools call ``app``.

        A plain route, not a mount: a mount would redirect ``/mcp`` to ``/mcp/``, which some MCP
        clients do not follow for POST.
        """
        self._target.app = app
        app.router.routes.append(Route(MCP_PATH, endpoint=self.asgi))

    def bind(self, state: dict[str, Any]) -> None:
        """Give in-process calls the lifespan state (done once the hub is up)."""
        self._target.state.update(state)

    async def aclose(self) -> None:
        """Close the in-process client."""
        await self.client.aclose()
