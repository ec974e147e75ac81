"""The chat route's own way in: ``POST /v1/chat/completions`` skips FastAPI's request machinery.

Every chat passed through Starlette's error and exception middleware, FastAPI's exit-stack
middleware, the router and the route's request-response wrapper before reaching the endpoint,
and each response message back out through their ``send`` wrappers: between uvicorn and the
endpoint, 39 % of the hub's samples at 50 clients plain, 17 % once this path was taken
(bench/README.md, "Fifth round"). :class:`HubApp` hands that one route to the same endpoint
function directly, wrapped in the hub's own two middlewares (request id, access log, metrics;
body limit) and answered through the app's own exception handlers, so a chat's responses,
errors, headers, logs and metrics are exactly those of the routed path. Every other request,
and the OpenAPI description of this one, is FastAPI's.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

CHAT_PATH = "/v1/chat/completions"

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Any], Response | Awaitable[Response]]


class HubApp(FastAPI):
    """The hub's FastAPI app, with the chat route answered before FastAPI's routing.

    :meth:`serve_chat_directly` turns the short path on once the routes and handlers exist
    (``create_app``); until then, and for every other request, the app is plain FastAPI.
    """

    _chat: ASGIApp | None = None

    def serve_chat_directly(self, router: APIRouter, wrap: Callable[[ASGIApp], ASGIApp]) -> None:
        """Answer ``POST CHAT_PATH`` with ``router``'s endpoint for it, inside ``wrap``'s
        middleware (the route stays in ``router``, which describes it in the OpenAPI schema)."""
        route = next(
            r
            for r in router.routes
            if isinstance(r, APIRoute) and r.path == CHAT_PATH and "POST" in (r.methods or ())
        )
        self._chat = wrap(_DirectRoute(self, route, route.endpoint))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chat = self._chat
        if (
            chat is not None
            and scope["type"] == "http"
            and scope["path"] == CHAT_PATH
            and scope["method"] == "POST"
        ):
            await chat(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class _DirectRoute:
    """One endpoint as an ASGI app, its exceptions answered by the app's handlers."""

    def __init__(self, app: FastAPI, route: BaseRoute, endpoint: Endpoint) -> None:
        self.app = app
        self.route = route
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self.app
        scope["route"] = self.route  # the metrics' route label, as FastAPI's router sets it
        request = Request(scope, receive)
        try:
            response = await self.endpoint(request)
        except Exception as exc:
            handler = self._handler(exc)
            answer = handler(request, exc)
            await (await answer if inspect.isawaitable(answer) else answer)(scope, receive, send)
            if handler is self.app.exception_handlers.get(Exception):
                raise  # as Starlette's ServerErrorMiddleware does: the server logs it too
            return
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Handler:
        """The app's handler for ``exc``: its class's, else the nearest base class's."""
        handlers: dict[Any, Handler] = self.app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        raise exc
