"""The hub's error tree and its one mapping to OpenAI-shaped HTTP error bodies.

Every error a client can see has a machine-readable ``code``. Domain packages raise their own
subclasses; only this module turns them into HTTP responses, so every ``/v1`` error body has the
same shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from memory.crypto import CryptoError
from memory.errors import MemoryStoreError

log = structlog.get_logger()


class HubError(Exception):
    """Base of every error the hub reports to a client."""

    status_code = 500
    error_type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequestError(HubError):
    """The request is malformed or names an invalid parameter."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationError(HubError):
    """No usable bearer token: missing, malformed, unknown, revoked or expired."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(HubError):
    """The token is valid but lacks the scope the route needs."""

    status_code = 403
    error_type = "permission_error"
    code = "insufficient_scope"


class NotFoundError(HubError):
    """The addressed resource does not exist (or is not the caller's)."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    """No connected worker serves the requested model."""

    code = "model_not_found"


class UpstreamFailedError(HubError):
    """The worker failed the job and no other worker could take it."""

    status_code = 502
    error_type = "server_error"
    code = "worker_failed"


class ContextLengthExceededError(InvalidRequestError):
    """The prompt cannot fit the context of any worker of the model (OpenAI's code)."""

    code = "context_length_exceeded"


class PoolBusyError(HubError):
    """Every worker of the model is alive but busy past the queue's bound; retry later."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "pool_busy"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConflictError(HubError):
    """The request conflicts with existing state (a duplicate name, say)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class PayloadTooLargeError(HubError):
    """The request body is larger than the configured limit."""

    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class DatabaseError(HubError):
    """The database is unusable for the hub (unreachable, wrong schema, missing extension)."""

    code = "database_error"


class MigrationError(DatabaseError):
    """Migrations cannot be applied or a recorded migration's file has changed."""

    code = "migration_error"


_STATUS_DEFAULTS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "insufficient_scope"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limited"),
}


def error_body(
    message: str, error_type: str, code: str, param: str | None = None
) -> dict[str, Any]:
    """Return the OpenAI-shaped error body."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    error_type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Build a JSON error response, filling type and code from the status when not given."""
    default_type, default_code = _STATUS_DEFAULTS.get(status, ("server_error", "internal_error"))
    body = error_body(message, error_type or default_type, code or default_code, param)
    return JSONResponse(body, status_code=status, headers=headers)


def _param_from_location(loc: tuple[Any, ...]) -> str | None:
    """Turn a pydantic error location like ``("body", "messages", 0)`` into ``messages[0]``."""
    # Only the first element names the location; a field may itself be called `body`.
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    if not parts:
        return None
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


async def _hub_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HubError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    if isinstance(exc, PoolBusyError):
        headers = {"Retry-After": str(max(exc.retry_after_s, 1))}
    if exc.status_code >= 500:
        log.error("hub_error", code=exc.code, error=exc.message)
    return error_response(
        exc.status_code,
        exc.message,
        error_type=exc.error_type,
        code=exc.code,
        param=exc.param,
        headers=headers,
    )


# Memory's crypto errors by code; any other code is a damaged wrap or ciphertext: a server fault.
_CRYPTO_ERRORS: dict[str, tuple[int, str]] = {"memory_locked": (403, "permission_error")}


async def _crypto_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CryptoError)
    status, error_type = _CRYPTO_ERRORS.get(exc.code, (500, "server_error"))
    if status >= 500:
        log.error("memory_crypto_error", code=exc.code, error=exc.message)
    return error_response(status, exc.message, error_type=error_type, code=exc.code)


# Semantic memory's errors by code; an unknown code is a server fault.
_MEMORY_ERRORS: dict[str, tuple[int, str]] = {
    "invalid_namespace": (400, "invalid_request_error"),
    "namespace_forbidden": (403, "permission_error"),
    "namespace_not_found": (404, "invalid_request_error"),
    "namespace_exists": (409, "invalid_request_error"),
    "embedding_model_missing": (503, "server_error"),
}


async def _memory_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MemoryStoreError)
    status, error_type = _MEMORY_ERRORS.get(exc.code, (500, "server_error"))
    if status >= 500:
        log.error("memory_error", code=exc.code, error=exc.message)
    return error_response(
        status, exc.message, error_type=error_type, code=exc.code, param=exc.param
    )


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return error_response(400, "The request body is not valid JSON.", code="invalid_json")
    param = _param_from_location(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value"))
    if param:
        message = f"Invalid value for '{param}': {message}"
    return error_response(400, message, code="invalid_value", param=param)


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
    if exc.status_code == 404:
        message = f"No route for {request.method} {request.url.path}."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    return error_response(exc.status_code, message, headers=dict(exc.headers or {}))


async def _unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled_error", path=request.url.path)
    return error_response(500, "The hub failed to handle this request.")


def install_error_handlers(app: FastAPI) -> None:
    """Register the one mapping from exceptions to OpenAI-shaped error responses."""
    app.add_exception_handler(HubError, _hub_error_handler)
    app.add_exception_handler(CryptoError, _crypto_error_handler)
    app.add_exception_handler(MemoryStoreError, _memory_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _unhandled_error_handler)
