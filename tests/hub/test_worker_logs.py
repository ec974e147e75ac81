"""A worker's log lines: readable by default, JSON on request, and the hub's format for the
hub's own local worker (its lines join the hub's on one stderr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hub.cli import app
from hub.config import ServerSettings, Settings
from hub.local_worker import worker_command
from tests.hub.conftest import LiveHub, stop_worker, wait_until

runner = CliRunner()


def test_the_local_worker_logs_in_the_hubs_format_and_level() -> None:
    command = worker_command(
        Settings(server=ServerSettings(log_format="json", log_level="warning"))
    )
    assert command[command.index("--log-format") + 1] == "json"
    assert command[command.index("--log-level") + 1] == "warning"


@pytest.mark.parametrize(("option", "value"), [("--log-format", "xml"), ("--log-level", "loud")])
def test_a_bad_log_option_is_refused_before_anything_starts(option: str, value: str) -> None:
    result = runner.invoke(
        app, ["worker", "--hub", "http://127.0.0.1:9", "--token", "t", option, value]
    )
    assert result.exit_code == 2
    assert option in result.output and repr(value) in result.output


def test_a_worker_with_json_logs_writes_one_object_a_line(
    live_hub: LiveHub, tmp_path: Path
) -> None:
    errors = tmp_path / "stderr.log"
    argv = [sys.executable, "-m", "hub", "worker", "--hub", live_hub.url, "--name", "json-logs"]
    argv += ["--threads", "1", "--log-format", "json"]
    token = live_hub.worker_token_for("json-logs")
    with errors.open("w") as stderr:
        process = subprocess.Popen(
            argv,
            env={**os.environ, "IAMINE_WORKER_TOKEN": token},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_until(lambda: "worker_welcomed" in errors.read_text(), 60, "the worker's welcome")
    finally:
        stop_worker(process)
    lines = [line for line in errors.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    welcomed = [e for e in events if e["event"] == "worker_welcomed"]
    assert len(welcomed) == 1
    assert welcomed[0]["level"] == "info" and welcomed[0]["timestamp"].endswith("Z")
