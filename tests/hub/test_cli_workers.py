"""``iamine workers``: register, token, list, update, trust — through typer's runner."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from hub import accounts
from inference import identity
from tests.hub.test_cli import TOKEN, env, invoke

__all__ = ["env"]  # the fixture, shared with test_cli


@pytest.fixture
def owner(env: dict[str, str]) -> str:
    invoke(env, "users", "create", "gpu-owner")
    return "gpu-owner"


def test_register_prints_a_token_that_authenticates_as_the_worker(
    env: dict[str, str], owner: str
) -> None:
    out = invoke(
        env, "workers", "register", "rig-1", "--owner", owner, "--hardware", "gpu",
        "--slots", "2", "--model", "m1", "--model", "m2", "--trust", "3",
    )  # fmt: skip
    assert "rig-1" in out and "trust 3" in out
    assert TOKEN.search(out)
    listed = invoke(env, "workers", "list")
    assert "rig-1" in listed and "gpu" in listed and "m1, m2" in listed and "3 granted" in listed
    again = invoke(env, "workers", "token", "rig-1")
    assert TOKEN.search(again) and TOKEN.search(again)[0] != TOKEN.search(out)[0]  # type: ignore[index]


def test_the_issued_tokens_speak_for_the_record(
    env: dict[str, str], owner: str, database_url: str
) -> None:
    out = invoke(env, "workers", "register", "rig-2", "--owner", owner)
    match = TOKEN.search(out)
    assert match is not None
    asyncio.run(_check_token(database_url, match[0]))


async def _check_token(database_url: str, text: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        prefix = accounts.token_prefix(text)
        assert prefix is not None
        token = await accounts.find_token_by_prefix(conn, prefix)
        record = await identity.find_worker(conn, "rig-2")
        assert token is not None and record is not None
        assert token.worker_id == record.id and token.scopes == ("worker",)
        assert record.trust == 0 and record.hardware == "cpu"
    finally:
        await conn.close()


def test_update_and_trust_change_the_record(env: dict[str, str], owner: str) -> None:
    invoke(env, "workers", "register", "rig-3", "--owner", owner)
    assert "gpu, 6 slots, m9" in invoke(
        env, "workers", "update", "rig-3", "--hardware", "gpu", "--slots", "6", "--model", "m9"
    )
    assert "any model" in invoke(env, "workers", "update", "rig-3", "--any-model")
    assert "trust 2 (established)" in invoke(env, "workers", "trust", "rig-3", "2")
    assert "trust 0 (new)" in invoke(env, "workers", "trust", "rig-3", "0", "--reason", "audit")
    assert "2 established" not in invoke(env, "workers", "list", "--owner", owner)


def test_bad_input_is_one_clear_line(env: dict[str, str], owner: str) -> None:
    invoke(env, "workers", "register", "rig-4", "--owner", owner)
    assert "exists" in invoke(env, "workers", "register", "rig-4", "--owner", owner, code=1)
    assert "No user" in invoke(env, "workers", "register", "rig-5", "--owner", "nobody", code=1)
    assert "No worker" in invoke(env, "workers", "trust", "ghost", "1", code=1)
    assert "gpu or cpu" in invoke(
        env, "workers", "register", "rig-6", "--owner", owner, "--hardware", "tpu", code=2
    )
    invoke(env, "workers", "trust", "rig-4", "7", code=2)
    assert "worker name" in invoke(env, "workers", "register", "bad name", "--owner", owner, code=1)
