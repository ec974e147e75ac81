"""The embedded PostgreSQL: starts with the hub, stops on exit, and has one owner at a time."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hub.app import create_app
from hub.cli import app as cli_app
from hub.config import Settings
from hub.embedded import DataDirInUseError, DataDirLock
from inference.settings import InferenceSettings


def test_the_embedded_server_starts_serves_and_stops_with_the_hub(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=None,
        inference=InferenceSettings(local_worker=False),
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        embedded = client.app_state["hub"].db.embedded
        pid = embedded.server_pid()
        assert pid is not None and psutil.pid_exists(pid)
        assert (settings.data_dir / "admin-token").stat().st_mode & 0o777 == 0o600
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_second_owner_of_the_data_dir_is_refused(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=None,
        inference=InferenceSettings(local_worker=False),
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        with pytest.raises(DataDirInUseError, match="already serving"):
            DataDirLock(settings.data_dir).acquire()
        with pytest.raises(DataDirInUseError), TestClient(create_app(settings)):
            pass
        result = CliRunner().invoke(
            cli_app, ["serve", "--data-dir", str(settings.data_dir), "--port", "1"]
        )
        assert result.exit_code == 1
        assert "already serving" in result.output


def test_the_lock_is_free_again_after_the_hub_stops(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with DataDirLock(data_dir):
        pass
    with DataDirLock(data_dir) as lock:
        assert lock.path.read_text().strip().isdigit()
