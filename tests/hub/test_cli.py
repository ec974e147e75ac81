"""The CLI through typer's runner, on a real database."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hub.cli import app

runner = CliRunner()
TOKEN = re.compile(r"iam_[0-9a-f]{10}_[A-Za-z0-9_-]{43}")


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "IAMINE_DATABASE_URL": database_url,
        "IAMINE_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "200",
    }


def invoke(env: dict[str, str], *args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == code, result.output
    return result.output


def test_every_command_has_help_text() -> None:
    groups = {
        "db": ["migrate", "status"],
        "users": ["create", "list", "disable"],
        "tokens": ["create", "list", "revoke"],
        "admin-token": ["show", "rotate"],
    }
    assert "serve" in runner.invoke(app, ["--help"]).output
    assert "--data-dir" in runner.invoke(app, ["serve", "--help"]).output
    for group, commands in groups.items():
        for command in commands:
            output = runner.invoke(app, [group, command, "--help"]).output
            assert "Usage" in output and len(output.splitlines()) > 3, (group, command)


def test_db_migrate_and_status(env: dict[str, str]) -> None:
    assert "schema is current" in invoke(env, "db", "migrate")
    assert re.search(r"001\s+.*accounts\s+.*applied", invoke(env, "db", "status"))


def test_users_create_list_disable(env: dict[str, str]) -> None:
    assert "Created user" in invoke(env, "users", "create", "carol")
    assert "carol" in invoke(env, "users", "list")
    invoke(env, "users", "disable", "carol")
    listed = invoke(env, "users", "list")
    assert re.search(r"carol.*\d{4}-\d\d-\d\d.*\d{4}-\d\d-\d\d", listed)


def test_a_duplicate_user_is_a_clear_error(env: dict[str, str]) -> None:
    invoke(env, "users", "create", "dave")
    output = invoke(env, "users", "create", "dave", code=1)
    assert "already exists" in output


def test_tokens_create_list_revoke(env: dict[str, str]) -> None:
    invoke(env, "users", "create", "erin")
    created = invoke(
        env,
        "tokens",
        "create",
        "--user",
        "erin",
        "--scope",
        "user",
        "--scope",
        "worker",
        "--expires",
        "30d",
        "--name",
        "laptop",
    )
    token = TOKEN.search(created)
    assert token is not None
    prefix = token[0][4:14]
    listed = invoke(env, "tokens", "list", "--user", "erin")
    assert prefix in listed and "user,worker" in listed and "active" in listed
    assert token[0] not in listed
    invoke(env, "tokens", "revoke", prefix)
    assert "revoked" in invoke(env, "tokens", "list", "--user", "erin")


def test_tokens_create_rejects_a_bad_expiry_and_an_unknown_user(env: dict[str, str]) -> None:
    invoke(env, "users", "create", "frank")
    assert (
        runner.invoke(
            app, ["tokens", "create", "--user", "frank", "--expires", "soon"], env=env
        ).exit_code
        == 2
    )
    assert "No user named" in invoke(env, "tokens", "create", "--user", "ghost", code=1)
    assert "Scopes must be" in invoke(
        env, "tokens", "create", "--user", "frank", "--scope", "root", code=1
    )


def test_admin_token_show_and_rotate(env: dict[str, str]) -> None:
    shown = TOKEN.search(invoke(env, "admin-token", "show"))
    assert shown is not None
    again = TOKEN.search(invoke(env, "admin-token", "show"))
    assert again is not None and again[0] == shown[0]
    rotated = TOKEN.search(invoke(env, "admin-token", "rotate"))
    assert rotated is not None and rotated[0] != shown[0]
    after = TOKEN.search(invoke(env, "admin-token", "show"))
    assert after is not None and after[0] == rotated[0]
