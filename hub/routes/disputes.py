"""Disputes (`/v1/disputes`, `/admin/api/disputes`) and slashing events (`/admin/api/slashing`).

A user disputes their own charged job within the pool's dispute window; the admin may dispute
any job whose earning is not settled yet, and resolves disputes: upheld, the worker is slashed
(the job refunded with every other unsettled earning of the worker, a penalty from its owner,
trust reset to 0); rejected, the earning settles as usual. Another user's job reads as not
found. The ledger's errors map here to HTTP: bad input 400, unknown job or dispute 404, a job
that cannot be disputed (or a dispute resolved otherwise already) 409.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Query
from pydantic import ConfigDict, Field

from economy.disputes import Decision, Dispute, DisputeStatus, list_disputes, open_dispute
from economy.errors import (
    DisputeNotFound,
    DisputeRefused,
    IdempotencyConflict,
    InvalidLedgerInput,
    JobNotFound,
)
from economy.slashing import list_events
from hub.auth import Principal
from hub.deps import AdminPrincipal, State, UserPrincipal
from hub.errors import ConflictError, InvalidRequestError, NotFoundError, PermissionDeniedError
from hub.schemas import StrictBody
from hub.slashing import ledger_of, resolve

router = APIRouter(tags=["disputes"])

Limit = Annotated[int, Query(ge=1, le=200, description="Items per page.")]
Before = Annotated[
    int | None,
    Query(ge=1, le=2**63 - 1, description="Cursor: only items older than this id (`next_before`)."),
]


class DisputeBody(StrictBody):
    """A dispute to open."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,128}$", description="The chat's job id (its `id`)."
    )
    reason: str = Field(min_length=1, max_length=2_000, description="What was wrong with it.")


class ResolveBody(StrictBody):
    """The admin's decision on a dispute."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["upheld", "rejected"] = Field(
        description="`upheld`: refund and slash the worker; `rejected`: release the earning."
    )
    note: str = Field("", max_length=2_000, description="Why, for the record.")


@contextmanager
def _ledger_errors() -> Iterator[None]:
    """Map the ledger's dispute errors to the hub's HTTP errors."""
    try:
        yield
    except InvalidLedgerInput as exc:
        raise InvalidRequestError(exc.message, param=exc.param, code=exc.code) from exc
    except (JobNotFound, DisputeNotFound) as exc:
        raise NotFoundError(exc.message, param=exc.param, code=exc.code) from exc
    except (DisputeRefused, IdempotencyConflict) as exc:
        raise ConflictError(exc.message, param=exc.param, code=exc.code) from exc


def _page(disputes: list[Dispute], limit: int, *, admin: bool) -> dict[str, Any]:
    page = disputes[:limit]
    more = len(disputes) > limit
    return {
        "object": "list",
        "data": [d.as_dict(admin=admin) for d in page],
        "has_more": more,
        "next_before": page[-1].id if more else None,
    }


def _user_id(principal: Principal) -> UUID:
    if principal.user_id is None:
        raise PermissionDeniedError("This token acts for no user.")
    return principal.user_id


@router.post("/v1/disputes", status_code=201)
async def create_dispute(
    state: State, principal: UserPrincipal, body: DisputeBody
) -> dict[str, Any]:
    """Dispute one of your charged chats within the dispute window; its earning stays held.

    404 for a job that is not yours, 409 when it was disputed already, its window closed, or
    its earning was settled or refunded.
    """
    user_id = _user_id(principal)
    with _ledger_errors():
        async with state.db.pool.acquire() as conn:
            dispute = await open_dispute(
                conn, ledger_of(state), body.job_id, body.reason, user_id=user_id
            )
    return dispute.as_dict(admin=False)


@router.get("/v1/disputes")
async def my_disputes(
    state: State, principal: UserPrincipal, limit: Limit = 50, before: Before = None
) -> dict[str, Any]:
    """Your disputes, newest first; page back with ``before=next_before``."""
    user_id = _user_id(principal)
    async with state.db.pool.acquire() as conn:
        found = await list_disputes(conn, user_id=user_id, limit=limit + 1, before=before)
    return _page(found, limit, admin=False)


@router.post("/admin/api/disputes", status_code=201, tags=["admin"])
async def admin_create_dispute(
    state: State, _: AdminPrincipal, body: DisputeBody
) -> dict[str, Any]:
    """Dispute any charged job whose earning is not settled (no window for the admin)."""
    with _ledger_errors():
        async with state.db.pool.acquire() as conn:
            dispute = await open_dispute(
                conn, ledger_of(state), body.job_id, body.reason, user_id=None
            )
    return dispute.as_dict(admin=True)


@router.get("/admin/api/disputes", tags=["admin"])
async def admin_disputes(
    state: State,
    _: AdminPrincipal,
    status: Annotated[
        DisputeStatus | None, Query(description="Only disputes in this state.")
    ] = None,
    limit: Limit = 50,
    before: Before = None,
) -> dict[str, Any]:
    """Every dispute, newest first, optionally by status; page back with ``before``."""
    async with state.db.pool.acquire() as conn:
        found = await list_disputes(conn, status=status, limit=limit + 1, before=before)
    return _page(found, limit, admin=True)


@router.post("/admin/api/disputes/{dispute_id}/resolve", tags=["admin"])
async def resolve_dispute(
    state: State,
    _: AdminPrincipal,
    dispute_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    body: ResolveBody,
) -> dict[str, Any]:
    """Uphold (refund, slash the worker, reset its trust) or reject (release) a dispute.

    The same decision again returns the dispute; the other one is a 409.
    """
    with _ledger_errors():
        dispute, event = await resolve(state, dispute_id, Decision(body.decision), body.note)
    return {
        **dispute.as_dict(admin=True),
        "slashing_event": None if event is None else event.as_dict(),
    }


@router.get("/admin/api/slashing", tags=["admin"])
async def slashing_events(
    state: State,
    _: AdminPrincipal,
    worker_id: Annotated[UUID | None, Query(description="Only this worker's events.")] = None,
    limit: Limit = 50,
    before: Before = None,
) -> dict[str, Any]:
    """Slashing events, newest first, with their evidence; page back with ``before``."""
    async with state.db.pool.acquire() as conn:
        found = await list_events(conn, worker_id=worker_id, limit=limit + 1, before=before)
    page = found[:limit]
    more = len(found) > limit
    return {
        "object": "list",
        "data": [event.as_dict() for event in page],
        "has_more": more,
        "next_before": page[-1].id if more else None,
    }
