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
        "jobs": ["list", "run"],
        "namespaces": ["create", "list", "delete", "subscribe", "unsubscribe", "grant", "revoke"],
        "ledger": ["balance", "statement", "verify"],
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


def test_jobs_list_shows_every_job_and_its_last_run(env: dict[str, str]) -> None:
    def row(listed: str, job: str) -> list[str]:
        line = next(line for line in listed.splitlines() if f" {job} " in line)
        return [cell.strip() for cell in line.strip("│ ").split("│")]

    listed = invoke(env, "jobs", "list")
    assert row(listed, "l1_purge")[:4] == ["l1_purge", "3600 s", "the hub or the CLI", "never"]
    assert row(listed, "checker")[:3] == ["checker", "900 s", "the hub"]
    assert row(listed, "red")[:2] == ["red", "10800 s"]
    invoke(env, "jobs", "run", "l1_purge")
    purge = row(invoke(env, "jobs", "list"), "l1_purge")
    assert re.match(r"\d{4}-\d\d-\d\dT", purge[3])
    assert purge[4:] == ["ok", "purged 0 expired L1 message(s)"]


def test_jobs_run_l1_purge_runs_here_and_is_recorded(
    env: dict[str, str], database_url: str
) -> None:
    import asyncio

    import asyncpg

    async def expired_message() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            user = await conn.fetchval("INSERT INTO users (name) VALUES ('gina') RETURNING id")
            await conn.execute(
                "INSERT INTO l1_messages (user_id, conversation_id, role, message, expires_at) "
                "VALUES ($1, 'c', 'user', '{}'::jsonb, now() - interval '1 second')",
                user,
            )
        finally:
            await conn.close()

    async def runs() -> list[tuple[str, str, str]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT job, trigger, outcome FROM job_runs")
            return [(r["job"], r["trigger"], r["outcome"]) for r in rows]
        finally:
            await conn.close()

    invoke(env, "db", "migrate")
    asyncio.run(expired_message())
    assert "l1_purge: ok - purged 1 expired L1 message(s)" in invoke(env, "jobs", "run", "l1_purge")
    assert asyncio.run(runs()) == [("l1_purge", "cli", "ok")]


def test_jobs_run_refuses_an_unknown_job(env: dict[str, str]) -> None:
    result = runner.invoke(app, ["jobs", "run", "no_such_job"], env=env)
    assert result.exit_code == 2
    assert "no job 'no_such_job'" in result.output
