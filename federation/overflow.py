"""Overflow ("RAID sortant"): the router's peer step that sends a chat to a peer pool.

When no local worker can take a chat soon, :class:`ChatPeerStep` (one per chat) picks the best
live offer of the model from the in-memory :class:`~federation.capabilities.CapabilityBook`
(no database query unless a peer is actually used), sends the chat to that peer's signed
``POST /v1/federation/forward`` as a stream, and turns the peer's OpenAI chunks back into the
pool's job events, so the chat goes on through the same relay, bookkeeping and billing as a
local one. The peer ends its stream with a signed receipt (``federation/receipts.py``); a
valid one becomes a :class:`PeerCharge` that the hub's billing posts (the user pays what the
peer charged, bounded by the peer's gossiped price), and its speed is measured here.

A peer that refuses or cannot be reached before answering is skipped (the next best one is
tried, then the local doctrine applies); one that fails mid-answer ends the job with
``JobFailed`` (``peer_lost``), which the client's stream reports as a failure. The forwarded
chat carries the messages the caller gives (no recalled memory unless the user allowed it) and
no user identity unless allowed.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
import structlog
from pydantic import ValidationError

from federation import peers
from federation.capabilities import PeerOffer
from federation.client import utc_now
from federation.errors import PeerFailed
from federation.receipts import RECEIPT_EVENT, Receipt, StreamDigest, read_receipt
from federation.service import Federation
from federation.signatures import SignedRequest, sign_request
from inference.dispatch import Forwarded, JobFailed
from inference.protocol import Chunk, Delta, Done, Job, Usage

log = structlog.get_logger()

FORWARD_PATH = "/v1/federation/forward"
PEER_LOST = "peer_lost"


@dataclass(frozen=True)
class PeerCharge:
    """A peer's signed charge for a chat it served, with the price it gossiped (a bound)."""

    receipt: Receipt
    price_per_1k: int


def forward_body(
    job: Job, *, messages: list[dict[str, Any]], visited: list[str], user: str | None
) -> dict[str, Any]:
    """The body of a forward: an OpenAI chat request (always streamed) plus the route so far."""
    params = job.params.model_dump(exclude_none=True)
    body: dict[str, Any] = {
        "model": job.model,
        "messages": messages,
        "stream": True,
        **params,
        "hops": len(visited),
        "visited": visited,
        "iamine_job": job.job_id,
    }
    if job.tools:
        body["tools"] = job.tools
    if job.tool_choice is not None:
        body["tool_choice"] = job.tool_choice
    if user is not None:
        body["user"] = user
    return body


@dataclass
class ChatPeerStep:
    """A request's peer step: offers from the book, the forward, each receipt into ``charges``.

    ``messages`` replaces the job's messages in the forward (the chat without recalled memory,
    unless the user allowed memory to travel); ``user`` is sent only when the user allowed it.
    """

    federation: Federation
    pool: asyncpg.Pool
    charges: list[PeerCharge]
    messages: list[dict[str, Any]] | None = None
    user: str | None = None

    def wanted(self, model: str, predicted_wait_s: Callable[[], float]) -> bool:
        """Forward when some live peer offers the model and no local worker is free soon."""
        settings = self.federation.settings.overflow
        if not settings.enabled or self._offer(model, set()) is None:
            return False
        return predicted_wait_s() > settings.wait_s

    def _offer(self, model: str, tried: set[str]) -> PeerOffer | None:
        return self.federation.capabilities.best(model, exclude=tried, now=utc_now())

    async def open(self, job: Job) -> Forwarded | None:
        """Send the job to the best live peers in turn; the first that accepts streams it."""
        settings = self.federation.settings.overflow
        if not settings.enabled:
            return None
        tried: set[str] = set()
        for _ in range(settings.peer_tries):
            offer = self._offer(job.model, tried)
            if offer is None:
                return None
            tried.add(offer.pool_id)
            async with self.pool.acquire() as conn:
                peer = await peers.find_peer(conn, offer.pool_id)
            if peer is None or not peer.due(utc_now()):  # gone, or failing: let it back off
                continue
            try:
                response, signed = await self._send(peer, job)
            except PeerFailed as exc:
                log.info("overflow_peer_refused", peer=peer.pool_id, code=exc.code, job=job.job_id)
                if exc.status is None or exc.status >= 500:
                    await self._failed(peer, exc)
                continue
            events = self._relay(response, signed, peer, offer, job)
            return Forwarded(peer.pool_id, events)
        return None

    async def _send(self, peer: peers.Peer, job: Job) -> tuple[httpx.Response, SignedRequest]:
        """Open the forward's stream; :class:`PeerFailed` unless the peer accepted the job."""
        client, own = self.federation.client, self.federation.identity.pool_id
        payload = forward_body(
            job,
            messages=self.messages if self.messages is not None else job.messages,
            visited=[own],
            user=self.user,
        )
        body = orjson.dumps(payload)
        headers = {
            "accept": "text/event-stream",
            "accept-encoding": "identity",
            "content-type": "application/json",
        }
        signed = SignedRequest("POST", peer.url + FORWARD_PATH, headers)
        sign_request(client.identity, signed, body, now=utc_now())
        settings = self.federation.settings
        timeout = httpx.Timeout(settings.request_timeout_s, read=settings.overflow.stall_s)
        request = client.http.build_request(
            "POST", signed.url, content=body, headers=signed.headers, timeout=timeout
        )
        try:
            response = await client.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise PeerFailed(
                f"{peer.url} did not answer: {exc!r}", code="peer_unreachable"
            ) from None
        if response.status_code != 200:
            content = await response.aread()
            await response.aclose()
            raise PeerFailed(
                f"{peer.url} refused the forward ({response.status_code}): {content[:300]!r}",
                code="forward_refused",
                status=response.status_code,
            )
        return response, signed

    async def _failed(self, peer: peers.Peer, exc: PeerFailed) -> None:
        settings = self.federation.settings
        async with self.pool.acquire() as conn:
            await peers.record_failure(
                conn,
                peer.pool_id,
                utc_now(),
                f"{exc.code}: {exc.message}",
                initial_s=settings.backoff_initial_s,
                max_s=settings.backoff_max_s,
            )

    async def _relay(
        self,
        response: httpx.Response,
        signed: SignedRequest,
        peer: peers.Peer,
        offer: PeerOffer,
        job: Job,
    ) -> AsyncGenerator[Chunk | Done, None]:
        """The peer's stream as job events; the receipt becomes a charge, the speed a measure."""
        reader = _PeerStream(job, peer)
        try:
            async for event, data in _sse(response):
                done = reader.feed(event, data)
                for chunk in reader.take():
                    yield chunk
                if done:
                    break
        except (httpx.HTTPError, ValueError) as exc:
            raise JobFailed(PEER_LOST, f"peer {peer.pool_id} failed mid-answer: {exc!r}") from None
        finally:
            await response.aclose()
        final = reader.done()
        receipt = reader.receipt
        if receipt is not None and receipt.to == self.federation.identity.pool_id:
            self.charges.append(PeerCharge(receipt, offer.price_per_1k))
        else:
            log.warning("overflow_receipt_invalid", peer=peer.pool_id, job=job.job_id)
        if reader.speed() is not None:
            self.federation.capabilities.measured(peer.pool_id, job.model, reader.speed() or 0.0)
        if peer.consecutive_failures:  # a healthy peer's row needs no write per chat
            async with self.pool.acquire() as conn:
                await peers.record_success(conn, peer.pool_id, utc_now())
        yield final


class _PeerStream:
    """Reads a peer's OpenAI chunks back into this pool's chunks, usage and finish."""

    def __init__(self, job: Job, peer: peers.Peer) -> None:
        self.job = job
        self.peer = peer
        self.digest = StreamDigest()
        self.receipt: Receipt | None = None
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.chunks = 0
        self._ready: list[Chunk] = []
        self._first: float | None = None
        self._last: float | None = None

    def feed(self, event: str | None, data: str) -> bool:
        """Take one SSE event; True once the stream is over (``[DONE]``)."""
        if event == RECEIPT_EVENT:
            self.receipt = self._receipt(orjson.loads(data))
            return False
        if data == "[DONE]":
            return True
        self.digest.add(data)
        body = orjson.loads(data)
        if not isinstance(body, dict):
            raise ValueError("a chunk that is not a JSON object")
        if isinstance(error := body.get("error"), dict):
            code = str(error.get("code") or PEER_LOST)
            raise JobFailed(code, f"peer {self.peer.pool_id}: {error.get('message')}")
        if isinstance(usage := body.get("usage"), dict):
            self.usage = Usage.model_validate(usage)
        for choice in body.get("choices") or []:
            self._choice(choice)
        return False

    def _choice(self, choice: dict[str, Any]) -> None:
        delta = {k: v for k, v in (choice.get("delta") or {}).items() if k != "role"}
        if delta.get("content") or delta.get("tool_calls"):
            now = time.monotonic()
            self._first = self._first or now
            self._last = now
            self.chunks += 1
            self._ready.append(Chunk(job_id=self.job.job_id, delta=Delta.model_validate(delta)))
        if choice.get("finish_reason"):
            self.finish = str(choice["finish_reason"])

    def _receipt(self, data: Any) -> Receipt | None:
        receipt = read_receipt(data, self.peer.public_key)
        valid = (
            receipt is not None
            and receipt.peer == self.peer.pool_id
            and receipt.job == self.job.job_id
            and receipt.digest == self.digest.hexdigest()
        )
        return receipt if valid else None

    def take(self) -> list[Chunk]:
        """The chunks read since the last call."""
        ready, self._ready = self._ready, []
        return ready

    def done(self) -> Done:
        """The answer's end; ``JobFailed`` when the stream stopped before it finished."""
        if self.finish is None:
            raise JobFailed(PEER_LOST, f"peer {self.peer.pool_id}'s stream ended mid-answer")
        usage = self.usage or Usage(
            prompt_tokens=0,
            completion_tokens=self.chunks,
            total_tokens=self.chunks,
            estimated=True,
        )
        try:
            return Done.model_validate(
                {
                    "job_id": self.job.job_id,
                    "finish_reason": self.finish,
                    "usage": usage,
                    "model": self.job.model,
                }
            )
        except ValidationError:
            raise JobFailed(
                PEER_LOST, f"peer {self.peer.pool_id} ended with {self.finish[:40]!r}"
            ) from None

    def speed(self) -> float | None:
        """Tokens per second between the first and the last chunk (None below two chunks)."""
        if self._first is None or self._last is None or self.chunks < 2:
            return None
        elapsed = self._last - self._first
        return (self.chunks - 1) / elapsed if elapsed > 0 else math.inf


async def _sse(response: httpx.Response) -> AsyncIterator[tuple[str | None, str]]:
    """``(event name, data)`` of each SSE event of a response; comments are skipped."""
    event: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = None, []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            event = line[6:].strip()
    if data:
        yield event, "\n".join(data)
