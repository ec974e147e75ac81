"""A live hub (uvicorn on a free port, in a thread) and a real worker process on the bundled model.

Module-scoped: a test module shares one hub and one worker, so the model loads once per module.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn

from hub import accounts
from hub.app import create_app
from hub.config import Settings
from hub.errors import NotFoundError
from inference import identity
from inference.protocol import Hardware
from inference.settings import InferenceSettings
from memory.settings import MemorySettings
from tests.conftest import TEMPLATE_DB, database_uri

BUNDLED_MODEL = "smollm2-135m-instruct"


@dataclass
class LiveHub:
    """A hub serving HTTP on 127.0.0.1 with a user, a worker token and the admin token.

    ``worker_token`` speaks for the worker record ``volunteer``; :meth:`worker_token_for` gives
    each other worker name a record (and token) of its own, since one record has one link.
    """

    url: str
    database_url: str
    user_token: str
    worker_token: str
    admin_token: str
    settings: Settings
    worker_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        """The worker endpoint."""
        return self.url.replace("http://", "ws://") + "/v1/workers/ws"

    def worker_token_for(
        self,
        name: str,
        *,
        hardware: Hardware = "gpu",
        slots: int = 64,
        trust: int = 2,
        owner: str = "volunteer",
    ) -> str:
        """The token of the worker record ``name`` (owned by ``owner``), made on first use.

        Test workers are registered established (trust 2) by default, as an admin would after
        vetting them, so that chats and the hub's private jobs reach them; trust tests ask for
        less. Callable from sync and async tests alike (it runs on a thread of its own).
        """
        if name not in self.worker_tokens:
            work = register_test_worker(self.database_url, name, hardware, slots, trust, owner)
            with ThreadPoolExecutor(1) as pool:
                self.worker_tokens[name] = pool.submit(asyncio.run, work).result()
        return self.worker_tokens[name]


async def register_test_worker(
    database_url: str,
    name: str,
    hardware: Hardware,
    slots: int,
    trust: int,
    owner_name: str = "volunteer",
) -> str:
    """Register a worker record owned by ``owner_name`` (made if missing) and issue its token."""
    conn = await asyncpg.connect(database_url)
    try:
        try:
            owner = await accounts.get_user(conn, owner_name)
        except NotFoundError:
            owner = await accounts.create_user(conn, owner_name)
        record = await identity.register_worker(
            conn,
            name=name,
            owner_id=owner.id,
            hardware=hardware,
            max_slots=slots,
            trust=trust,
            reason="test worker",
        )
        issued = await accounts.create_token(
            conn, user_id=owner.id, scopes=("worker",), name=name, worker_id=record.id
        )
        return issued.token
    finally:
        await conn.close()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _prepare(admin_uri: str, name: str) -> tuple[str, str, str]:
    admin = await asyncpg.connect(admin_uri)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(database_uri(admin_uri, name))
    try:
        user = await accounts.create_user(conn, "alice")
        user_token = await accounts.create_token(conn, user_id=user.id, scopes=("user",))
        await accounts.create_user(conn, "volunteer")
        url = database_uri(admin_uri, name)
        return url, user_token.token, await register_test_worker(url, "volunteer", "gpu", 64, 2)
    finally:
        await conn.close()


async def _drop(admin_uri: str, name: str) -> None:
    admin = await asyncpg.connect(admin_uri)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def live_hub(
    pg_admin_uri: str,
    tmp_path_factory: pytest.TempPathFactory,
    embedding_model_dir: Path,
    hub_overrides: dict[str, Any],
) -> Iterator[LiveHub]:
    """Run a hub for the module on its own database; stop it afterwards."""
    name = f"live_{uuid.uuid4().hex[:12]}"
    url, user_token, worker_token = asyncio.run(_prepare(pg_admin_uri, name))
    port = free_port()
    defaults: dict[str, Any] = {
        "inference": InferenceSettings(
            local_worker=False, heartbeat_interval_s=1, first_token_timeout_s=30
        ),
        # Fact extraction would put jobs of its own on the tests' workers; it has its own tests.
        "memory": MemorySettings(embedding_model_dir=embedding_model_dir, facts_extraction=False),
    }
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("hub"),
        database_url=url,
        **(defaults | hub_overrides),
    )
    server, thread = serve_in_thread(settings, port)
    admin_token = (settings.data_dir / "admin-token").read_text().strip()
    yield LiveHub(f"http://127.0.0.1:{port}", url, user_token, worker_token, admin_token, settings)
    server.should_exit = True
    thread.join(timeout=30)
    asyncio.run(_drop(pg_admin_uri, name))


def serve_in_thread(settings: Settings, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    """Run a hub on ``127.0.0.1:port`` in a thread of this process until ``should_exit``."""
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=round(settings.server.keep_alive_s),  # as `iamine serve` does
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 60, "a hub to start")
    assert thread.is_alive(), "a hub failed to start"
    return server, thread


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` (state in another thread or process) until true; fail after timeout.

    The live hub runs in its own thread and workers in their own processes, so there is no
    event to await from the test: a bounded poll is the honest wait.
    """
    if not eventually(condition, timeout_s):
        raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def eventually(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Whether ``condition`` becomes true within ``timeout_s`` (polled every 50 ms)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def wait_for_model(hub: LiveHub, model: str, present: bool = True, timeout_s: float = 60) -> None:
    """Wait until ``/v1/models`` lists the model (or no longer does)."""
    headers = {"Authorization": f"Bearer {hub.user_token}"}

    def listed() -> bool:
        data = httpx.get(f"{hub.url}/v1/models", headers=headers, timeout=5).json()["data"]
        return any(m["id"] == model for m in data) == present

    wait_until(listed, timeout_s, f"model {model!r} to be {'listed' if present else 'gone'}")


def start_worker(hub: LiveHub, name: str, log: Path) -> subprocess.Popen[bytes]:
    """Start a real `iamine worker` process on the bundled model (threads: 1, two may share)."""
    with log.open("w") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hub",
                "worker",
                "--hub",
                hub.url,
                "--name",
                name,
                "--threads",
                "1",
            ],
            env={**os.environ, "IAMINE_WORKER_TOKEN": hub.worker_token_for(name)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    """Terminate a worker process (kill it if it does not leave in time)."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@pytest.fixture(scope="module")
def real_worker(live_hub: LiveHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real `iamine worker` process serving the bundled model to the live hub."""
    process = start_worker(live_hub, "real", tmp_path_factory.mktemp("worker") / "worker.log")
    try:
        wait_for_model(live_hub, BUNDLED_MODEL)
        yield
    finally:
        stop_worker(process)
