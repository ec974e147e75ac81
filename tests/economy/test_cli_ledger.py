"""``iamine ledger balance|statement|verify`` through typer's runner, on a real database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from economy.accounts import AccountKey
from economy.ledger import Ledger
from economy.pricing import Usage
from hub import accounts
from hub.cli import app
from tests.economy.conftest import POLICY, FakeClock

runner = CliRunner()


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


async def one_job(database_url: str) -> None:
    """Carol gets her trial grant and runs a job that her own worker serves."""
    conn = await asyncpg.connect(database_url)
    try:
        carol = await accounts.create_user(conn, "carol")
        ledger = Ledger(POLICY, FakeClock(datetime.now(UTC)))  # the CLI reads holds at now
        await ledger.grant_trial(conn, carol.id)
        await ledger.hold(conn, "job-1", carol.id, 5_000)
        await ledger.post(conn, "job-1", Usage("small", 1_000, 500), carol.id)
        await ledger.hold(conn, "job-2", carol.id, 7_000)
    finally:
        await conn.close()


async def execute(database_url: str, sql: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def test_every_ledger_command_has_help_text() -> None:
    for command in ("balance", "statement", "verify"):
        output = runner.invoke(app, ["ledger", command, "--help"]).output
        assert "Usage" in output and len(output.splitlines()) > 3, command


def test_balance_shows_every_account_or_one_users_in_iamine(
    env: dict[str, str], database_url: str
) -> None:
    asyncio.run(one_job(database_url))
    everything = invoke(env, "ledger", "balance")
    assert "carol" in everything and "pool_fee" in everything and "trial_grant" in everything
    assert "-0.050000" in everything  # the trial grant account issued 50,000 micro-credits
    mine = invoke(env, "ledger", "balance", "carol")
    assert "pool_fee" not in mine
    # spent 2,000 of 50,000, 7,000 held by the open job; earned 1,800 as a worker owner
    assert "0.048000" in mine and "0.007000" in mine and "0.041000" in mine
    assert "earnings:carol" in mine and "0.001800" in mine


def test_statement_lists_an_accounts_entries_with_the_balance_after_each(
    env: dict[str, str], database_url: str
) -> None:
    asyncio.run(one_job(database_url))
    spent = invoke(env, "ledger", "statement", "carol")
    assert "post:job-1" in spent and "hold:job-2" in spent and "trial:" in spent
    earned = invoke(env, "ledger", "statement", "earnings:carol")
    assert "post:job-1" in earned and "0.001800" in earned and "hold:" not in earned
    assert "post:job-1" in invoke(env, "ledger", "statement", "pool_fee")
    newest = invoke(env, "ledger", "statement", "carol", "--limit", "1")
    assert "hold:job-2" in newest and "post:job-1" not in newest


def test_statement_of_an_unknown_user_or_account_exits_1(env: dict[str, str]) -> None:
    assert "No user named" in invoke(env, "ledger", "statement", "nobody", code=1)
    assert "No user named" in invoke(env, "ledger", "balance", "nobody", code=1)
    assert "No ledger account" in invoke(env, "ledger", "statement", "peer:elsewhere", code=1)


def test_verify_passes_on_sound_books_and_exits_1_with_the_problems_otherwise(
    env: dict[str, str], database_url: str
) -> None:
    asyncio.run(one_job(database_url))
    output = invoke(env, "ledger", "verify")
    assert "ledger verified" in output and "1 open holds, 1 jobs charged" in output
    asyncio.run(execute(database_url, "UPDATE ledger_accounts SET debits_pending = 0"))
    failed = invoke(env, "ledger", "verify", code=1)
    assert "problem:" in failed and "user:" in failed and "totals differ" in failed


async def peer_chats(database_url: str) -> None:
    """One chat served for a peer pool, one forwarded to it for carol."""
    conn = await asyncpg.connect(database_url)
    try:
        carol = await accounts.create_user(conn, "carol")
        ledger = Ledger(POLICY, FakeClock(datetime.now(UTC)))
        peer = AccountKey.peer_pool("iam1peer")
        await ledger.hold(conn, "served-1", peer, 5_000)
        await ledger.post(conn, "served-1", Usage("small", 1_000, 500), carol.id)
        await ledger.hold(conn, "sent-1", carol.id, 5_000)
        await ledger.post_to_peer(conn, "sent-1", Usage("small", 10, 10), "iam1peer", 1_500)
    finally:
        await conn.close()


def test_peers_shows_what_each_peer_pool_was_charged_and_is_owed(
    env: dict[str, str], database_url: str
) -> None:
    asyncio.run(peer_chats(database_url))
    out = invoke(env, "ledger", "peers")
    assert "iam1peer" in out
    assert "0.002000" in out and "0.001500" in out  # charged for the served chat; owed for ours
    assert "-0.000500" in out  # its balance: owed 1,500 less charged 2,000
    later = invoke(env, "ledger", "peers", "--since", "2999-01-01T00:00:00")
    assert "0.002000" not in later and "0.001500" not in later  # no chat since then
