"""The hub's local worker process is supervised: killed or crashing, it is started again with a
capped, doubling wait, and ``/readyz`` says where it stands."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from hub.app import create_app
from hub.config import LocalWorkerSettings, ServerSettings, Settings
from hub.local_worker import restart_delay_s
from inference.settings import InferenceSettings
from memory.settings import MemorySettings
from tests.hub.conftest import BUNDLED_MODEL, free_port, wait_until


@contextmanager
def _serving(settings: Settings) -> Iterator[str]:
    """Run a hub (uvicorn in a thread) on ``settings.server.port``; stop it afterwards."""
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=settings.server.port,
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 30, "the hub to start")
    assert thread.is_alive(), "the hub failed to start"
    try:
        yield f"http://127.0.0.1:{settings.server.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _settings(
    database_url: str, tmp_path: Path, embedding_model_dir: Path, **inference: Any
) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        server=ServerSettings(port=free_port()),
        inference=InferenceSettings(local_worker=True, local_worker_threads=1, **inference),
        local_worker=LocalWorkerSettings(restart_initial_s=0.5, restart_max_s=1),
        memory=MemorySettings(embedding_model_dir=embedding_model_dir, facts_extraction=False),
    )


def _local_worker(url: str) -> dict[str, Any]:
    # Reported whether or not the hub is ready (the worker never decides that).
    status: dict[str, Any] = httpx.get(f"{url}/readyz", timeout=5).json()["local_worker"]
    return status


def _local_links(url: str, settings: Settings) -> int:
    """Worker links of the local worker (named ``local``), as the admin API lists them."""
    token = (settings.data_dir / "admin-token").read_text().strip()
    response = httpx.get(f"{url}/admin/api/workers", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return sum(
        w["name"] == "local" and BUNDLED_MODEL in w["models"] for w in response.json()["data"]
    )


@pytest.mark.parametrize(
    ("attempt", "expected"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (40, 5.0)]
)
def test_the_restart_wait_doubles_up_to_its_cap(attempt: int, expected: float) -> None:
    settings = LocalWorkerSettings(restart_initial_s=0.5, restart_max_s=5)
    assert restart_delay_s(settings, attempt) == expected


def test_a_killed_local_worker_is_started_again_and_readyz_reports_it(
    database_url: str, tmp_path: Path, embedding_model_dir: Path
) -> None:
    settings = _settings(database_url, tmp_path, embedding_model_dir)
    with _serving(settings) as url:
        wait_until(lambda: _local_worker(url)["state"] == "running", 30, "the local worker")
        first = _local_worker(url)
        assert first["restarts"] == 0
        wait_until(lambda: _local_links(url, settings) == 1, 60, "the local model to be served")
        os.kill(first["pid"], signal.SIGKILL)

        def restarted() -> bool:
            status = _local_worker(url)
            return bool(status["restarts"] == 1 and status["state"] == "running")

        wait_until(restarted, 30, "the local worker to be restarted")
        again = _local_worker(url)
        assert again["state"] == "running"
        assert again["pid"] != first["pid"]
        assert again["last_exit_code"] == -signal.SIGKILL
        wait_until(lambda: _local_links(url, settings) == 1, 60, "the local model to be back")


def test_a_local_worker_that_keeps_crashing_is_restarted_with_a_growing_attempt_count(
    database_url: str, tmp_path: Path, embedding_model_dir: Path
) -> None:
    settings = _settings(
        database_url, tmp_path, embedding_model_dir, local_worker_model=tmp_path / "missing.gguf"
    )
    with _serving(settings) as url:

        def restarting_again() -> bool:
            status = _local_worker(url)
            return bool(status["state"] == "restarting" and status["attempt"] >= 2)

        wait_until(restarting_again, 60, "a second restart of the crashing local worker")
        status = _local_worker(url)
        assert status["last_exit_code"] not in (None, 0)
        assert status["retry_in_s"] is not None and status["retry_in_s"] <= 1
