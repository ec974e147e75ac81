"""Anti-entropy of ``fed:`` notes over HTTP: three signed peer routes and the admin's sync.

Peers call ``POST /v1/federation/notes/changes`` (versions pushed since a watermark, or asked
for by a Merkle exchange), ``/tree`` (root and branches, or the segments of some branches) and
``/rows`` (the versions of differing segments). They authenticate as every federation route
does (``hub/routes/federation.py``) and their answers are signed. A malformed message is 400
``invalid_federation_input`` (or ``row_hash_mismatch``, ``hlc_in_future``,
``namespace_not_federated``), and nothing of it is stored. The admin runs one push or one
reconcile with a peer now through ``POST /admin/api/federation/notes/sync``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ConfigDict, Field, StrictBool, StrictStr

from federation import peers
from federation.errors import InvalidFederationInput
from federation.identity import parse_pool_id
from federation.notes_sync import NoteSync
from hub.deps import AdminPrincipal, State
from hub.errors import ConflictError, NotFoundError
from hub.routes.federation import (
    POOL_ID_PATTERN,
    PeerFacing,
    federation_errors,
    inbound_request,
    signed_answer,
)
from hub.schemas import StrictBody
from hub.state import HubState

router = APIRouter(prefix="/v1/federation/notes", tags=["federation"])
admin_router = APIRouter(prefix="/admin/api/federation/notes", tags=["admin"])

Handler = Callable[[NoteSync, str, dict[str, Any]], Awaitable[dict[str, Any]]]


class SyncRequest(StrictBody):
    """One sync with a peer, now."""

    model_config = ConfigDict(extra="forbid")

    peer: StrictStr = Field(pattern=POOL_ID_PATTERN, description="The peer's pool id.")
    merkle: StrictBool = Field(
        False, description="Run the Merkle reconcile (true) or push changes (false)."
    )


def _message(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidFederationInput("The body is not JSON.") from None
    if not isinstance(data, dict):
        raise InvalidFederationInput("The body must be a JSON object.")
    return data


async def _serve(
    request: Request, federation: PeerFacing, state: HubState, run: Handler
) -> Response:
    if state.note_sync is None:
        raise NotFoundError("Federation is off in this pool.", code="federation_disabled")
    inbound = await inbound_request(request)
    with federation_errors():
        sender, signed = await state.note_sync.authenticate(inbound)
        answer = await run(state.note_sync, sender, _message(inbound.body))
    return signed_answer(federation, signed, answer)


async def _changes(sync: NoteSync, sender: str, message: dict[str, Any]) -> dict[str, Any]:
    return await sync.receive_changes(sender, message)


async def _tree(sync: NoteSync, _: str, message: dict[str, Any]) -> dict[str, Any]:
    return await sync.answer_tree(message)


async def _rows(sync: NoteSync, _: str, message: dict[str, Any]) -> dict[str, Any]:
    return await sync.answer_rows(message)


@router.post("/changes")
async def changes(request: Request, federation: PeerFacing, state: State) -> Response:
    """A peer's note versions (`{"rows": [...]}`): each checked, the winners stored; the answer
    counts them and lists the ids this pool now holds (that version or a newer one)."""
    return await _serve(request, federation, state, _changes)


@router.post("/tree")
async def tree(request: Request, federation: PeerFacing, state: State) -> Response:
    """This pool's tictac tree over the `fed:` namespaces both pools have: root and branches,
    or, with `branches`, those branches' segments."""
    return await _serve(request, federation, state, _tree)


@router.post("/rows")
async def rows(request: Request, federation: PeerFacing, state: State) -> Response:
    """Given a peer's `{id: row_hash}` of some segments: this pool's differing versions there,
    and the ids it wants from the peer."""
    return await _serve(request, federation, state, _rows)


@admin_router.post("/sync")
async def sync(body: SyncRequest, state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Push changes to a peer, or reconcile with it (`merkle`), now; the exchange's stats."""
    if state.note_sync is None:
        raise ConflictError(
            "Federation is off: set IAMINE_FEDERATION__ENABLED=true and "
            "IAMINE_FEDERATION__PUBLIC_URL, then restart the hub.",
            code="federation_disabled",
        )
    with federation_errors():
        async with state.db.pool.acquire() as conn:
            peer = await peers.get_peer(conn, parse_pool_id(body.peer))
        if body.merkle:
            return await state.note_sync.reconcile(peer)
        return await state.note_sync.push_changes(peer)


@admin_router.post("/collect")
async def collect(state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Purge the tombstones every live peer acknowledged (and old enough); how many."""
    if state.note_sync is None:
        raise ConflictError("Federation is off in this pool.", code="federation_disabled")
    return {"collected": await state.note_sync.collect_tombstones()}
