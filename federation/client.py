"""Signed calls to peers: sign the request, send it, authenticate the answer, keep the backoff.

Each call to an admitted peer ends in :func:`federation.peers.record_success` or
:func:`federation.peers.record_failure` on that peer's row, so the next caller (gossip, overflow)
sees its backoff. A 2xx answer is accepted only when it is signed by the peer's key, bound to
this very request, and its digest matches its body; anything else raises :class:`PeerFailed`.
No database connection is held while a peer is awaited.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson

from federation import peers
from federation.errors import PeerFailed, SignatureRejected
from federation.identity import PoolIdentity
from federation.settings import FederationSettings
from federation.signatures import (
    SignedRequest,
    SignedResponse,
    header_fields,
    sign_request,
    verify_response,
)

Clock = Callable[[], datetime]
Acquire = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


def utc_now() -> datetime:
    """The wall clock, in UTC (signatures carry Unix times)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Exchange:
    """One signed request sent and the raw answer it got."""

    request: SignedRequest
    status: int
    headers: dict[str, str]
    body: bytes


class PeerClient:
    """Talks to peer pools on behalf of this pool (one ``httpx.AsyncClient``, owned elsewhere)."""

    def __init__(
        self,
        identity: PoolIdentity,
        settings: FederationSettings,
        http: httpx.AsyncClient,
        acquire: Acquire,
        *,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        self.settings = settings
        self.http = http
        self._acquire = acquire
        self._clock = clock
        self._rng = rng

    async def exchange(
        self, url: str, method: str, path: str, payload: dict[str, Any] | None = None
    ) -> Exchange:
        """Sign and send one request to the pool at ``url``; ``peer_unreachable`` if no answer."""
        body = b"" if payload is None else orjson.dumps(payload)
        # identity: the digest covers the bytes as sent; a compressed answer would not match.
        headers = {"accept": "application/json", "accept-encoding": "identity"}
        if payload is not None:
            headers["content-type"] = "application/json"
        request = SignedRequest(method, url + path, headers)
        sign_request(self.identity, request, body, now=self._clock())
        try:
            response = await self.http.request(
                method,
                request.url,
                content=body,
                headers=request.headers,
                timeout=self.settings.request_timeout_s,
            )
        except httpx.HTTPError as exc:
            raise PeerFailed(
                f"{url} did not answer: {type(exc).__name__} {exc}".strip(),
                code="peer_unreachable",
            ) from None
        fields = header_fields(response.headers.multi_items())
        return Exchange(request, response.status_code, fields, response.content)

    def answer(self, exchange: Exchange, keyid: str, public_key: bytes) -> dict[str, Any]:
        """The JSON object of a 2xx answer signed by ``keyid``; :class:`PeerFailed` otherwise."""
        where = exchange.request.url
        if not 200 <= exchange.status < 300:
            raise self.refusal(exchange)
        response = SignedResponse(exchange.status, exchange.headers, exchange.request)
        try:
            verify_response(
                response,
                exchange.body,
                keyid,
                public_key,
                max_age_s=self.settings.max_age_s,
                skew_s=self.settings.clock_skew_s,
            )
        except SignatureRejected as exc:
            raise PeerFailed(
                f"{where} answered without a valid signature of {keyid}: {exc.message}",
                code="peer_answer_invalid",
                status=exchange.status,
            ) from None
        data = _json_object(exchange.body)
        if data is None:
            raise PeerFailed(
                f"{where} answered something other than a JSON object.",
                code="peer_answer_invalid",
                status=exchange.status,
            )
        return data

    def refusal(self, exchange: Exchange) -> PeerFailed:
        """The error for a peer's non-2xx answer, with the peer's own code and message."""
        code, message = _error_of(exchange.body)
        return PeerFailed(
            f"{exchange.request.url} refused ({exchange.status}): {message}",
            code=code,
            status=exchange.status,
        )

    async def call(
        self, peer: peers.Peer, method: str, path: str, payload: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One authenticated call to an admitted peer, recorded in its backoff either way."""
        try:
            exchange = await self.exchange(peer.url, method, path, payload)
            data = self.answer(exchange, peer.pool_id, peer.public_key)
        except PeerFailed as exc:
            async with self._acquire() as conn:
                await peers.record_failure(
                    conn,
                    peer.pool_id,
                    self._clock(),
                    f"{exc.code}: {exc.message}",
                    initial_s=self.settings.backoff_initial_s,
                    max_s=self.settings.backoff_max_s,
                    rng=self._rng,
                )
            raise
        async with self._acquire() as conn:
            await peers.record_success(conn, peer.pool_id, self._clock())
        return data


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _error_of(body: bytes) -> tuple[str, str]:
    """The code and message of a peer's OpenAI-shaped error body, as far as it has them."""
    data = _json_object(body) or {}
    error = data.get("error")
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        if isinstance(code, str) and isinstance(message, str):
            return code[:100], message[:500]
    return "peer_error", body[:200].decode("utf-8", "replace") or "no error body"
