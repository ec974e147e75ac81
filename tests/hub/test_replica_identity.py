"""A replica's id outlives its process, and one id belongs to one live process at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from hub import replicas as replica_registry
from hub.errors import HubError

REPLICA = "ab" * 16


def test_a_replica_id_is_made_once_in_the_data_dir_and_read_back(tmp_path: Path) -> None:
    made = replica_registry.replica_id(None, tmp_path / "data")
    assert len(made) == 32 and int(made, 16) >= 0
    assert replica_registry.replica_id(None, tmp_path / "data") == made
    assert replica_registry.replica_id(REPLICA, tmp_path / "data") == REPLICA  # the setting wins


def test_a_replica_id_file_holding_something_else_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / replica_registry.REPLICA_ID_FILE).write_text("not-an-id\n")
    with pytest.raises(HubError, match="does not hold a replica id") as refused:
        replica_registry.replica_id(None, tmp_path)
    assert refused.value.code == "replica_id_unreadable"


async def _beating(database_url: str, stop: anyio.Event) -> None:
    """The live holder's heartbeat, renewed as its ``ReplicaRecord`` would."""
    conn = await asyncpg.connect(database_url)
    try:
        while not stop.is_set():
            await replica_registry.beat(conn, REPLICA, "host-a:8420")
            await anyio.sleep(0.1)
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_a_second_live_process_claiming_a_held_id_is_refused_naming_the_holder(
    database_url: str,
) -> None:
    holder = await asyncpg.connect(database_url)
    claimant = await asyncpg.connect(database_url)
    try:
        await replica_registry.hold_replica_id(holder, REPLICA, heartbeat_s=0.2, stale_s=5)
        stop = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_beating, database_url, stop)
            with anyio.fail_after(10), pytest.raises(HubError) as refused:
                await replica_registry.hold_replica_id(
                    claimant, REPLICA, heartbeat_s=0.2, stale_s=5
                )
            stop.set()
        assert refused.value.code == "replica_id_in_use"
        assert "host-a:8420" in refused.value.message
        assert not holder.is_closed()  # the live holder is left alone
    finally:
        await holder.close()
        await claimant.close()


@pytest.mark.anyio
async def test_a_holder_whose_heartbeat_went_stale_loses_the_id_to_its_successor(
    database_url: str, conn: asyncpg.Connection
) -> None:
    vanished = await asyncpg.connect(database_url)  # a machine gone: its connection lingers
    successor = await asyncpg.connect(database_url)
    try:
        await replica_registry.hold_replica_id(vanished, REPLICA, heartbeat_s=0.2, stale_s=5)
        await replica_registry.beat(conn, REPLICA, "host-a:8420")
        await conn.execute(
            "UPDATE hub_replicas SET heartbeat = now() - interval '1 minute' WHERE id = $1",
            REPLICA,
        )
        with anyio.fail_after(10):
            await replica_registry.hold_replica_id(successor, REPLICA, heartbeat_s=0.2, stale_s=5)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await vanished.fetchval("SELECT 1")  # its session was ended
    finally:
        await vanished.close()
        await successor.close()


@pytest.mark.anyio
async def test_an_id_released_by_a_clean_stop_is_taken_at_once(database_url: str) -> None:
    first = await asyncpg.connect(database_url)
    await replica_registry.hold_replica_id(first, REPLICA, heartbeat_s=5, stale_s=5)
    await first.close()
    second = await asyncpg.connect(database_url)
    try:
        with anyio.fail_after(2):  # no wait: the lock went with the connection
            await replica_registry.hold_replica_id(second, REPLICA, heartbeat_s=5, stale_s=5)
    finally:
        await second.close()


async def _end_lock_sessions(conn: asyncpg.Connection) -> None:
    """What a database restart does to the lock: its session ends."""
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_locks "
        "WHERE locktype = 'advisory' AND classid = $1 AND pid <> pg_backend_pid()",
        replica_registry.REPLICA_ID_CLASS,
    )


@pytest.mark.anyio
async def test_a_lock_lost_with_its_connection_is_taken_again_or_the_clash_is_logged(
    database_url: str, conn: asyncpg.Connection, captured_logs: list[Any]
) -> None:
    async def connect() -> asyncpg.Connection:
        connection: asyncpg.Connection = await asyncpg.connect(database_url)
        return connection

    lock = replica_registry.ReplicaIdLock(connect, REPLICA, heartbeat_s=0.2, stale_s=5)
    await lock.take()
    try:
        assert await lock.keep()
        await _end_lock_sessions(conn)
        assert await lock.keep()  # a new connection, the lock taken again
        assert "replica_id_lock_renewed" in [e["event"] for e in captured_logs]
        await _end_lock_sessions(conn)
        intruder = await connect()  # another process takes the id in between
        try:
            await replica_registry.hold_replica_id(intruder, REPLICA, heartbeat_s=0.2, stale_s=5)
            assert not await lock.keep()
            assert "replica_id_taken" in [e["event"] for e in captured_logs]
        finally:
            await intruder.close()
    finally:
        await lock.close()
