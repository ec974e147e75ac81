"""The replica registry in PostgreSQL: which hub replicas live, and which holds which worker.

Each replica of a pool (docs/scale-out.md) keeps a row in ``hub_replicas`` whose ``heartbeat``
it renews every ``heartbeat_s``, and one ``worker_sessions`` row per worker whose WebSocket it
holds (its models, slots and free slots). Sessions follow link and unlink within
``CHANGE_CHECK_S`` (the set of linked workers is compared that often, in memory); free slots are
refreshed with each heartbeat. A replica silent for ``replica_stale_s`` is dead: every reader
ignores it (:func:`live_replicas`, :func:`sessions`) and each heartbeat of a live replica deletes
dead rows, their sessions with them. A replica that stops cleanly deletes its own row.

The live placement view is not read from here (that would be a query per chat): it travels on
the bus (``hub/replica_view.py``). This is the durable record an operator reads, and what says
which replica holds a worker when the bus view is not at hand.

**A replica's id outlives its process** (:func:`replica_id`): ``IAMINE_BUS__REPLICA_ID``, else
the id kept in the data directory's ``replica-id`` file, made at the first start. A restarted
replica therefore finds its durable JetStream consumer and the hand-offs queued for it while it
was down. One id belongs to one live process: :func:`hold_replica_id` takes a PostgreSQL
advisory lock on it for the process's lifetime, on a connection of its own. A second process
claiming a held id is refused (``replica_id_in_use``) once it saw the holder's heartbeat row
advance; a holder whose heartbeat went stale is dead (its connection lingers only because its
machine vanished) and its lock is taken over.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio
import asyncpg
import structlog

from hub.errors import DatabaseError, HubError
from hub.replica_view import CHANGE_CHECK_S
from inference.registry import WorkerRegistry

log = structlog.get_logger()

REPLICA_ID_FILE = "replica-id"
# First key of the replica ids' advisory locks (the scheduler's leases use 0x1A31).
REPLICA_ID_CLASS = 0x1A32
_REPLICA_ID = re.compile(r"^[0-9a-f]{32}$")


def replica_id(configured: str | None, data_dir: Path) -> str:
    """This replica's id: the configured one, else the data directory's (made if missing).

    Raises :class:`HubError` ``replica_id_unreadable`` when the file holds something else than
    an id: a replica must not silently become another one.
    """
    if configured is not None:
        return configured
    path = data_dir / REPLICA_ID_FILE
    if path.exists():
        kept = path.read_text(encoding="utf-8").strip()
        if _REPLICA_ID.match(kept) is None:
            raise HubError(
                f"{path} does not hold a replica id (32 hex digits): fix or delete it, or set "
                "IAMINE_BUS__REPLICA_ID.",
                code="replica_id_unreadable",
            )
        return kept
    made = uuid.uuid4().hex
    data_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(made + "\n", encoding="utf-8")
    partial.replace(path)
    return made


async def hold_replica_id(
    conn: asyncpg.Connection, replica: str, heartbeat_s: float, stale_s: float
) -> None:
    """Take ``replica``'s advisory lock on ``conn`` (held until it closes), or refuse.

    When another connection holds it, its heartbeat row decides: a row that advances is a live
    process (refused, :class:`HubError` ``replica_id_in_use``); a row gone stale is a dead one,
    whose connection is ended and whose lock is taken.
    """
    since, first = time.monotonic(), None
    while not await conn.fetchval(
        "SELECT pg_try_advisory_lock($1, hashtext($2))", REPLICA_ID_CLASS, replica
    ):
        row = await conn.fetchrow(
            "SELECT address, heartbeat, extract(epoch FROM now() - heartbeat)::float8 AS age "
            "FROM hub_replicas WHERE id = $1",
            replica,
        )
        beat = None if row is None else row["heartbeat"]
        if row is not None and first is not None and beat != first:
            raise HubError(
                f"Replica id {replica} is in use by a live hub process (its heartbeat row: "
                f"address {row['address']}, beat {row['age']:.1f} s ago). Give each replica "
                "its own data directory or IAMINE_BUS__REPLICA_ID.",
                code="replica_id_in_use",
            )
        # No row yet may be a holder that is still starting: silent only after stale_s.
        silent = row["age"] > stale_s if row is not None else time.monotonic() - since > stale_s
        if silent:
            await _end_holder(conn, replica)
        first = beat
        log.info("replica_id_held_elsewhere", replica=replica, waiting_s=heartbeat_s)
        await asyncio.sleep(heartbeat_s)


# What using a connection the server ended may raise (asyncpg's protocol state included).
_LOST = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


class ReplicaIdLock:
    """This process's hold on its replica id, taken at start and kept with each heartbeat.

    The advisory lock lives as long as its connection: when the database restarts or the
    connection drops, :meth:`keep` opens another and takes the lock again. If another process
    took the id meanwhile, both now claim it: logged ``replica_id_taken`` at each beat.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        replica: str,
        heartbeat_s: float,
        stale_s: float,
    ) -> None:
        self._connect = connect
        self.replica = replica
        self._heartbeat_s = heartbeat_s
        self._stale_s = stale_s
        self._conn: asyncpg.Connection | None = None

    async def take(self) -> None:
        """Take the id (:func:`hold_replica_id`): ``replica_id_in_use`` if a live process has it."""
        conn = await self._connect()
        try:
            await hold_replica_id(conn, self.replica, self._heartbeat_s, self._stale_s)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def keep(self) -> bool:
        """Whether this process still holds the id, taking it again if its connection was lost.

        Raises what connecting raises while the database is away (the next beat tries again).
        """
        if self._conn is not None:
            try:
                await self._conn.fetchval("SELECT 1")
                return True
            except _LOST:
                self._conn.terminate()
                self._conn = None
        conn = await self._connect()
        if await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", REPLICA_ID_CLASS, self.replica
        ):
            self._conn = conn
            log.warning("replica_id_lock_renewed", replica=self.replica)
            return True
        await conn.close()
        log.error("replica_id_taken", replica=self.replica, fix="stop one of the two processes")
        return False

    async def close(self) -> None:
        """Release the id (its connection closes)."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


async def _end_holder(conn: asyncpg.Connection, replica: str) -> None:
    """End the connection that holds ``replica``'s lock while its heartbeat is stale."""
    ended = await conn.fetchval(
        """
        SELECT count(pg_terminate_backend(pid)) FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND classid = $1
          AND objid = hashtext($2)::oid AND objsubid = 2
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """,
        REPLICA_ID_CLASS,
        replica,
    )
    log.warning("replica_id_taken_over", replica=replica, connections_ended=ended)


@dataclass(frozen=True)
class Session:
    """A worker's link, as the replica that holds it recorded it."""

    worker_id: str
    replica_id: str
    name: str
    models: list[str]
    slots: int
    free_slots: int


async def beat(conn: asyncpg.Connection, replica: str, address: str) -> bool:
    """Record that ``replica`` (reachable at ``address``) is alive now; True if its row is new.

    New means written for the first time, or again after another replica took it for dead and
    deleted it with its sessions: they must then be written again in full.
    """
    inserted: bool = await conn.fetchval(
        """
        INSERT INTO hub_replicas (id, address) VALUES ($1, $2)
        ON CONFLICT (id) DO UPDATE SET heartbeat = now(), address = EXCLUDED.address
        RETURNING xmax = 0
        """,
        replica,
        address,
    )
    return inserted


async def forget_dead(conn: asyncpg.Connection, stale_s: float) -> list[str]:
    """Delete replicas silent for ``stale_s`` (their sessions go with them); their ids."""
    rows = await conn.fetch(
        "DELETE FROM hub_replicas WHERE heartbeat < now() - make_interval(secs => $1) RETURNING id",
        stale_s,
    )
    return [row["id"] for row in rows]


async def leave(conn: asyncpg.Connection, replica: str) -> None:
    """A replica stopping: its row and its sessions go."""
    await conn.execute("DELETE FROM hub_replicas WHERE id = $1", replica)


@dataclass(frozen=True)
class LiveReplica:
    """A replica whose heartbeat is fresh."""

    id: str
    address: str
    started: datetime
    heartbeat: datetime


async def live_replicas(conn: asyncpg.Connection, stale_s: float) -> list[LiveReplica]:
    """Replicas whose heartbeat is younger than ``stale_s``, oldest first."""
    rows = await conn.fetch(
        "SELECT id, address, started, heartbeat FROM hub_replicas "
        "WHERE heartbeat >= now() - make_interval(secs => $1) ORDER BY started, id",
        stale_s,
    )
    return [LiveReplica(**dict(row)) for row in rows]


async def sessions(conn: asyncpg.Connection, stale_s: float) -> list[Session]:
    """Worker sessions held by live replicas (a dead replica's rows are ignored)."""
    rows = await conn.fetch(
        """
        SELECT s.worker_id, s.replica_id, s.name, s.models, s.slots, s.free_slots
        FROM worker_sessions s JOIN hub_replicas r ON r.id = s.replica_id
        WHERE r.heartbeat >= now() - make_interval(secs => $1)
        ORDER BY s.worker_id
        """,
        stale_s,
    )
    return [Session(**dict(row)) for row in rows]


SessionRow = tuple[str, tuple[str, ...], int, int]  # name, models, slots, free slots


def session_rows(registry: WorkerRegistry) -> dict[str, SessionRow]:
    """The registry's links as session rows, by worker id."""
    return {
        link.id: (link.name, tuple(link.models), link.slots, max(link.free_slots, 0))
        for link in registry.workers.values()
    }


async def record_sessions(
    conn: asyncpg.Connection, replica: str, rows: dict[str, SessionRow], gone: list[str]
) -> None:
    """Write ``replica``'s sessions ``rows`` and delete those of ``gone`` (one transaction).

    A worker that moved here from another replica takes its row over.
    """
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM worker_sessions WHERE replica_id = $1 AND worker_id = ANY($2)",
            replica,
            gone,
        )
        await conn.executemany(
            """
            INSERT INTO worker_sessions (worker_id, replica_id, name, models, slots, free_slots)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (worker_id) DO UPDATE SET
                replica_id = EXCLUDED.replica_id, name = EXCLUDED.name,
                models = EXCLUDED.models, slots = EXCLUDED.slots,
                free_slots = EXCLUDED.free_slots, updated_at = now(),
                linked_at = CASE WHEN worker_sessions.replica_id = EXCLUDED.replica_id
                            THEN worker_sessions.linked_at ELSE now() END
            """,
            [
                (worker_id, replica, name, list(models), slots, free)
                for worker_id, (name, models, slots, free) in rows.items()
            ],
        )


class ReplicaRecord:
    """Keeps this replica's rows current until cancelled, then deletes them."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        replica: str,
        address: str,
        registry: WorkerRegistry,
        heartbeat_s: float,
        stale_s: float,
        lock: ReplicaIdLock | None = None,
    ) -> None:
        self._pool = pool
        self._lock = lock
        self.replica = replica
        self._address = address
        self._registry = registry
        self._heartbeat_s = heartbeat_s
        self._stale_s = stale_s

    async def run(self) -> None:
        """Beat every ``heartbeat_s``; record sessions on link and unlink and with each beat.

        Only the sessions that changed since the last write are written (a worker's free slots
        at most once per heartbeat): a replica of 500 workers does not rewrite 500 rows a second.
        """
        written: dict[str, SessionRow] = {}
        beaten = 0.0
        try:
            while True:
                now, rows = time.monotonic(), session_rows(self._registry)
                beating = now - beaten >= self._heartbeat_s
                if beating or rows.keys() != written.keys():
                    try:
                        if beating and self._lock is not None:
                            await self._lock.keep()
                        await self._record(rows, written, beating=beating)
                    except (asyncpg.PostgresError, OSError, DatabaseError) as exc:
                        log.warning("replica_record_failed", error=str(exc)[:200])
                        await asyncio.sleep(self._heartbeat_s)  # the database is away: no storm
                    else:
                        written = rows
                        beaten = now if beating else beaten
                await asyncio.sleep(CHANGE_CHECK_S)
        finally:
            with anyio.CancelScope(shield=True):
                await self._leave()

    async def _record(
        self, rows: dict[str, SessionRow], written: dict[str, SessionRow], *, beating: bool
    ) -> None:
        async with self._pool.acquire() as conn:
            if await beat(conn, self.replica, self._address):
                written = {}  # a new row: no session of this replica is in the database
            changed = {w: row for w, row in rows.items() if written.get(w) != row}
            gone = [w for w in written if w not in rows]
            if changed or gone:
                await record_sessions(conn, self.replica, changed, gone)
            if beating:
                dead = await forget_dead(conn, self._stale_s)
                if dead:
                    log.warning("replicas_forgotten", replicas=dead)

    async def _leave(self) -> None:
        try:
            async with self._pool.acquire() as conn:
                await leave(conn, self.replica)
        except (asyncpg.PostgresError, OSError) as exc:
            log.info("replica_leave_failed", error=str(exc)[:200])
