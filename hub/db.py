"""The database: which server (embedded or by URL), migrations at start, and the asyncpg pool.

pgvector's codec is registered on every pooled connection, so ``vector`` columns read and write
as numpy arrays everywhere without per-query work.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from pgvector.asyncpg import register_vector

from hub.config import Settings
from hub.embedded import EmbeddedPostgres
from hub.errors import DatabaseError
from hub.migrations import Migration, ensure_current, migrate


@dataclass
class Database:
    """An open database: the pool, its URI, and the embedded server if we started one."""

    pool: asyncpg.Pool
    uri: str
    embedded: EmbeddedPostgres | None


async def _init_connection(conn: asyncpg.Connection) -> None:
    await register_vector(conn)


async def release_connection(conn: asyncpg.Connection) -> None:
    """Hand a connection back to the pool without asyncpg's reset query.

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on
    every release: one round trip per acquire, a measurable part of a chat's added latency, for
    state the hub never leaves on pooled connections (it uses ``SET LOCAL`` and transaction-level
    advisory locks only, no ``LISTEN``; the migrations' session lock is on a connection of its
    own). A transaction left open on an error path is still rolled back.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def connect_once(uri: str, settings: Settings) -> asyncpg.Connection:
    """Open one plain connection (no pgvector codec), with a clear error when unreachable."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(
            uri, timeout=settings.database.connect_timeout_s
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseError(f"Cannot connect to PostgreSQL: {exc}") from exc
    return conn


async def create_pool(uri: str, settings: Settings) -> asyncpg.Pool:
    """Create the asyncpg pool with pgvector registered on every connection."""
    db = settings.database
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            uri,
            min_size=db.pool_min_size,
            max_size=db.pool_max_size,
            command_timeout=db.command_timeout_s,
            timeout=db.connect_timeout_s,
            init=_init_connection,
            reset=release_connection,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseError(f"Cannot open the database pool: {exc}") from exc
    return pool


async def prepare_schema(
    uri: str, settings: Settings, on_applied: Callable[[Migration], None] | None = None
) -> None:
    """Apply pending migrations (when ``auto_migrate``) or check the schema is current."""
    conn = await connect_once(uri, settings)
    try:
        if settings.database.auto_migrate:
            await migrate(conn, on_applied=on_applied)
        else:
            await ensure_current(conn)
    finally:
        await conn.close()


@asynccontextmanager
async def server_uri(settings: Settings) -> AsyncIterator[tuple[str, EmbeddedPostgres | None]]:
    """Yield the URI to use: ``database_url`` if set, else a started embedded server's."""
    if settings.database_url is not None:
        yield settings.database_url.get_secret_value(), None
        return
    embedded = EmbeddedPostgres(settings.data_dir)
    uri = await asyncio.to_thread(embedded.start)
    try:
        yield uri, embedded
    finally:
        await asyncio.to_thread(embedded.stop)


@asynccontextmanager
async def open_database(
    settings: Settings, on_applied: Callable[[Migration], None] | None = None
) -> AsyncIterator[Database]:
    """Start or reach the server, bring the schema up to date, and yield a pooled database."""
    async with server_uri(settings) as (uri, embedded):
        await prepare_schema(uri, settings, on_applied)
        pool = await create_pool(uri, settings)
        try:
            yield Database(pool=pool, uri=uri, embedded=embedded)
        finally:
            await asyncio.wait_for(pool.close(), timeout=settings.database.command_timeout_s)
