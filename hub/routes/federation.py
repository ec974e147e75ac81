"""Federation over HTTP: signed `/v1/federation/*` for peers, `/admin/api/federation` for admins.

Peers' routes read the raw body and hand it, with the headers and target as received, to
:class:`federation.service.Federation`: the signature covers those exact bytes. Their answers
are signed too. A refused signature is 401 (``signature_*``, ``digest_mismatch``,
``unknown_peer``, ``replayed_request``); a request for another pool or a refused invite is 403
(``wrong_destination``, ``invite_*``, ``fingerprint_mismatch``). Federation off: 404
``federation_disabled`` here, 409 on the admin's routes that need it. When the admin's call to a
peer is refused by it (401/403) the answer is 403 with the peer's own code; when the peer fails
or cannot be reached, 502. docs/federation.md has the messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import ConfigDict, Field, StrictInt, StrictStr, ValidationError

from federation import candidates, membership, peers
from federation.client import utc_now
from federation.errors import (
    FederationDisabled,
    InvalidFederationInput,
    InviteRefused,
    PeerFailed,
    PeerNotFound,
    SignatureRejected,
    WrongDestination,
)
from federation.gossip import Gossip, recent_log
from federation.identity import parse_pool_id
from federation.invites import CODE_PATTERN
from federation.service import Federation, Hello, Inbound
from federation.signatures import SignedRequest, header_fields
from hub.deps import AdminPrincipal, State
from hub.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UpstreamFailedError,
)
from hub.schemas import StrictBody
from hub.state import HubState

router = APIRouter(prefix="/v1/federation", tags=["federation"])
admin_router = APIRouter(prefix="/admin/api/federation", tags=["admin"])

POOL_ID_PATTERN = r"^[iI][aA][mM]1[A-Za-z2-7]{52}$"
PoolIdPath = Annotated[str, Path(pattern=POOL_ID_PATTERN, description="A peer's pool id.")]


class HelloBody(StrictBody):
    """A joining pool's hello (signed with the key it carries)."""

    model_config = ConfigDict(extra="forbid")

    pool_id: StrictStr = Field(pattern=POOL_ID_PATTERN, description="The joining pool's id.")
    public_key: StrictStr = Field(
        min_length=43, max_length=44, description="Its Ed25519 public key, base64url."
    )
    url: StrictStr = Field(min_length=8, max_length=300, description="Its public origin.")
    invite: StrictStr = Field(pattern=CODE_PATTERN.pattern, description="The invite code.")
    to: StrictStr = Field(
        pattern=POOL_ID_PATTERN, description="The pool id its admin was told to join."
    )


class PeerAdd(StrictBody):
    """Peer with another pool: where it is, its fingerprint (checked out of band), its invite."""

    model_config = ConfigDict(extra="forbid")

    url: StrictStr = Field(min_length=8, max_length=300, description="The other pool's origin.")
    fingerprint: StrictStr = Field(pattern=POOL_ID_PATTERN, description="Its pool id.")
    invite: StrictStr = Field(pattern=CODE_PATTERN.pattern, description="Its admin's invite.")


class InviteRequest(StrictBody):
    """An invite to mint."""

    model_config = ConfigDict(extra="forbid")

    expires_s: StrictInt | None = Field(
        None, ge=60, le=30 * 86_400, description="Lifetime in seconds (default: the setting)."
    )
    for_pool_id: StrictStr | None = Field(
        None, pattern=POOL_ID_PATTERN, description="Only this pool may use it."
    )


async def running_federation(state: State) -> Federation:
    """This hub's federation, or 404 ``federation_disabled`` (peers see no federation here)."""
    if state.federation is None:
        raise NotFoundError("Federation is off in this pool.", code="federation_disabled")
    return state.federation


PeerFacing = Annotated[Federation, Depends(running_federation)]


def admin_federation(state: HubState) -> Federation:
    """This hub's federation for an admin route, or 409 ``federation_disabled``."""
    if state.federation is None:
        raise ConflictError(
            "Federation is off: set IAMINE_FEDERATION__ENABLED=true and "
            "IAMINE_FEDERATION__PUBLIC_URL, then restart the hub.",
            code="federation_disabled",
        )
    return state.federation


@contextmanager
def federation_errors() -> Iterator[None]:
    """Map the federation package's errors to the hub's HTTP errors."""
    try:
        yield
    except SignatureRejected as exc:
        raise AuthenticationError(exc.message, code=exc.code) from exc
    except (WrongDestination, InviteRefused) as exc:
        raise PermissionDeniedError(exc.message, code=exc.code) from exc
    except InvalidFederationInput as exc:
        raise InvalidRequestError(exc.message, param=exc.param, code=exc.code) from exc
    except PeerNotFound as exc:
        raise NotFoundError(exc.message, param=exc.param, code=exc.code) from exc
    except FederationDisabled as exc:
        raise ConflictError(exc.message, code=exc.code) from exc
    except PeerFailed as exc:
        if exc.status in (401, 403):  # the peer refused this pool (or the admin's invite)
            raise PermissionDeniedError(exc.message, code=exc.code) from exc
        raise UpstreamFailedError(exc.message, code=exc.code) from exc


async def inbound_request(request: Request) -> Inbound:
    """A federation request exactly as it arrived: the bytes its signature covers."""
    target = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    return Inbound(
        method=request.method,
        target=f"{target}?{query}" if query else target,
        headers=header_fields(request.headers.items()),
        body=await request.body(),
    )


def signed_answer(
    federation: Federation, request: SignedRequest, answer: dict[str, Any]
) -> Response:
    body = orjson.dumps(answer)
    return Response(body, 200, headers=federation.sign_answer(request, 200, body))


@router.post(
    "/hello",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": HelloBody.model_json_schema()}},
        }
    },
)
async def hello(request: Request, federation: PeerFacing) -> Response:
    """A pool joins with an invite; the answer (signed) is this pool's identity.

    Signed with the key the body carries; the invite must be unused, unexpired and minted by
    this pool, and ``to`` must be this pool's id. The joining pool is admitted as a peer.
    """
    inbound = await inbound_request(request)
    try:
        body = HelloBody.model_validate_json(inbound.body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first.get("loc", ())) or None
        raise InvalidRequestError(f"Invalid hello: {first['msg']}", param=param) from None
    with federation_errors():
        answer, signed = await federation.receive_hello(
            inbound, Hello(body.pool_id.lower(), body.public_key, body.url, body.invite, body.to)
        )
    return signed_answer(federation, signed, answer)


@router.get("/ping")
async def ping(request: Request, federation: PeerFacing) -> Response:
    """Liveness between peers: this pool's id and clock, and the caller's id as seen here."""
    with federation_errors():
        answer, signed = await federation.receive_ping(await inbound_request(request))
    return signed_answer(federation, signed, answer)


def _gossip(state: HubState) -> Gossip:
    if state.gossip is None:
        raise NotFoundError("Federation is off in this pool.", code="federation_disabled")
    return state.gossip


@router.post(
    "/gossip",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def gossip(request: Request, state: State, federation: PeerFacing) -> Response:
    """Push-pull gossip: learn the peer's heartbeats, suspicions, peers and capabilities;
    answer with this pool's own (docs/federation.md, "Gossip")."""
    with federation_errors():
        answer, signed = await _gossip(state).receive(await inbound_request(request))
    return signed_answer(federation, signed, answer)


@admin_router.get("")
async def identity(state: State, _: AdminPrincipal) -> dict[str, Any]:
    """This pool's federation identity (pool id, public key, public URL) and whether it is on."""
    if state.federation is None:
        return {"enabled": False, "pool_id": None, "public_key": None, "url": None}
    return {"enabled": True, **state.federation.describe()}


@admin_router.get("/peers")
async def list_peers(state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Admitted peers with their liveness (``ok``, ``failing``, ``down``) and backoff."""
    down_after = state.settings.federation.down_after_failures
    async with state.db.pool.acquire() as conn:
        found = await peers.list_peers(conn)
    return {"object": "list", "data": [peer.as_dict(down_after) for peer in found]}


@admin_router.post("/peers", status_code=201)
async def add_peer(body: PeerAdd, state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Peer with another pool using its admin's invite; its answer must match the fingerprint."""
    federation = admin_federation(state)
    with federation_errors():
        peer = await federation.join(body.url, body.fingerprint, body.invite)
    return peer.as_dict(state.settings.federation.down_after_failures)


@admin_router.delete("/peers/{pool_id}")
async def remove_peer(pool_id: PoolIdPath, state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Forget a peer: its requests are refused from now on (it may be invited again)."""
    down_after = state.settings.federation.down_after_failures
    with federation_errors():
        async with state.db.pool.acquire() as conn:
            removed = await peers.remove_peer(conn, parse_pool_id(pool_id))
    if state.federation is not None:
        state.federation.capabilities.forget(removed.pool_id)
    return {**removed.as_dict(down_after), "deleted": True}


@admin_router.post("/peers/{pool_id}/ping")
async def ping_peer(pool_id: PoolIdPath, state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Ping a peer now, whatever its backoff; the outcome updates its backoff."""
    federation = admin_federation(state)
    with federation_errors():
        return await federation.ping(pool_id)


@admin_router.post("/invites", status_code=201)
async def create_invite(body: InviteRequest, state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Mint a one-time invite (shown once) with this pool's id and URL to hand over with it."""
    federation = admin_federation(state)
    ttl = timedelta(seconds=body.expires_s) if body.expires_s is not None else None
    with federation_errors():
        return await federation.invite(ttl, body.for_pool_id)


@admin_router.get("/members")
async def members(state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Each peer's liveness as this pool judges it, with what it offers (from its gossip)."""
    async with state.db.pool.acquire() as conn:
        found = await membership.list_members(conn)
    offers = state.federation.capabilities.snapshot() if state.federation else []
    return {
        "object": "list",
        "data": [
            {
                **member.as_dict(),
                "offers": [o.as_dict() for o in offers if o.pool_id == member.pool_id],
            }
            for member in found
        ],
    }


@admin_router.get("/gossip")
async def gossip_log(
    state: State, _: AdminPrincipal, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """The latest gossip exchanges, newest first (``gossip_log``)."""
    async with state.db.pool.acquire() as conn:
        return {"object": "list", "data": await recent_log(conn, limit)}


@admin_router.get("/candidates")
async def list_candidates(state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Pools learned through peers' gossip and not admitted here, with who vouches for them."""
    async with state.db.pool.acquire() as conn:
        found = await candidates.list_candidates(conn)
    return {"object": "list", "data": [c.as_dict() for c in found]}


@admin_router.post("/candidates/{pool_id}/admit", status_code=201)
async def admit_candidate(pool_id: PoolIdPath, state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Admit a candidate as a peer, with the key and URL its vouchers listed."""
    with federation_errors():
        async with state.db.pool.acquire() as conn:
            peer = await candidates.admit_candidate(conn, parse_pool_id(pool_id), utc_now())
    return peer.as_dict(state.settings.federation.down_after_failures)
