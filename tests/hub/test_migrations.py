"""Migrations: apply in order to an empty database, idempotent, changed files refused."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from hub.errors import MigrationError
from hub.migrations import (
    Migration,
    ensure_current,
    is_current,
    load_migrations,
    migrate,
    migration_status,
)

pytestmark = pytest.mark.anyio


async def test_migrations_apply_to_an_empty_database_and_record_checksums(
    empty_database_url: str,
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        applied = await migrate(conn)
        assert [m.version for m in applied] == [m.version for m in load_migrations()]
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY 1")
        assert [(r["version"], r["checksum"]) for r in rows] == [
            (m.version, m.checksum) for m in load_migrations()
        ]
        assert await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname='vector'")
        assert await is_current(conn)
    finally:
        await conn.close()


async def test_migrate_twice_applies_nothing_the_second_time(conn: asyncpg.Connection) -> None:
    assert await migrate(conn) == []
    assert await migrate(conn) == []


async def test_a_changed_migration_file_is_refused(conn: asyncpg.Connection) -> None:
    original = load_migrations()
    edited = [Migration(m.version, m.name, m.sql + "\n-- edited\n") for m in original]
    with pytest.raises(MigrationError, match="changed"):
        await migrate(conn, edited)
    states = await migration_status(conn, edited)
    assert all(s.changed for s in states)
    assert not await is_current(conn, edited)


async def test_ensure_current_names_the_pending_migration(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(MigrationError, match=r"001_accounts\.sql"):
            await ensure_current(conn)
    finally:
        await conn.close()


async def test_a_new_migration_file_is_applied_after_the_recorded_ones(
    conn: asyncpg.Connection,
) -> None:
    extra = Migration(len(load_migrations()) + 1, "extra", "CREATE TABLE extra_t (id int);")
    applied = await migrate(conn, [*load_migrations(), extra])
    assert applied == [extra]
    assert await conn.fetchval("SELECT to_regclass('extra_t') IS NOT NULL")


async def test_a_failing_migration_rolls_back_and_is_not_recorded(conn: asyncpg.Connection) -> None:
    bad = Migration(len(load_migrations()) + 1, "bad", "CREATE TABLE half_t (id int); SELECT 1/0;")
    with pytest.raises(MigrationError, match=rf"{bad.version:03d}_bad\.sql"):
        await migrate(conn, [*load_migrations(), bad])
    assert not await conn.fetchval("SELECT to_regclass('half_t') IS NOT NULL")
    assert not await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE name = 'bad'")


def test_migration_files_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "003_c.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="without gaps"):
        load_migrations(tmp_path)


def test_migration_files_must_follow_the_naming_scheme(tmp_path: Path) -> None:
    (tmp_path / "1-first.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNN_name\.sql"):
        load_migrations(tmp_path)
