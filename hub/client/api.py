"""A small synchronous client of a hub's ``/v1`` API for the ``iamine`` user commands.

httpx with our own SSE parsing rather than the ``openai`` SDK: httpx is already a dependency of
the hub (the SDK is only a dev one), the stream's ``X-Iamine-*`` route headers and the hub's
error events are read directly, and closing the response on Ctrl-C is what cancels the job.
Every failure becomes a :class:`ClientError` with one line to print.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from hub.client.errors import ClientError
from hub.client.profile import Profile

CONVERSATION_HEADER = "X-Conversation-Id"
ROUTE_PREFIX = "x-iamine-"


def describe_error(response: httpx.Response) -> ClientError:
    """The hub's error response as one line: its message, plus what to do about it."""
    status = response.status_code
    message, code = f"HTTP {status}", None
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), error.get("code")
    except (ValueError, KeyError, TypeError):
        if response.text.strip():
            message = f"HTTP {status}: {response.text.strip()[:200]}"
    if status == 401:
        message = f"the hub refused the token: {message} Run `iamine login` with a valid token."
    elif status == 429:
        retry = response.headers.get("retry-after")
        message += f" (retry after {retry} s)" if retry else ""
    return ClientError(message, status=status, code=code)


def route_headers(headers: httpx.Headers) -> dict[str, str]:
    """The hub's ``X-Iamine-*`` and ``X-Conversation-Id`` headers of a chat response."""
    return {
        name: value
        for name, value in headers.items()
        if name.lower().startswith(ROUTE_PREFIX) or name.lower() == CONVERSATION_HEADER.lower()
    }


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """Server-sent events as ``(event, data)`` pairs; comments (the hub's pings) are skipped."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)


@dataclass
class ChatStream:
    """A streamed chat answer: iterate for the text deltas; the rest is filled in on the way."""

    response: httpx.Response
    answer: str = ""
    model: str | None = None
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    review: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.headers = route_headers(self.response.headers)

    @property
    def conversation_id(self) -> str | None:
        """The conversation the hub recorded this exchange in."""
        conversation: str | None = self.response.headers.get(CONVERSATION_HEADER)
        return conversation

    def __iter__(self) -> Iterator[str]:
        for event, data in sse_events(self.response.iter_lines()):
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                error = chunk["error"]
                raise ClientError(str(error.get("message")), code=error.get("code"))
            if event == "review":
                self.review = chunk
                continue
            yield from self._read(chunk)

    def _read(self, chunk: dict[str, Any]) -> Iterator[str]:
        self.model = chunk.get("model") or self.model
        self.usage = chunk.get("usage") or self.usage
        for choice in chunk.get("choices") or ():
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            text = (choice.get("delta") or {}).get("content")
            if text:
                self.answer += text
                yield text


class HubClient:
    """One hub, one token: JSON calls and streamed chats, every failure a :class:`ClientError`."""

    def __init__(self, profile: Profile, timeout_s: float = 120.0) -> None:
        self.profile = profile
        self.http = httpx.Client(
            base_url=profile.hub_url,
            headers={"Authorization": f"Bearer {profile.token}"},
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        )

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One JSON call; the decoded body."""
        with self._translated():
            response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise describe_error(response)
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        """``GET`` with query parameters (``None`` values left out)."""
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    @contextmanager
    def download(self, path: str) -> Iterator[httpx.Response]:
        """A streamed ``GET`` (a large body, such as the memory export)."""
        with self._translated(), self.http.stream("GET", path) as response:
            if response.status_code >= 400:
                response.read()
                raise describe_error(response)
            yield response

    @contextmanager
    def chat(self, body: dict[str, Any], conversation_id: str | None) -> Iterator[ChatStream]:
        """Start a streamed chat; leaving the block closes the stream (the hub cancels the job)."""
        headers = {CONVERSATION_HEADER: conversation_id} if conversation_id else {}
        payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
        with (
            self._translated(),
            self.http.stream("POST", "/v1/chat/completions", json=payload, headers=headers) as r,
        ):
            if r.status_code >= 400:
                r.read()
                raise describe_error(r)
            yield ChatStream(r)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """httpx failures as one-line client errors."""
        hub = self.profile.hub_url
        try:
            yield
        except httpx.ConnectError as exc:
            raise ClientError(f"cannot reach the hub at {hub} ({exc})") from exc
        except httpx.TimeoutException as exc:
            raise ClientError(f"the hub at {hub} did not answer in time ({exc!r})") from exc
        except httpx.HTTPError as exc:
            raise ClientError(f"talking to the hub at {hub} failed: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ClientError(f"the hub at {hub} sent something that is not JSON") from exc
