"""Bookkeeping written off the request path, in batches, without losing it at shutdown.

Requests hand writes (conversation records, later L1 messages and ledger entries) to
:class:`BackgroundWriter`, which runs them in one transaction per batch on its own connection.
The lifespan drains the queue before the pool closes, so a clean shutdown loses nothing; a batch
that fails is retried once row by row, and a write that still fails is logged with its kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import structlog

log = structlog.get_logger()

Write = Callable[[asyncpg.Connection], Awaitable[None]]


@dataclass(frozen=True)
class _Item:
    kind: str
    write: Write


class BackgroundWriter:
    """A queue of database writes, applied in batches by one background task."""

    def __init__(self, pool: asyncpg.Pool, batch_size: int = 200) -> None:
        self._pool = pool
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._batch_size = batch_size
        self.failed = 0

    def submit(self, kind: str, write: Write) -> None:
        """Queue a write; returns at once."""
        self._queue.put_nowait(_Item(kind, write))

    @property
    def pending(self) -> int:
        """Writes queued and not yet applied."""
        return self._queue.qsize()

    async def run(self) -> None:
        """Apply writes forever (cancelled by the lifespan, which then calls :meth:`drain`)."""
        while True:
            first = await self._queue.get()
            await self._apply([first, *self._take(self._batch_size - 1)])

    async def drain(self) -> None:
        """Apply everything still queued."""
        while not self._queue.empty():
            await self._apply(self._take(self._batch_size))

    def _take(self, limit: int) -> list[_Item]:
        items: list[_Item] = []
        while len(items) < limit and not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    async def _apply(self, items: list[_Item]) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                for item in items:
                    await item.write(conn)
            return
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("bookkeeping_batch_failed", error=str(exc), items=len(items))
        for item in items:
            try:
                async with self._pool.acquire() as conn:
                    await item.write(conn)
            except (asyncpg.PostgresError, OSError) as exc:
                self.failed += 1
                log.error("bookkeeping_write_lost", kind=item.kind, error=str(exc))
