"""``create_app(settings)``: the FastAPI app, its middleware, routes, and the one lifespan.

The lifespan owns every long-lived resource (database and embedded server, token resolver,
background loops) and yields them as typed state; nothing is built at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import structlog
from fastapi import FastAPI

from hub.admin_token import ensure_admin_token, token_file
from hub.auth import TokenResolver
from hub.bookkeeping import BackgroundWriter
from hub.config import Settings
from hub.db import open_database
from hub.embedded import DataDirLock
from hub.errors import install_error_handlers
from hub.local_worker import issue_local_worker_token, run_local_worker
from hub.middleware import BodyLimitMiddleware, RequestContextMiddleware
from hub.observability import Metrics
from hub.routes import admin, chat, health, tokens, workers
from hub.state import HubState
from inference.registry import WorkerRegistry

log = structlog.get_logger()


def _lifespan(settings: Settings, metrics: Metrics) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            if settings.database_url is None:
                # The embedded server lives in the data directory: one hub owns it at a time.
                stack.enter_context(DataDirLock(settings.data_dir))
            db = await stack.enter_async_context(open_database(settings))
            async with db.pool.acquire() as conn:
                issued = await ensure_admin_token(conn, settings.data_dir)
            if issued is not None:
                log.info("admin_token_issued", file=str(token_file(settings.data_dir)))
            resolver = TokenResolver(db.pool, settings.auth)
            registry = WorkerRegistry(settings.inference)
            writer = BackgroundWriter(db.pool)
            metrics.watch(registry, writer)
            state = HubState(
                settings=settings,
                db=db,
                tokens=resolver,
                metrics=metrics,
                workers=registry,
                writer=writer,
            )
            async with anyio.create_task_group() as loops:
                loops.start_soon(resolver.run_flusher)
                loops.start_soon(writer.run)
                if settings.inference.local_worker:
                    async with db.pool.acquire() as conn:
                        token = await issue_local_worker_token(conn)
                    loops.start_soon(run_local_worker, settings, token)
                log.info("hub_started", embedded_db=db.embedded is not None)
                yield {"hub": state}
                loops.cancel_scope.cancel()
            await writer.drain()
            await resolver.flush_last_used()
            log.info("hub_stopped")

    return lifespan


def create_app(settings: Settings) -> FastAPI:
    """Build the hub's ASGI app; resources are opened by the lifespan, not here."""
    metrics = Metrics()
    app = FastAPI(
        title="iamine hub",
        version="0.1.0",
        summary="OpenAI-compatible API and MCP memory server of a cooperative AI pool.",
        lifespan=_lifespan(settings, metrics),
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(tokens.router)
    app.include_router(admin.router)
    app.include_router(chat.router)
    app.include_router(workers.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
