"""``iamine federation`` without a peer to talk to: help, federation off, and bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from federation.identity import key_file
from hub.cli import app
from tests.federation.conftest import new_identity
from tests.hub.conftest import free_port

runner = CliRunner()


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "IAMINE_DATABASE_URL": database_url,
        "IAMINE_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "200",
    }


@pytest.fixture
def env_on(env: dict[str, str]) -> dict[str, str]:
    return {
        **env,
        "IAMINE_FEDERATION__ENABLED": "true",
        "IAMINE_FEDERATION__PUBLIC_URL": "https://pool.example",
    }


def invoke(env: dict[str, str], *args: str, code: int = 0) -> str:
    result = runner.invoke(app, ["federation", *args], env=env)
    assert result.exit_code == code, result.output
    return result.output


def test_every_federation_command_has_help_text() -> None:
    for command in (
        ["id"],
        ["invite"],
        ["peers", "add"],
        ["peers", "list"],
        ["peers", "remove"],
        ["peers", "ping"],
        ["members"],
        ["candidates", "list"],
        ["candidates", "admit"],
    ):
        output = runner.invoke(app, ["federation", *command, "--help"]).output
        assert "Usage" in output and len(output.splitlines()) > 3, command


def test_id_makes_the_key_once_and_says_federation_is_off(
    env: dict[str, str], tmp_path: Path
) -> None:
    first = invoke(env, "id")
    pool_id = re.search(r"pool id\s+(iam1[a-z2-7]{52})", first)
    assert pool_id is not None and "federation  off" in first and "(not set" in first
    assert pool_id[1] in invoke(env, "id")
    assert key_file(tmp_path / "data").stat().st_mode & 0o077 == 0


def test_id_refuses_a_key_others_may_read(env: dict[str, str], tmp_path: Path) -> None:
    invoke(env, "id")
    key_file(tmp_path / "data").chmod(0o644)
    assert "readable by others" in invoke(env, "id", code=1)


def test_invites_and_peering_need_federation_on(env: dict[str, str]) -> None:
    assert "federation is off" in invoke(env, "invite", code=1)
    pool_id = new_identity().pool_id
    output = invoke(
        env, "peers", "add", "https://x.example", "--fingerprint", pool_id, "--invite", "x", code=1
    )
    assert "federation is off" in output
    assert "pool id" in invoke(env, "peers", "list")
    assert "status" in invoke(env, "members")
    assert "vouched by" in invoke(env, "candidates", "list")
    assert "No candidate" in invoke(env, "candidates", "admit", pool_id, code=1)


def test_bad_input_is_a_clear_error(env_on: dict[str, str]) -> None:
    assert "positive number" in invoke(env_on, "invite", "--expires", "0m", code=2)
    assert "Not a pool id" in invoke(env_on, "invite", "--for", "iam1nope", code=1)
    assert "Not a pool id" in invoke(env_on, "peers", "remove", "nope", code=1)
    assert "No peer" in invoke(env_on, "peers", "remove", new_identity().pool_id, code=1)
    assert "No peer" in invoke(env_on, "peers", "ping", new_identity().pool_id, code=1)
    pool_id = new_identity().pool_id
    output = invoke(
        env_on,
        "peers",
        "add",
        "https://x.example",
        "--fingerprint",
        pool_id,
        "--invite",
        "bad",
        code=1,
    )
    assert "Not an invite code" in output


def test_adding_a_pool_that_does_not_answer_records_nothing(env_on: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    pool_id = new_identity().pool_id
    output = invoke(
        env_on,
        "peers",
        "add",
        url,
        "--fingerprint",
        pool_id,
        "--invite",
        "iaminv1_" + "a" * 43,
        code=1,
    )
    assert "did not answer" in output
    assert pool_id not in invoke(env_on, "peers", "list")
    minted = invoke(env_on, "invite", "--expires", "2h")
    assert "https://pool.example --fingerprint iam1" in minted
