"""Admin views of the pool: live workers, the queue, and the routing policy (admin token)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from hub import blacklist
from hub.deps import AdminPrincipal, State, UserPrincipal
from inference import identity
from inference.exclusions import recent_exclusions
from inference.pool_config import PoolConfig, save_pool_config
from inference.pool_view import worker_rows

router = APIRouter(prefix="/admin/api", tags=["admin"])
public_router = APIRouter(prefix="/v1/pool", tags=["pool"])


@public_router.get("/status")
async def pool_status(state: State, _: UserPrincipal) -> dict[str, Any]:
    """What the pool can serve now: workers, free slots, queue depth, models (no private data)."""
    registry = state.workers
    live = [w for w in registry.workers.values() if w.excluded is None]
    return {
        "workers": len(live),
        "free_slots": sum(max(w.free_slots, 0) for w in live),
        "queue_depth": len(registry.queue),
        "models": [
            {
                "id": m.id,
                "context_length": m.context_size,
                "supports_tools": m.supports_tools,
                "workers": m.workers,
            }
            for m in registry.models()
        ],
    }


@router.get("/workers")
async def list_workers(state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Connected workers (trust, served share vs target, measured speed, in flight), every
    registered worker record (``records``, with ``connected`` and ``blacklisted``), and recent
    exclusions.

    ``tokens_per_s`` is the hub's own measurement (the checker's clock and chunk count), never a
    figure the worker reported.
    """
    registry = state.workers
    data = worker_rows(registry)
    async with state.db.pool.acquire() as conn:
        exclusions = await recent_exclusions(conn)
        records = await identity.list_workers(conn)
        banned = {e.subject for e in await blacklist.list_entries(conn) if e.kind == "worker"}
    return {
        "object": "list",
        "data": data,
        "records": [
            {
                **r.as_dict(),
                "connected": str(r.id) in registry.workers,
                "blacklisted": str(r.id) in banned,
            }
            for r in records
        ],
        "exclusions": [
            {
                "worker_id": e.worker_id,
                "worker_name": e.worker_name,
                "reason": e.reason,
                "detail": e.detail,
                "at": e.created_at,
            }
            for e in exclusions
        ],
    }


@router.get("/queue")
async def show_queue(state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Jobs waiting for a worker, in arrival order."""
    waiting = state.workers.queue.snapshot(time.monotonic())
    return {"object": "list", "depth": len(waiting), "data": waiting}


@router.get("/pool-config")
async def get_pool_config(state: State, _: AdminPrincipal) -> PoolConfig:
    """The routing policy in force."""
    return state.workers.config


@router.put("/pool-config")
async def put_pool_config(body: PoolConfig, state: State, _: AdminPrincipal) -> PoolConfig:
    """Replace the routing policy (validated: shares in [0, 1], class shares sum to 1, ...)."""
    async with state.db.pool.acquire() as conn:
        await save_pool_config(conn, body)
    state.workers.set_config(body)
    return body
