"""Overflow between pools over HTTP: the signed forward, the peers' statement, the reconciliation.

``POST /v1/federation/forward`` serves a chat a peer forwarded here: signed like every
federation request, refused when it loops (this pool already visited, or past the hop limit) or
names a model no local worker of enough trust serves; run on local workers only (a forwarded
chat never leaves this pool again), billed to the origin's ``peer_pool`` account at this pool's
price, and streamed back through the same relay as a local chat, ending with the signed receipt
(``federation/receipts.py``). ``stream: false`` gets one JSON completion, signed as a whole.

``GET /v1/federation/statement?since=`` tells a peer which chats this pool served for it and
forwarded to it; ``GET /admin/api/federation/peers/{pool_id}/reconcile`` compares that with this
pool's own books (docs/federation.md, "Overflow").
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from economy import peering
from economy.errors import InvalidLedgerInput
from federation import peers
from federation.identity import parse_pool_id
from federation.receipts import RECEIPT_EVENT, Receipt, StreamDigest, sign_receipt
from federation.service import Federation
from hub.billing import Ticket
from hub.chat import ChatRun, build_job, check_fit, collect
from hub.deps import AdminPrincipal, State
from hub.errors import ConflictError, InvalidRequestError, ModelNotFoundError, PoolBusyError
from hub.openai_schema import ChatCompletionRequest, completion_body, completion_id
from hub.relay import SSEResponse, route_headers, sse_events, worker_failed
from hub.routes.federation import (
    POOL_ID_PATTERN,
    PeerFacing,
    PoolIdPath,
    admin_federation,
    federation_errors,
    inbound_request,
    signed_answer,
)
from inference.dispatch import Degraded, JobEvent, JobFailed, run_job
from inference.link import JobHandle
from inference.protocol import Done, Job

router = APIRouter(prefix="/v1/federation", tags=["federation"])
admin_router = APIRouter(prefix="/admin/api/federation", tags=["admin"])

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Route(BaseModel):
    """How a forwarded chat got here: the hops so far, the pools visited, the origin's job id."""

    model_config = ConfigDict(extra="ignore")

    hops: StrictInt = Field(ge=1, description="Pools the chat left so far (1 from its origin).")
    visited: list[Annotated[StrictStr, Field(pattern=POOL_ID_PATTERN)]] = Field(
        min_length=1, max_length=8, description="Pool ids the chat passed through, origin first."
    )
    iamine_job: StrictStr = Field(
        pattern=r"^[0-9a-f]{32}$", description="The origin's job id: both ledgers' key."
    )


def _parse(body: bytes) -> tuple[Route, ChatCompletionRequest]:
    try:
        data = orjson.loads(body)
        return Route.model_validate(data), ChatCompletionRequest.model_validate(data)
    except orjson.JSONDecodeError:
        raise InvalidRequestError("A forward's body is a JSON object.") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first.get("loc", ())) or None
        raise InvalidRequestError(f"Invalid forward: {first['msg']}", param=param) from None


def _check_route(federation: Federation, origin: str, route: Route) -> None:
    """Refuse a loop: this pool already on the route, the signer not on it, too many hops."""
    own = federation.identity.pool_id
    visited = [pool.lower() for pool in route.visited]
    if own in visited:
        raise ConflictError("This pool is already on the chat's route.", code="forward_loop")
    if visited[-1] != origin:
        raise InvalidRequestError("The last pool visited must be the sender.", param="visited")
    limit = federation.settings.overflow.hop_limit
    if route.hops > limit or len(visited) > limit:
        raise ConflictError(
            f"The chat made {route.hops} hops; this pool accepts at most {limit}.",
            code="hop_limit_exceeded",
        )


class _Tally:
    """The last ``done`` of a job's events (what the receipt reports when nothing is billed)."""

    def __init__(self) -> None:
        self.done: Done | None = None

    async def watch(self, events: AsyncIterator[JobEvent]) -> AsyncGenerator[JobEvent, None]:
        """Relay the events, keeping the ``done``; closing this closes the job's stream."""
        try:
            async for event in events:
                if isinstance(event, Done):
                    self.done = event
                yield event
        finally:
            if isinstance(events, AsyncGenerator):
                await events.aclose()


def _receipt(
    federation: Federation,
    origin: str,
    job: Job,
    ticket: Ticket | None,
    tally: _Tally,
    digest: str | None,
) -> dict[str, Any]:
    usage = ticket.usage if ticket is not None else None
    done = tally.done
    prompt = usage.prompt_tokens if usage else done.usage.prompt_tokens if done else 0
    completion = usage.completion_tokens if usage else done.usage.completion_tokens if done else 0
    receipt = Receipt(
        job=job.job_id,
        peer=federation.identity.pool_id,
        to=origin,
        model=job.model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        amount=(ticket.charged or 0) if ticket is not None else 0,
        digest=digest,
    )
    return sign_receipt(federation.identity, receipt)


async def _receipted(
    sse: AsyncIterator[Mapping[str, str]],
    federation: Federation,
    origin: str,
    job: Job,
    ticket: Ticket | None,
    tally: _Tally,
) -> AsyncIterator[Mapping[str, str]]:
    """The relay's SSE events, then the signed receipt just before ``[DONE]``."""
    digest = StreamDigest()
    try:
        async for event in sse:
            data = event.get("data")
            if data == "[DONE]":
                break
            if data is not None:
                digest.add(data)
            yield event
    finally:
        if isinstance(sse, AsyncGenerator):
            await sse.aclose()
    receipt = _receipt(federation, origin, job, ticket, tally, digest.hexdigest())
    yield {"event": RECEIPT_EVENT, "data": orjson.dumps(receipt).decode()}
    yield {"data": "[DONE]"}


@router.post("/forward", response_model=None)
async def forward(request: Request, state: State, federation: PeerFacing) -> Response:
    """Serve a chat a peer pool forwarded: on local workers, billed to the peer, streamed back."""
    inbound = await inbound_request(request)
    with federation_errors():
        async with state.db.pool.acquire() as conn, conn.transaction():
            # No disk flush on the chat's path: a crash may lose the last nonces, so a request
            # captured just before it could be replayed within its age window: it is served and
            # billed again, to its signer, and shows in the reconciliation as a chat the origin
            # never sent.
            await conn.execute("SET LOCAL synchronous_commit TO off")
            origin, signed = await federation.authenticate(conn, inbound)
    route, chat = _parse(inbound.body)
    _check_route(federation, origin, route)
    registry = state.workers
    min_trust = registry.config.trust.required("chat")
    if not registry.serves(chat.model, min_trust):
        raise ModelNotFoundError(
            f"The model '{chat.model}' is not served by this pool now.", param="model"
        )
    job = build_job(chat, registry.settings.job_deadline_s)
    job = job.model_copy(update={"job_id": route.iamine_job})
    needs_context = check_fit(registry, job)
    trace: list[JobHandle] = []
    events: AsyncIterator[JobEvent] = run_job(
        registry,
        job,
        needs_tools=chat.wants_tools(),
        user=f"peer:{origin}:{chat.user}" if chat.user else f"peer:{origin}",
        needs_context=needs_context,
        min_trust=min_trust,
        trace=trace,
    )
    ticket = None
    if state.billing is not None:
        ticket = await state.billing.open(job, None, peer=origin)
        events = state.billing.bill(ticket, events, trace)
    tally = _Tally()
    watched = tally.watch(events)
    try:
        first = await anext(watched)
    except JobFailed as exc:
        raise worker_failed(exc) from exc
    if isinstance(first, Degraded):
        await watched.aclose()
        raise PoolBusyError(f"No worker could take the chat: {first.reason}.", retry_after_s=1)
    headers = route_headers(first, chat.model)
    if chat.stream:
        sse = sse_events(watched, chat.model, include_usage=True)
        return SSEResponse(_receipted(sse, federation, origin, job, ticket, tally), headers=headers)
    answer, done = await collect(ChatRun({}, watched, None))
    completion = completion_body(completion_id(), chat.model, answer, done)
    completion["iamine_receipt"] = _receipt(federation, origin, job, ticket, tally, None)
    return signed_answer(federation, signed, completion)


@router.get("/statement")
async def statement(
    request: Request,
    state: State,
    federation: PeerFacing,
    since: Annotated[datetime, Query(description="Chats posted at or after this time.")] = EPOCH,
) -> Response:
    """The chats this pool served for the calling peer, and those it forwarded to it."""
    inbound = await inbound_request(request)
    with federation_errors():
        async with state.db.pool.acquire() as conn, conn.transaction():
            caller, signed = await federation.authenticate(conn, inbound)
            served = await peering.served_for(conn, caller, since)
            forwarded = await peering.forwarded_to(conn, caller, since)
    answer = {
        "pool_id": federation.identity.pool_id,
        "peer": caller,
        "since": since.isoformat(),
        "served": [line.as_dict() for line in served],
        "forwarded": [line.as_dict() for line in forwarded],
    }
    return signed_answer(federation, signed, answer)


@admin_router.get("/peers/{pool_id}/reconcile")
async def reconcile(
    pool_id: PoolIdPath,
    state: State,
    _: AdminPrincipal,
    since: Annotated[datetime, Query(description="Chats posted at or after this time.")] = EPOCH,
) -> dict[str, Any]:
    """Both pools' books of the chats between them, compared job by job.

    ``payable``: chats this pool forwarded to the peer (our payable) against the peer's charges;
    ``receivable``: chats this pool served for the peer against what the peer says it owes.
    """
    federation = admin_federation(state)
    peer_id = parse_pool_id(pool_id)
    with federation_errors():
        async with state.db.pool.acquire() as conn:
            peer = await peers.get_peer(conn, peer_id)
            ours_out = await peering.forwarded_to(conn, peer_id, since)
            ours_in = await peering.served_for(conn, peer_id, since)
        path = f"/v1/federation/statement?since={quote(since.isoformat())}"
        theirs = await federation.client.call(peer, "GET", path)
    try:
        theirs_in = peering.parse_lines(theirs.get("served"))
        theirs_out = peering.parse_lines(theirs.get("forwarded"))
    except InvalidLedgerInput as exc:
        raise InvalidRequestError(f"The peer's statement: {exc.message}") from None
    payable = peering.reconcile(ours_out, theirs_in)
    receivable = peering.reconcile(ours_in, theirs_out)
    return {
        "peer": peer_id,
        "since": since.isoformat(),
        "payable": payable.as_dict(),
        "receivable": receivable.as_dict(),
        "balanced": payable.balanced and receivable.balanced,
    }
