"""Background writes on a real database: lost writes are counted by kind and exported, and a full
queue drops new writes visibly instead of growing without bound."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import anyio
import asyncpg
import pytest
from prometheus_client import generate_latest

from hub.bookkeeping import BackgroundWriter, Rows
from hub.observability import Metrics
from inference.registry import WorkerRegistry
from inference.settings import InferenceSettings

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the test's database, with a table to write to."""
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as created:
        await created.execute("CREATE TABLE notes_written (text text NOT NULL)")
        yield created


def _note(text: str) -> Any:
    async def write(conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO notes_written (text) VALUES ($1)", text)

    return write


async def _doomed(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT 1 / 0")


async def _written(pool: asyncpg.Pool) -> list[str]:
    return [r["text"] for r in await pool.fetch("SELECT text FROM notes_written ORDER BY text")]


def _scrape(writer: BackgroundWriter) -> str:
    metrics = Metrics()
    metrics.watch(WorkerRegistry(InferenceSettings()), writer)
    return generate_latest(metrics.registry).decode()


async def test_a_write_that_always_fails_is_counted_as_lost_and_the_others_land(
    pool: asyncpg.Pool, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    writer = BackgroundWriter(pool)
    assert writer.submit("l2", _note("before"))
    assert writer.submit("l1", _doomed)
    assert writer.submit("l2", _note("after"))
    await writer.drain()
    assert await _written(pool) == ["after", "before"]
    assert writer.lost == {"l1": 1}
    assert writer.failed == 1
    assert 'iamine_bookkeeping_lost_total{kind="l1"} 1.0' in _scrape(writer)
    assert any(e["event"] == "bookkeeping_write_lost" and e["kind"] == "l1" for e in captured_logs)


async def test_a_write_raising_a_non_database_error_is_lost_without_stopping_the_writer(
    pool: asyncpg.Pool,
) -> None:
    async def broken(conn: asyncpg.Connection) -> None:
        raise ValueError("a bug in a write")

    writer = BackgroundWriter(pool)
    writer.submit("exclusion", broken)
    writer.submit("l2", _note("kept"))
    await writer.drain()
    assert writer.lost == {"exclusion": 1}
    assert await _written(pool) == ["kept"]


async def test_a_full_queue_drops_new_writes_and_counts_them(
    pool: asyncpg.Pool, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    writer = BackgroundWriter(pool, queue_size=2)
    assert writer.submit("l2", _note("one"))
    assert writer.submit("l2", _note("two"))
    assert not writer.submit("l1", _note("three"))
    assert writer.pending == 2
    assert writer.dropped == {"l1": 1}
    text = _scrape(writer)
    assert 'iamine_bookkeeping_dropped_total{kind="l1"} 1.0' in text
    assert "iamine_bookkeeping_pending 2.0" in text
    assert "iamine_bookkeeping_capacity 2.0" in text
    assert any(e["event"] == "bookkeeping_write_dropped" for e in captured_logs)
    await writer.drain()
    assert await _written(pool) == ["one", "two"]
    assert writer.submit("l1", _note("room again"))


async def test_the_metrics_exist_before_anything_is_lost(pool: asyncpg.Pool) -> None:
    text = _scrape(BackgroundWriter(pool))
    assert "# TYPE iamine_bookkeeping_lost_total counter" in text
    assert "# TYPE iamine_bookkeeping_dropped_total counter" in text


async def _transactions(pool: asyncpg.Pool) -> set[str]:
    return {r["tx"] for r in await pool.fetch("SELECT xmin::text AS tx FROM notes_written")}


async def test_writes_within_the_window_are_committed_together(pool: asyncpg.Pool) -> None:
    writer = BackgroundWriter(pool, window_s=0.3)
    async with anyio.create_task_group() as running:
        running.start_soon(writer.run)
        for text in ("a", "b", "c"):
            assert writer.submit("l1", _note(text))
            await anyio.sleep(0.01)  # apart, as one chat's writes are
        with anyio.fail_after(10):
            while True:
                if not writer.pending and len(await _written(pool)) == 3:
                    break
                await anyio.sleep(0.02)
        running.cancel_scope.cancel()
    assert await _written(pool) == ["a", "b", "c"]
    assert len(await _transactions(pool)) == 1


async def test_a_shutdown_during_the_window_applies_the_writes_in_hand(pool: asyncpg.Pool) -> None:
    writer = BackgroundWriter(pool, window_s=30)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as running:
            running.start_soon(writer.run)
            assert writer.submit("l1", _note("in hand"))
            await anyio.wait_all_tasks_blocked()  # the writer took it and waits for more
            assert writer.pending == 0
            running.cancel_scope.cancel()
    await writer.drain()
    assert await _written(pool) == ["in hand"]


INSERT = "INSERT INTO notes_written (text) VALUES ($1)"


async def test_rows_of_one_statement_land_together_before_the_other_writes(
    pool: asyncpg.Pool,
) -> None:
    seen: list[list[str]] = []

    async def reads_first(conn: asyncpg.Connection) -> None:
        seen.append([r["text"] for r in await conn.fetch("SELECT text FROM notes_written")])

    writer = BackgroundWriter(pool)
    writer.submit("l1", Rows(INSERT, [("a",), ("b",)]))
    writer.submit("l2", reads_first)  # submitted between rows: runs after all of them
    writer.submit("l1", Rows(INSERT, [("c",)]))
    writer.submit("conversation", Rows(INSERT, []))
    await writer.drain()
    assert await _written(pool) == ["a", "b", "c"]
    assert sorted(seen[0]) == ["a", "b", "c"]
    assert len(await _transactions(pool)) == 1


async def test_rows_that_fail_are_retried_alone_and_only_they_are_lost(
    pool: asyncpg.Pool,
) -> None:
    writer = BackgroundWriter(pool)
    writer.submit("l1", Rows(INSERT, [("kept",)]))
    writer.submit("conversation", Rows(INSERT, [(None,)]))  # NOT NULL: fails, the batch too
    writer.submit("l1", Rows(INSERT, [("also kept",)]))
    await writer.drain()
    assert await _written(pool) == ["also kept", "kept"]
    assert writer.lost == {"conversation": 1}
