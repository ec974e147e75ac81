"""``create_app(settings)``: the FastAPI app, its middleware, routes, and the one lifespan.

The lifespan owns every long-lived resource (database and embedded server, token resolver,
background loops) and yields them as typed state; nothing is built at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import anyio
import asyncpg
import structlog
from fastapi import FastAPI

from federation.gossip import Gossip
from federation.notes_sync import NoteSync
from federation.service import open_federation
from hub.admin_token import ensure_admin_token, token_file
from hub.auth import TokenResolver
from hub.billing import Billing
from hub.bookkeeping import BackgroundWriter
from hub.bus import NatsBus
from hub.chat_path import HubApp
from hub.config import Settings
from hub.db import connect_once, open_database
from hub.embedded import DataDirLock
from hub.errors import install_error_handlers
from hub.federation_sync import local_capabilities
from hub.jobs import build_canaries, build_jobs
from hub.local_worker import LocalWorker
from hub.mcp_mount import McpMount
from hub.middleware import BodyLimitMiddleware, RequestContextMiddleware
from hub.observability import Metrics
from hub.pool_events import PoolEvents
from hub.preferences import PreferenceCache
from hub.replica_dispatch import ReplicaDispatch
from hub.replicas import ReplicaIdLock, ReplicaRecord, replica_id
from hub.routes import (
    account,
    admin,
    agents,
    blacklist,
    chat,
    clients,
    conversations,
    disputes,
    facts,
    federation,
    federation_forward,
    federation_notes,
    health,
    jobs,
    memory,
    namespaces,
    notes,
    pool,
    preferences,
    recall,
    red,
    tokens,
    worker_records,
    workers,
)
from hub.scheduler import Scheduler
from hub.schemas import ERROR_RESPONSES
from hub.semantic import SemanticMemory, embedding_model_dir, pool_extractor
from hub.state import HubState
from hub.trust_sync import follow_trust
from hub.web import mount_web
from inference.dispatch import JobFailed, complete_text
from inference.exclusions import Exclusion, record_exclusion
from inference.link import WorkerLink
from inference.pool_config import load_pool_config
from inference.registry import ExclusionSink, WorkerRegistry
from memory.compaction import Compactor, Summariser, SummaryUnavailable, summary_prompt
from memory.embeddings import Embedder
from memory.extraction import FactMiner
from memory.settings import MemorySettings

log = structlog.get_logger()


def pool_summariser(registry: WorkerRegistry, settings: MemorySettings) -> Summariser:
    """Compaction's summariser: one job on a pool worker serving ``compaction_model``."""

    async def summarise(messages: list[dict[str, Any]]) -> str:
        try:
            text = await complete_text(
                registry,
                settings.compaction_model,
                summary_prompt(messages),
                max_tokens=settings.compaction_summary_tokens,
                temperature=0.2,
                kind="compaction",
            )
        except JobFailed as exc:
            raise SummaryUnavailable(exc.message) from exc
        if not text.strip():
            raise SummaryUnavailable("the model wrote an empty summary")
        return text

    return summarise


def exclusion_recorder(writer: BackgroundWriter, metrics: Metrics) -> ExclusionSink:
    """Record each worker exclusion in the database (off the request path) and count it."""

    def record(link: WorkerLink, reason: str, detail: str) -> None:
        metrics.exclusions.labels(reason).inc()
        exclusion = Exclusion(link.id, link.name, link.owner_id, reason, detail)
        writer.submit("worker_exclusion", lambda conn: record_exclusion(conn, exclusion))

    return record


def build_semantic_memory(
    pool: asyncpg.Pool, settings: Settings, registry: WorkerRegistry
) -> SemanticMemory:
    """The embedder (loaded on first use), the fact miner and the chat's recall step."""
    memory = settings.memory
    folder = embedding_model_dir(settings)
    embedder = Embedder(
        folder,
        threads=memory.embedding_threads,
        batch_size=memory.embedding_batch_size,
        int8=memory.embedding_int8,
    )
    if not embedder.available:
        log.warning("embedding_model_missing", folder=str(folder), fix="iamine models install")
    miner = None
    if memory.facts_extraction:
        miner = FactMiner(pool, embedder, memory, pool_extractor(registry, memory))
    return SemanticMemory(pool, memory, embedder, miner)


def _lifespan(settings: Settings, metrics: Metrics, mcp: McpMount) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            if settings.database_url is None:
                # The embedded server lives in the data directory: one hub owns it at a time.
                stack.enter_context(DataDirLock(settings.data_dir))
            db = await stack.enter_async_context(open_database(settings))
            async with db.pool.acquire() as conn:
                issued = await ensure_admin_token(conn, settings.data_dir)
                pool_config = await load_pool_config(conn)
            if issued is not None:
                log.info("admin_token_issued", file=str(token_file(settings.data_dir)))
            resolver = TokenResolver(db.pool, settings.auth)
            writer = BackgroundWriter(
                db.pool,
                queue_size=settings.database.write_queue_size,
                window_s=settings.database.write_window_s,
            )
            registry = WorkerRegistry(
                settings.inference, pool_config, on_exclusion=exclusion_recorder(writer, metrics)
            )
            compactor = Compactor(
                db.pool, settings.memory, pool_summariser(registry, settings.memory)
            )
            semantic = build_semantic_memory(db.pool, settings, registry)
            metrics.watch(registry, writer)
            billing = None
            if settings.economy.enabled:
                billing = Billing(db.pool, settings.economy, lambda: registry.config, metrics)
            state = HubState(
                settings=settings,
                db=db,
                tokens=resolver,
                metrics=metrics,
                workers=registry,
                writer=writer,
                preferences=PreferenceCache(db.pool),
                compactor=compactor,
                semantic=semantic,
                billing=billing,
            )
            if settings.federation.active:
                state.federation = await stack.enter_async_context(
                    open_federation(settings.federation, settings.data_dir, db.pool)
                )
                state.note_sync = NoteSync(
                    db.pool,
                    state.federation,
                    semantic.embedder,
                    settings.federation.notes,
                    down_after_failures=settings.federation.down_after_failures,
                )
                state.gossip = Gossip(
                    state.federation,
                    db.pool,
                    local_capabilities(registry, lambda: registry.config),
                )
            events = None
            if settings.bus.nats_url is not None:
                # The id outlives the process; one live process holds it (its own connection).
                replica = replica_id(settings.bus.replica_id, settings.data_dir)
                id_lock = ReplicaIdLock(
                    partial(connect_once, db.uri, settings),
                    replica,
                    settings.bus.heartbeat_s,
                    settings.bus.replica_stale_s,
                )
                await id_lock.take()
                stack.push_async_callback(id_lock.close)
                bus = await NatsBus.connect(settings.bus, f"hub:{settings.server.port}")
                stack.push_async_callback(bus.close)
                events = PoolEvents(bus, resolver, registry, db.pool, replica)
                events.attach()
                # Chats go to the other replicas' workers when none is free here.
                dispatch = registry.remote = ReplicaDispatch(
                    bus, registry, replica, settings.bus, settings.inference
                )
                metrics.watch_replicas(dispatch.view)
                record = ReplicaRecord(
                    db.pool,
                    replica,
                    f"{settings.server.host}:{settings.server.port}",
                    registry,
                    settings.bus.heartbeat_s,
                    settings.bus.replica_stale_s,
                    id_lock,
                )
            canaries = build_canaries(state)
            state.scheduler = Scheduler(
                build_jobs(state, canaries=canaries), db.pool, settings.jobs
            )
            await stack.enter_async_context(mcp.server.session_manager.run())
            stack.push_async_callback(mcp.aclose)
            local_worker = state.local_worker = LocalWorker(settings, db.pool)
            mcp.bind({"hub": state})
            async with anyio.create_task_group() as loops:
                loops.start_soon(resolver.run_flusher)
                loops.start_soon(resolver.run_sweeper)
                loops.start_soon(follow_trust, db.pool, registry)
                loops.start_soon(writer.run)
                loops.start_soon(canaries.run)
                loops.start_soon(compactor.run)
                if billing is not None:
                    loops.start_soon(billing.run)
                if state.federation is not None:
                    loops.start_soon(state.federation.run)
                if events is not None:
                    loops.start_soon(events.run)
                    loops.start_soon(dispatch.run)
                    loops.start_soon(record.run)
                if semantic.miner is not None:
                    loops.start_soon(semantic.miner.run)
                if local_worker.enabled:
                    loops.start_soon(local_worker.run)
                await loops.start(state.scheduler.run)
                log.info("hub_started", embedded_db=db.embedded is not None)
                yield {"hub": state}
                loops.cancel_scope.cancel()
            if billing is not None:
                await billing.drain()
            await writer.drain()
            await resolver.flush_last_used()
            log.info("hub_stopped")

    return lifespan


def create_app(settings: Settings) -> FastAPI:
    """Build the hub's ASGI app; resources are opened by the lifespan, not here."""
    metrics = Metrics()
    mcp = McpMount(settings)
    app = HubApp(
        title="iamine hub",
        version="0.1.0",
        summary="OpenAI-compatible API and MCP memory server of a cooperative AI pool.",
        lifespan=_lifespan(settings, metrics, mcp),
        responses=ERROR_RESPONSES,
        # Metrics are Prometheus' (/metrics): FastAPI's OpenTelemetry hooks stay off, else every
        # request asks the environment whether a provider is configured (3 % of the hub's CPU).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    # Routes are matched in order, router by router: the chat path first (matching a chat
    # request went from ~90 µs, through every router included before it, to ~9 µs).
    app.include_router(chat.router)
    app.include_router(health.router)
    app.include_router(tokens.router)
    app.include_router(admin.router)
    app.include_router(blacklist.router)
    app.include_router(pool.router)
    app.include_router(pool.public_router)
    app.include_router(workers.router)
    app.include_router(conversations.router)
    app.include_router(memory.router)
    app.include_router(facts.router)
    app.include_router(notes.router)
    app.include_router(namespaces.router)
    app.include_router(recall.router)
    app.include_router(jobs.router)
    app.include_router(red.router)
    app.include_router(agents.router)
    app.include_router(preferences.router)
    app.include_router(worker_records.router)
    app.include_router(worker_records.admin_router)
    app.include_router(federation.router)
    app.include_router(federation.admin_router)
    app.include_router(federation_forward.router)
    app.include_router(federation_forward.admin_router)
    app.include_router(federation_notes.router)
    app.include_router(federation_notes.admin_router)
    app.include_router(account.router)
    app.include_router(account.admin_router)
    app.include_router(disputes.router)
    app.include_router(clients.router)
    mount_web(app)
    mcp.attach(app)
    max_body_bytes = settings.server.max_body_bytes
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.serve_chat_directly(
        chat.router,
        lambda route: RequestContextMiddleware(BodyLimitMiddleware(route, max_body_bytes), metrics),
    )
    return app
