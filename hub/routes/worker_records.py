"""Worker records over HTTP: owners register their workers, the admin also sets trust.

``/v1/workers`` (a user's own workers): list, register one (and get its token, shown once),
change what it is registered for. ``/admin/api/workers/...`` (admin token): register a worker for
any user, read one with its trust history, change it, set its trust level. A live link follows a
trust change at once; hardware, slots and models apply from the worker's next connection.
The model is in ``inference/identity.py`` and docs/trust.md.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter
from pydantic import ConfigDict, Field, StrictInt, StrictStr

from hub import accounts
from hub.deps import AdminPrincipal, State, UserPrincipal
from hub.errors import ConflictError, InvalidRequestError, NotFoundError
from hub.schemas import USER_NAME_PATTERN, StrictBody
from hub.state import HubState
from inference import identity
from inference.protocol import Hardware

router = APIRouter(prefix="/v1/workers", tags=["workers"])
admin_router = APIRouter(prefix="/admin/api/workers", tags=["admin"])


class WorkerSpec(StrictBody):
    """What a worker is registered for; its hello may only narrow it."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(
        pattern=identity.NAME_PATTERN.pattern,
        description="Unique in the pool: 1-64 letters, digits, _ . @ -.",
    )
    hardware: Hardware = Field("cpu", description="gpu or cpu: its class in the router's shares.")
    max_slots: StrictInt = Field(identity.DEFAULT_SLOTS, ge=1, le=1024)
    models: list[StrictStr] = Field(
        default_factory=list,
        max_length=100,
        description="Models it may serve; empty: any model the pool's catalog allows.",
    )


class AdminWorkerSpec(WorkerSpec):
    """A worker registered by the admin for a user, possibly trusted from the start."""

    owner: StrictStr = Field(pattern=USER_NAME_PATTERN, description="The user who owns it.")
    trust: StrictInt = Field(0, ge=0, le=3, description="0 new … 3 granted (docs/trust.md).")


class WorkerChange(StrictBody):
    """Fields to change; those left out stay."""

    model_config = ConfigDict(extra="forbid")

    hardware: Hardware | None = None
    max_slots: StrictInt | None = Field(None, ge=1, le=1024)
    models: list[StrictStr] | None = Field(None, max_length=100)


class TrustChange(StrictBody):
    """A new trust level and why."""

    model_config = ConfigDict(extra="forbid")

    level: StrictInt = Field(ge=0, le=3)
    reason: StrictStr = Field("set by the admin", min_length=1, max_length=500)


def _check_models(models: list[str] | None) -> None:
    for model in models or []:
        if not model.strip() or len(model) > 200 or "\x00" in model:
            raise InvalidRequestError(f"Not a model name: {model!r}.", param="models")


async def _register(
    conn: asyncpg.Connection, spec: WorkerSpec, owner_id: UUID, trust: int, reason: str
) -> dict[str, Any]:
    _check_models(spec.models)
    async with conn.transaction():
        try:
            record = await identity.register_worker(
                conn,
                name=spec.name,
                owner_id=owner_id,
                hardware=spec.hardware,
                max_slots=spec.max_slots,
                models=spec.models,
                trust=trust,
                reason=reason,
            )
        except identity.WorkerRecordError as exc:
            raise ConflictError(exc.message, param=exc.param) from None
        issued = await accounts.create_token(
            conn, user_id=owner_id, scopes=("worker",), name=spec.name, worker_id=record.id
        )
    return {"worker": record.as_dict(), "token": issued.token, "token_prefix": issued.record.prefix}


async def _owned(
    conn: asyncpg.Connection, name: str, owner_id: UUID | None
) -> identity.WorkerRecord:
    """The record ``name`` (the owner's, when ``owner_id`` is given), else 404."""
    record = await identity.find_worker(conn, name)
    if record is None or (owner_id is not None and record.owner_id != owner_id):
        raise NotFoundError(f"No worker named {name!r}.", param="name")
    return record


def _with_link(state: HubState, record: identity.WorkerRecord) -> dict[str, Any]:
    link = state.workers.workers.get(str(record.id))
    return {**record.as_dict(), "connected": link is not None}


@router.get("")
async def list_my_workers(state: State, principal: UserPrincipal) -> dict[str, Any]:
    """The caller's workers with their trust level, and whether each is connected now."""
    async with state.db.pool.acquire() as conn:
        records = await identity.list_workers(conn, principal.user_id)
    return {"object": "list", "data": [_with_link(state, r) for r in records]}


@router.post("", status_code=201)
async def register_my_worker(
    body: WorkerSpec, state: State, principal: UserPrincipal
) -> dict[str, Any]:
    """Register a worker of the caller's and issue its token (shown once); it starts at trust 0.

    The checker's canaries raise it to 1 (users' chats); settlement to 2 (the hub's own work).
    """
    assert principal.user_id is not None  # a user-scope token has a user
    async with state.db.pool.acquire() as conn:
        return await _register(conn, body, principal.user_id, identity.NEW, "registered by owner")


@router.patch("/{name}")
async def change_my_worker(
    name: str, body: WorkerChange, state: State, principal: UserPrincipal
) -> dict[str, Any]:
    """Change what one of the caller's workers is registered for (from its next connection)."""
    _check_models(body.models)
    async with state.db.pool.acquire() as conn:
        record = await _owned(conn, name, principal.user_id)
        changed = await identity.update_worker(
            conn, record.id, hardware=body.hardware, max_slots=body.max_slots, models=body.models
        )
    return _with_link(state, changed)


@admin_router.post("", status_code=201)
async def register_worker(body: AdminWorkerSpec, state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Register a worker for a user at any trust level, and issue its token (shown once)."""
    async with state.db.pool.acquire() as conn:
        owner = await accounts.get_user(conn, body.owner)
        return await _register(conn, body, owner.id, body.trust, "registered by the admin")


@admin_router.get("/{name}")
async def read_worker(name: str, state: State, _: AdminPrincipal) -> dict[str, Any]:
    """One worker record, whether it is connected, and its trust history (newest first)."""
    async with state.db.pool.acquire() as conn:
        record = await _owned(conn, name, None)
        history = await identity.trust_events(conn, record.id)
    return {**_with_link(state, record), "trust_history": history}


@admin_router.patch("/{name}")
async def change_worker(
    name: str, body: WorkerChange, state: State, _: AdminPrincipal
) -> dict[str, Any]:
    """Change what a worker is registered for (from its next connection)."""
    _check_models(body.models)
    async with state.db.pool.acquire() as conn:
        record = await _owned(conn, name, None)
        changed = await identity.update_worker(
            conn, record.id, hardware=body.hardware, max_slots=body.max_slots, models=body.models
        )
    return _with_link(state, changed)


@admin_router.put("/{name}/trust")
async def set_worker_trust(
    name: str, body: TrustChange, state: State, _: AdminPrincipal
) -> dict[str, Any]:
    """Set a worker's trust level (3: the admin vouches for the machine); applied live at once."""
    async with state.db.pool.acquire() as conn:
        record = await _owned(conn, name, None)
        changed = await identity.set_trust(conn, record.id, body.level, body.reason)
    state.workers.apply_trust(str(changed.id), changed.trust)
    return _with_link(state, changed)
