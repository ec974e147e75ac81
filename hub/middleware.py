"""Pure ASGI middleware: request ids, access logs and metrics, and the request-body size limit.

Written as raw ASGI (not ``BaseHTTPMiddleware``) so streaming responses pass through untouched and
each request pays a few attribute lookups, nothing more.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.errors import error_body
from hub.observability import Metrics

log = structlog.get_logger()

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.encode()
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path: str | None = getattr(route, "path", None)
    return path or "unmatched"


def _header(scope: Scope, name: bytes) -> bytes | None:
    """A request header's value (the last one, when repeated), without building a dict."""
    found: bytes | None = None
    for key, value in scope["headers"]:
        if key == name:
            found = bytes(value)
    return found


class RequestContextMiddleware:
    """Give every request an id (echoed in ``X-Request-Id``), log it, and count it.

    The metric children of each method and route are looked up once and kept: the label sets
    are few (one per route template), and a lookup takes the metric's lock.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._latency: dict[tuple[str, str], Histogram] = {}
        self._requests: dict[tuple[str, str, int], Counter] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = (_header(scope, _REQUEST_ID_KEY) or b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        self.metrics.http_in_flight.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (_REQUEST_ID_KEY, request_id.encode()),
                ]
                self._latency_of(scope["method"], _route_template(scope)).observe(
                    time.perf_counter() - started
                )
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.http_in_flight.dec()
            self._requests_of(scope["method"], _route_template(scope), status).inc()
            log.info(
                "http_request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars("request_id")

    def _latency_of(self, method: str, route: str) -> Histogram:
        key = (method, route)
        child = self._latency.get(key)
        if child is None:
            child = self._latency[key] = self.metrics.http_latency.labels(method, route)
        return child

    def _requests_of(self, method: str, route: str, status: int) -> Counter:
        key = (method, route, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.metrics.http_requests.labels(
                method, route, str(status)
            )
        return child


class BodyLimitMiddleware:
    """Refuse bodies larger than ``max_bytes`` with 413, by header or while streaming in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes FastAPI's body parsing untouched and is rendered
                    # by the hub's error handlers as a 413 in the OpenAI shape.
                    raise HTTPException(413, self._message())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:
            if exc.status_code != 413 or response_started:
                raise
            await self._reject(send)

    def _message(self) -> str:
        return f"Request body exceeds the limit of {self.max_bytes} bytes."

    async def _reject(self, send: Send) -> None:
        body: dict[str, Any] = error_body(
            self._message(),
            "invalid_request_error",
            "request_too_large",
        )
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
