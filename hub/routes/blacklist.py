"""The admin's blacklist over HTTP (``/admin/api/blacklist``, admin token): list, add, lift.

The same domain functions as the admin dashboard's blacklist page (:mod:`hub.blacklist`): a
worker's tokens are revoked and its link closes, a user is disabled, a peer is removed; each
refuses the subject from then on. docs/web.md says what each kind does.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import ConfigDict, Field

from hub import blacklist
from hub.deps import AdminPrincipal, State
from hub.schemas import StrictBody

router = APIRouter(prefix="/admin/api/blacklist", tags=["admin"])


class BlacklistEntryIn(StrictBody):
    """A subject to refuse, and why."""

    model_config = ConfigDict(extra="forbid")

    kind: blacklist.Kind = Field(description="`worker`, `user` or `peer`.")
    subject: str = Field(
        min_length=1, max_length=200, description="The worker's or user's name, or the pool id."
    )
    reason: str = Field(min_length=1, max_length=500, description="Why, for the record.")


def _entry(entry: blacklist.Entry) -> dict[str, Any]:
    return {
        "kind": entry.kind,
        "subject": entry.subject,
        "label": entry.label,
        "reason": entry.reason,
        "created_at": entry.created_at.isoformat(),
    }


@router.get("")
async def list_blacklist(state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Every entry, newest first (``subject``: the record's id or the pool id)."""
    async with state.db.pool.acquire() as conn:
        entries = await blacklist.list_entries(conn)
    return {"object": "list", "data": [_entry(e) for e in entries]}


@router.post("", status_code=201)
async def add_to_blacklist(
    body: BlacklistEntryIn, state: State, _: AdminPrincipal
) -> dict[str, Any]:
    """Blacklist a worker or a user (by name) or a peer (by pool id); 404 for an unknown name."""
    async with state.db.pool.acquire() as conn:
        banned = await blacklist.ban(conn, body.kind, body.subject, body.reason)
    banned.drop_from(state.tokens)
    return _entry(banned.entry)


@router.delete("/{kind}/{subject}")
async def lift_from_blacklist(
    kind: blacklist.Kind,
    subject: Annotated[str, Path(min_length=1, max_length=200)],
    state: State,
    _: AdminPrincipal,
) -> dict[str, Any]:
    """Lift an entry (its ``subject`` as listed); a user stays disabled."""
    async with state.db.pool.acquire() as conn:
        return _entry(await blacklist.lift(conn, kind, subject))
