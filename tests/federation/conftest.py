"""Several live hubs on loopback, each with its own database, data directory and pool key.

A module shares its hubs (starting one costs a database copy and a server thread). Each hub
has federation on, with ``http://127.0.0.1:<port>`` as its public URL.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import peers
from federation.identity import PoolIdentity, key_file, load_identity
from federation.settings import FederationSettings
from federation.signatures import SignedRequest, sign_request
from hub.config import JobsSettings, Settings
from inference.settings import InferenceSettings
from memory.settings import MemorySettings
from tests.conftest import TEMPLATE_DB, database_uri, query_rows
from tests.federation.proxy import LinkProxy
from tests.hub.conftest import free_port, serve_in_thread

HUBS = 3


@dataclass
class FedHub:
    """A running hub with federation on (``proxy``: the link proxy its public URL points at)."""

    url: str
    database_url: str
    data_dir: Path
    admin_token: str
    settings: Settings
    proxy: LinkProxy | None = None

    @property
    def identity(self) -> PoolIdentity:
        """The hub's pool key, read from its data directory."""
        return load_identity(key_file(self.data_dir))

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request to the admin API with the admin token."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def env(self) -> dict[str, str]:
        """The environment a CLI command needs to act for this hub."""
        return {
            "IAMINE_DATABASE_URL": self.database_url,
            "IAMINE_DATA_DIR": str(self.data_dir),
            "IAMINE_FEDERATION__ENABLED": "true",
            "IAMINE_FEDERATION__PUBLIC_URL": self.url,
            "COLUMNS": "250",
        }

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Rows of a query on this hub's database (the test reads what the hub recorded)."""
        conn = await asyncpg.connect(self.database_url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """:meth:`fetch` from synchronous code."""
        return query_rows(self.database_url, sql, *args)


def admit_identity(database_url: str, identity: PoolIdentity) -> None:
    """Record ``identity`` as an admitted peer of the hub on ``database_url`` (at a URL that
    answers nothing), so the test can sign requests as that peer."""

    async def admit() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await peers.admit_peer(
                conn,
                pool_id=identity.pool_id,
                public_key=identity.public_key,
                url="http://127.0.0.1:9",
                admitted_by="test",
                now=datetime.now(UTC),
            )
        finally:
            await conn.close()

    asyncio.run(admit())


def new_identity() -> PoolIdentity:
    """A fresh pool key, not on disk (a stranger, or a peer the test admits itself)."""
    return PoolIdentity(Ed25519PrivateKey.generate())


def signed_request(
    identity: PoolIdentity,
    method: str,
    url: str,
    body: bytes = b"",
    *,
    now: datetime | None = None,
    nonce: str | None = None,
) -> SignedRequest:
    """A request signed the way a peer signs it (``url`` absolute)."""
    headers = {"content-type": "application/json"} if body else {}
    request = SignedRequest(method, url, headers)
    sign_request(identity, request, body, now=now or datetime.now(UTC), nonce=nonce)
    return request


def send(
    request: SignedRequest, body: bytes = b"", *, to: str | None = None, **headers: str
) -> httpx.Response:
    """Send a signed request as is (``to``: another origin than the one it was signed for)."""
    url = request.url if to is None else to + "/" + request.url.split("/", 3)[3]
    return httpx.request(
        request.method, url, content=body, headers={**request.headers, **headers}, timeout=30
    )


async def _create_database(admin_uri: str, name: str) -> None:
    conn = await asyncpg.connect(admin_uri)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    finally:
        await conn.close()


async def _drop_database(admin_uri: str, name: str) -> None:
    conn = await asyncpg.connect(admin_uri)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@contextmanager
def running_hubs(
    count: int,
    pg_admin_uri: str,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    memory: MemorySettings,
    federation: dict[str, Any] | None = None,
    proxied: bool = False,
) -> Iterator[list[FedHub]]:
    """``count`` hubs on loopback with federation on (each behind a :class:`LinkProxy` when
    ``proxied``: its public URL is the proxy's); stopped and dropped afterwards."""
    databases: list[str] = []
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []
    proxies: list[LinkProxy] = []
    hubs: list[FedHub] = []
    try:
        for _ in range(count):
            name = f"fed_{uuid.uuid4().hex[:12]}"
            asyncio.run(_create_database(pg_admin_uri, name))
            databases.append(name)
            port = free_port()
            proxy = None
            if proxied:
                proxy = LinkProxy(port).start()
                proxies.append(proxy)
            url = proxy.url if proxy is not None else f"http://127.0.0.1:{port}"
            database_url = database_uri(pg_admin_uri, name)
            settings = Settings(
                data_dir=tmp_path_factory.mktemp("fedhub"),
                database_url=database_url,
                inference=InferenceSettings(local_worker=False),
                memory=memory,
                jobs=JobsSettings(enabled=False),
                federation=FederationSettings(enabled=True, public_url=url, **(federation or {})),
            )
            server, thread = serve_in_thread(settings, port)
            servers.append((server, thread))
            assert thread.is_alive(), "a hub failed to start"
            admin_token = (settings.data_dir / "admin-token").read_text().strip()
            hubs.append(FedHub(url, database_url, settings.data_dir, admin_token, settings, proxy))
        yield hubs
    finally:
        for server, thread in servers:
            server.should_exit = True
            thread.join(timeout=30)
        for proxy in proxies:
            proxy.stop()
        for name in databases:
            asyncio.run(_drop_database(pg_admin_uri, name))


@pytest.fixture(scope="module")
def fed_hubs(pg_admin_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[FedHub]]:
    """Three hubs on loopback with federation on; stopped and dropped afterwards."""
    memory = MemorySettings(facts_extraction=False)
    with running_hubs(HUBS, pg_admin_uri, tmp_path_factory, memory=memory) as hubs:
        yield hubs


@pytest.fixture(scope="module")
def proxied_hubs(
    pg_admin_uri: str, tmp_path_factory: pytest.TempPathFactory, embedding_model_dir: Path
) -> Iterator[list[FedHub]]:
    """Five hubs, each behind a link proxy the test cuts and heals, with the embedding model
    (notes) and tombstones collectable as soon as every peer has them."""
    memory = MemorySettings(facts_extraction=False, embedding_model_dir=embedding_model_dir)
    federation = {"notes": {"tombstone_min_age_s": 0}}
    with running_hubs(
        5, pg_admin_uri, tmp_path_factory, memory=memory, federation=federation, proxied=True
    ) as hubs:
        yield hubs
