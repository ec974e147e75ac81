"""Numbered SQL migrations (``hub/migrations/NNN_name.sql``) applied in order, under a lock.

Each migration runs in its own transaction and is recorded in ``schema_migrations`` with the
SHA-256 of its file. A recorded migration whose file changed afterwards is refused: migrations are
never edited after they land; a change is a new, higher-numbered file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from hub.errors import MigrationError

# Arbitrary constant shared by every hub process: only one migrates a database at a time.
ADVISORY_LOCK_KEY = 0x1A3117E

_FILE_PATTERN = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text, recorded when applied."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationState:
    """A migration with what the database says about it."""

    migration: Migration
    applied: bool
    changed: bool


def default_directory() -> Path:
    """Return the directory of the migrations shipped with the hub."""
    return Path(str(resources.files("hub") / "migrations"))


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Read and order the migration files; refuse gaps and duplicate numbers."""
    directory = directory or default_directory()
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_PATTERN.match(path.name)
        if match is None:
            raise MigrationError(f"Migration file {path.name} is not named NNN_name.sql.")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"Migrations must be numbered 001, 002, ... without gaps; found "
                f"{migration.version:03d} where {expected:03d} was expected."
            )
    return found


async def _recorded(conn: asyncpg.Connection) -> dict[int, str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


async def migration_status(
    conn: asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[MigrationState]:
    """Say, for each migration file, whether it is applied and whether its file changed since."""
    migrations = migrations if migrations is not None else load_migrations()
    recorded = await _recorded(conn)
    return [
        MigrationState(
            migration=m,
            applied=m.version in recorded,
            changed=m.version in recorded and recorded[m.version] != m.checksum,
        )
        for m in migrations
    ]


def _refuse_changed(states: list[MigrationState]) -> None:
    changed = [s.migration for s in states if s.changed]
    if changed:
        names = ", ".join(f"{m.version:03d}_{m.name}.sql" for m in changed)
        raise MigrationError(
            f"Applied migration files were changed afterwards: {names}. Restore them; put schema "
            "changes in a new, higher-numbered migration."
        )


async def is_current(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> bool:
    """True when every migration is applied and none changed."""
    states = await migration_status(conn, migrations)
    return all(s.applied and not s.changed for s in states)


async def migrate(
    conn: asyncpg.Connection,
    migrations: list[Migration] | None = None,
    on_applied: Callable[[Migration], None] | None = None,
) -> list[Migration]:
    """Apply pending migrations in order and return those applied.

    Holds a session advisory lock for the whole run, so concurrent hubs on one database apply each
    migration exactly once. Refuses to run when a recorded migration's file changed.
    """
    migrations = migrations if migrations is not None else load_migrations()
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        states = await migration_status(conn, migrations)
        _refuse_changed(states)
        applied: list[Migration] = []
        for state in states:
            if state.applied:
                continue
            m = state.migration
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"Migration {m.version:03d}_{m.name}.sql failed: {exc}"
                ) from exc
            applied.append(m)
            if on_applied is not None:
                on_applied(m)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)


async def ensure_current(conn: asyncpg.Connection) -> None:
    """Raise :class:`MigrationError` unless the schema is fully migrated and unchanged."""
    states = await migration_status(conn)
    _refuse_changed(states)
    pending = [s.migration for s in states if not s.applied]
    if pending:
        raise MigrationError(
            f"{len(pending)} migration(s) pending (first: {pending[0].version:03d}_"
            f"{pending[0].name}.sql). Run `iamine db migrate`."
        )
