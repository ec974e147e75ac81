"""The MCP server's way into the hub: its own HTTP API, called with the caller's token.

Every tool goes through the same routes as an API client (same auth, same per-user scoping, same
L1 writes, same errors), so MCP can never see more than the REST API would show that token.
Inside the hub the client talks to the app in-process (an ASGI transport, no socket); from
``iamine mcp`` on stdio it talks to a remote hub over HTTP.
"""

from __future__ import annotations

import json
from typing import Any

import httpx


class BackendError(Exception):
    """The hub refused or failed a call; ``code`` and ``status`` come from its error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class HubBackend:
    """Typed calls to the hub's HTTP API with one bearer token."""

    def __init__(self, client: httpx.AsyncClient, token: str) -> None:
        self._client = client
        self._headers = {"Authorization": f"Bearer {token}"}

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | list[dict[str, Any]] | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        check_path(path)
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = await self._client.request(
                method,
                path,
                json=body,
                params=query,
                headers={**self._headers, **(headers or {})},
            )
        except httpx.InvalidURL as exc:
            message = f"The request cannot be sent: {exc}"
            raise BackendError(400, "invalid_request", message) from exc
        except httpx.HTTPError as exc:
            raise BackendError(503, "hub_unreachable", f"The hub did not answer: {exc}") from exc
        if response.status_code >= 400:
            raise _error(response)
        return response

    async def get(self, path: str, **params: Any) -> Any:
        """GET a JSON document."""
        return (await self._call("GET", path, params=params)).json()

    async def post(
        self,
        path: str,
        body: dict[str, Any] | list[dict[str, Any]],
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """POST a JSON body (an object, or a list of them) and return the JSON answer."""
        return (await self._call("POST", path, body=body, headers=headers, params=params)).json()

    async def delete(self, path: str) -> Any:
        """DELETE a resource and return the JSON answer."""
        return (await self._call("DELETE", path)).json()

    async def post_with_headers(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> tuple[Any, httpx.Headers]:
        """POST and return the JSON answer with the response headers."""
        response = await self._call("POST", path, body=body, headers=headers)
        return response.json(), response.headers


def check_path(path: str) -> None:
    """Refuse a path that is not plainly one hub API resource (a last guard behind the ids).

    httpx resolves ``.`` and ``..`` segments and would read ``?`` or ``#`` as a query or a
    fragment, so a client's text that slipped into a path could address another route.
    """
    segments = path.split("/")
    if (
        not path.startswith("/v1/")
        or any(segment in {"", ".", ".."} for segment in segments[1:])
        or any(char in path for char in "?#\\")
        or not path.isprintable()
    ):
        raise BackendError(400, "invalid_id", f"Refusing to call {path[:80]!r}: not a hub path.")


def _error(response: httpx.Response) -> BackendError:
    try:
        error = response.json()["error"]
        return BackendError(response.status_code, str(error["code"]), str(error["message"]))
    except (json.JSONDecodeError, KeyError, TypeError):
        return BackendError(response.status_code, "http_error", response.text[:200])
