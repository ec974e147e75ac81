"""Bookkeeping written off the request path, in batches, without losing it silently.

Requests hand writes (L1 messages, L2 conversation turns, worker exclusions) to
:class:`BackgroundWriter`, which runs them in one transaction per batch. A batch is what is
queued once ``window_s`` passed after its first write (a group commit: at one client a chat's
three writes were a transaction of their own, and its BEGIN and COMMIT a tenth of the hub's
CPU); the batch in hand is applied even when shutdown interrupts the wait. A write that is
plain rows of one statement (:class:`Rows`: a conversation's exchange count, L1 messages) is
merged with the batch's other rows of that statement into one ``executemany``: one round trip
for the batch instead of one per chat.
The lifespan drains the queue before the pool closes, so a clean shutdown loses nothing. A batch
that fails is retried once write by write; a write that still fails is *lost*: logged with its
kind and counted (``iamine_bookkeeping_lost_total{kind}``).

The queue is bounded (``write_queue_size``). :meth:`BackgroundWriter.submit` stays synchronous and
never waits, so a slow or unreachable database cannot stall requests; when the queue is full the
write is *dropped*: refused at once, logged and counted
(``iamine_bookkeeping_dropped_total{kind}``). Memory stays bounded and no write disappears
without a trace.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
import asyncpg
import structlog

log = structlog.get_logger()

Write = Callable[[asyncpg.Connection], Awaitable[None]]


@dataclass(frozen=True)
class Rows:
    """A write that is only rows for one SQL statement (its arguments, one tuple per row)."""

    sql: str
    rows: Sequence[Sequence[object]]


@dataclass(frozen=True)
class _Item:
    kind: str
    write: Write | Rows


async def _write_all(conn: asyncpg.Connection, items: Sequence[_Item]) -> None:
    """Apply ``items`` on ``conn``: the rows first, one ``executemany`` per statement in the
    order the statements first appear, then the other writes in their order. Rows go first
    because a later write may need them (an L2 turn's conversation row), never the reverse."""
    statements: dict[str, list[Sequence[object]]] = {}
    for item in items:
        if isinstance(item.write, Rows):
            statements.setdefault(item.write.sql, []).extend(item.write.rows)
    for sql, rows in statements.items():
        if rows:
            await conn.executemany(sql, rows)
    for item in items:
        if not isinstance(item.write, Rows):
            await item.write(conn)


class BackgroundWriter:
    """A bounded queue of database writes, applied in batches by one background task."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        batch_size: int = 200,
        queue_size: int = 10_000,
        window_s: float = 0.0,
    ) -> None:
        self._pool = pool
        self._window_s = window_s
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self.lost: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    @property
    def failed(self) -> int:
        """Writes lost so far, every kind together."""
        return self.lost.total()

    @property
    def pending(self) -> int:
        """Writes queued and not yet applied."""
        return self._queue.qsize()

    @property
    def capacity(self) -> int:
        """Most writes the queue holds."""
        return self._queue.maxsize

    def submit(self, kind: str, write: Write | Rows) -> bool:
        """Queue a write and return at once; False when the queue is full and it was dropped."""
        try:
            self._queue.put_nowait(_Item(kind, write))
        except asyncio.QueueFull:
            self.dropped[kind] += 1
            log.error("bookkeeping_write_dropped", kind=kind, queued=self.pending)
            return False
        return True

    async def run(self) -> None:
        """Apply writes forever (cancelled by the lifespan, which then calls :meth:`drain`)."""
        while True:
            first = await self._queue.get()
            try:
                if self._window_s > 0 and self._queue.qsize() < self._batch_size - 1:
                    await anyio.sleep(self._window_s)
            finally:
                # Shielded, and also when shutdown cancels the wait: the writes in hand land.
                with anyio.CancelScope(shield=True):
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

    # The writes are arbitrary callables (encryption included): whatever one raises, this loop is
    # the top-level handler that must survive it, so it catches Exception and records the loss.
    async def _apply(self, items: list[_Item]) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await _write_all(conn, items)
            return
        except Exception as exc:
            log.warning("bookkeeping_batch_failed", error=repr(exc), items=len(items))
        for item in items:
            try:
                async with self._pool.acquire() as conn:
                    await _write_all(conn, [item])
            except Exception as exc:
                self.lost[item.kind] += 1
                log.error("bookkeeping_write_lost", kind=item.kind, error=repr(exc))
