"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

import asyncpg
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hub.deps import State
from hub.migrations import is_current

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """The database answers and its schema is fully migrated; 503 otherwise.

    `local_worker` reports the hub's own worker process (`running`, `restarting` with its
    attempt count, `starting` or `disabled`); it informs and never makes the hub unready, since
    other workers and the degraded answer still serve.
    """
    checks = {"database": "ok", "migrations": "current"}
    try:
        async with asyncio.timeout(state.settings.database.connect_timeout_s):
            async with state.db.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
                if not await is_current(conn):
                    checks["migrations"] = "pending_or_changed"
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    ready = checks == {"database": "ok", "migrations": "current"}
    local_worker = state.local_worker
    return JSONResponse(
        {
            "status": "ready" if ready else "not_ready",
            "checks": checks,
            "local_worker": local_worker.status() if local_worker else {"state": "disabled"},
        },
        status_code=200 if ready else 503,
    )


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: State) -> Response:
    """Prometheus metrics of this hub process."""
    state.metrics.collect_workers()
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
