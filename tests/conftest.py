"""Shared fixtures: one real PostgreSQL (embedded pgvector) per test run, a fresh database per test.

A template database is migrated once; each test gets ``CREATE DATABASE ... TEMPLATE`` (a file
copy, milliseconds), so tests never share rows and never mock the database. Set
``IAMINE_TEST_DATABASE_URL`` to run against another server that has pgvector.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import structlog
from fastapi.testclient import TestClient
from structlog.testing import LogCapture

from hub.app import create_app
from hub.config import Settings
from hub.embedded import EmbeddedPostgres
from hub.migrations import migrate
from inference.settings import InferenceSettings
from memory.embeddings import Embedder, install_model
from memory.settings import MemorySettings

TEMPLATE_DB = "iamine_test_template"


def query_rows(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of one query on a database, from synchronous test code (a fresh connection)."""

    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(fetch())


def run_sql(database_url: str, sql: str) -> None:
    """Run one statement (``CREATE DATABASE``, say) from synchronous test code."""

    async def execute() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute())


def database_uri(uri: str, name: str) -> str:
    """The same server URI with another database name."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _create_template(admin_uri: str) -> None:
    conn = await asyncpg.connect(admin_uri)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await conn.close()
    conn = await asyncpg.connect(database_uri(admin_uri, TEMPLATE_DB))
    try:
        await migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_admin_uri() -> Iterator[str]:
    """URI of a PostgreSQL server with pgvector for the whole run (embedded unless configured).

    Its data lives in a private temporary directory, not pytest's ``tmp_path_factory``: pytest
    prunes old base directories, which would pull the data from under a concurrent run's server.
    """
    external = os.environ.get("IAMINE_TEST_DATABASE_URL")
    if external:
        asyncio.run(_create_template(external))
        yield external
        return
    data_dir = Path(tempfile.mkdtemp(prefix="iamine-test-"))
    server = EmbeddedPostgres(data_dir)
    uri = server.start()
    asyncio.run(_create_template(uri))
    yield uri
    server.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


async def _run_admin(admin_uri: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_uri)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def database_url(pg_admin_uri: str) -> Iterator[str]:
    """A fresh, fully migrated database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    asyncio.run(_run_admin(pg_admin_uri, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"))
    yield database_uri(pg_admin_uri, name)
    asyncio.run(_run_admin(pg_admin_uri, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def empty_database_url(pg_admin_uri: str) -> Iterator[str]:
    """A fresh database with no schema at all, dropped afterwards."""
    name = f"e_{uuid.uuid4().hex[:16]}"
    asyncio.run(_run_admin(pg_admin_uri, f"CREATE DATABASE {name}"))
    yield database_uri(pg_admin_uri, name)
    asyncio.run(_run_admin(pg_admin_uri, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def embedding_model_dir() -> Iterator[Path]:
    """The embedding model folder, installed once per run the way `iamine models install` does."""
    root = Path(tempfile.mkdtemp(prefix="iamine-model-"))
    folder = root / "all-minilm-l6-v2"
    install_model(folder)
    yield folder
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def embedder(embedding_model_dir: Path) -> Embedder:
    """One loaded embedding model for the run's library tests."""
    model = Embedder(embedding_model_dir)
    model.load()
    return model


@pytest.fixture
def settings(database_url: str, tmp_path: Path, embedding_model_dir: Path) -> Settings:
    """Hub settings on the test's database and a private data directory."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        inference=InferenceSettings(local_worker=False),
        memory=MemorySettings(embedding_model_dir=embedding_model_dir),
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A running hub (lifespan entered) behind Starlette's test client."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def admin_token(client: TestClient, settings: Settings) -> str:
    """The pool admin token the hub issued at start."""
    return (settings.data_dir / "admin-token").read_text().strip()


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """One plain connection to the test's database."""
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def hub_overrides() -> dict[str, Any]:
    """Settings fields a test module changes for its live hub (a module overrides this)."""
    return {}


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio (asyncpg and uvicorn need it)."""
    return "asyncio"


@pytest.fixture
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog event of the test, at any level (whatever an earlier test configured)."""
    saved = structlog.get_config()
    capture = LogCapture()
    structlog.configure(
        processors=[capture],
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=False,
    )
    try:
        yield capture.entries
    finally:
        structlog.configure(**saved)
