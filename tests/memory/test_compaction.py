"""Compaction: long conversations stay usable, and no turn is lost when a summary cannot be made."""

from __future__ import annotations

import re
from typing import Any

import anyio
import asyncpg
import pytest

from memory.compaction import (
    SUMMARY_PREFIX,
    CompactionRequest,
    Compactor,
    SummaryUnavailable,
    compact_conversation,
    plan_compaction,
    store_summary,
    summary_prompt,
)
from memory.l2 import append_turn, context_messages, estimate_tokens, live_tokens, read_turns
from memory.settings import MemorySettings
from tests.memory.conftest import NOW, Member, key_of

pytestmark = pytest.mark.anyio

SETTINGS = MemorySettings(compaction_budget_tokens=300, compaction_keep_turns=2)


def exchange(n: int) -> list[dict[str, Any]]:
    """The n-th exchange of a long conversation."""
    return [
        {"role": "user", "content": f"fact {n}: the number of the day is {n * 7}. " * 3},
        {"role": "assistant", "content": f"noted fact {n}"},
    ]


class Notes:
    """An in-test summariser: remembers what it was asked and writes a short summary."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    async def __call__(self, messages: list[dict[str, Any]]) -> str:
        self.calls.append(messages)
        facts = {f for m in messages for f in re.findall(r"fact \d+", m["content"])}
        return "the user stated " + ", ".join(sorted(facts))


async def unavailable(messages: list[dict[str, Any]]) -> str:
    """A summariser with no worker to run on."""
    raise SummaryUnavailable("no worker serves the model")


async def _conversation(pool: asyncpg.Pool, member: Member, turns: int) -> None:
    async with pool.acquire() as conn:
        key = await key_of(conn, member)
        for n in range(turns):
            await append_turn(conn, key, member.user_id, "long", exchange(n), now=NOW)


@pytest.fixture
async def pool(database_url: str) -> Any:
    """A small pool on the test's database (compaction takes a pool, not a connection)."""
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        yield pool


def _request(member: Member) -> CompactionRequest:
    return CompactionRequest(member.user_id, member.token.id, member.token.text, "long")


def test_the_summary_prompt_carries_every_message_and_no_more() -> None:
    prompt = summary_prompt([*exchange(1), {"role": "assistant", "content": [{"text": "x"}]}])
    assert [m["role"] for m in prompt] == ["system", "user"]
    assert "fact 1" in prompt[1]["content"] and "assistant: x" in prompt[1]["content"]


async def test_compaction_keeps_a_long_conversation_usable(
    pool: asyncpg.Pool, alice: Member
) -> None:
    await _conversation(pool, alice, 12)
    notes = Notes()
    assert await compact_conversation(pool, _request(alice), SETTINGS, notes)
    async with pool.acquire() as conn:
        key = await key_of(conn, alice)
        context = await context_messages(conn, key, alice.user_id, "long")
        assert await live_tokens(conn, alice.user_id, "long") == estimate_tokens(context)
        assert await live_tokens(conn, alice.user_id, "long") <= SETTINGS.compaction_budget_tokens
        turns = await read_turns(conn, key, alice.user_id, "long")
    assert context[0]["role"] == "system" and context[0]["content"].startswith(SUMMARY_PREFIX)
    assert "fact 0" in context[0]["content"] and "fact 9" in context[0]["content"]
    assert context[1:] == exchange(10) + exchange(11)
    assert len(notes.calls[0]) == 20
    assert [t.kind for t in turns].count("turn") == 12  # originals kept by default


async def test_a_second_compaction_folds_the_previous_summary_in(
    pool: asyncpg.Pool, alice: Member
) -> None:
    await _conversation(pool, alice, 12)
    notes = Notes()
    assert await compact_conversation(pool, _request(alice), SETTINGS, notes)
    async with pool.acquire() as conn:
        key = await key_of(conn, alice)
        for n in range(12, 20):
            await append_turn(conn, key, alice.user_id, "long", exchange(n), now=NOW)
    assert await compact_conversation(pool, _request(alice), SETTINGS, notes)
    assert notes.calls[1][0]["content"].startswith(SUMMARY_PREFIX)
    async with pool.acquire() as conn:
        context = await context_messages(conn, await key_of(conn, alice), alice.user_id, "long")
    assert "fact 0" in context[0]["content"] and "fact 17" in context[0]["content"]
    assert context[1:] == exchange(18) + exchange(19)


async def test_compaction_can_drop_the_originals_once_summarised(
    pool: asyncpg.Pool, alice: Member
) -> None:
    await _conversation(pool, alice, 12)
    settings = SETTINGS.model_copy(update={"compaction_keep_originals": False})
    assert await compact_conversation(pool, _request(alice), settings, Notes())
    async with pool.acquire() as conn:
        key = await key_of(conn, alice)
        turns = await read_turns(conn, key, alice.user_id, "long")
        context = await context_messages(conn, key, alice.user_id, "long")
    assert [(t.kind, t.seq) for t in turns] == [("turn", 11), ("turn", 12), ("summary", 13)]
    assert context[1:] == exchange(10) + exchange(11)


async def test_no_turn_is_lost_when_no_summary_can_be_made_and_a_retry_succeeds(
    pool: asyncpg.Pool, alice: Member
) -> None:
    await _conversation(pool, alice, 12)
    settings = SETTINGS.model_copy(update={"compaction_keep_originals": False})
    assert not await compact_conversation(pool, _request(alice), settings, unavailable)
    async with pool.acquire() as conn:
        turns = await read_turns(conn, await key_of(conn, alice), alice.user_id, "long")
    assert [t.kind for t in turns] == ["turn"] * 12
    assert await compact_conversation(pool, _request(alice), settings, Notes())


async def test_a_summary_that_takes_too_long_is_abandoned(
    pool: asyncpg.Pool, alice: Member
) -> None:
    await _conversation(pool, alice, 12)

    async def stuck(messages: list[dict[str, Any]]) -> str:
        await anyio.Event().wait()
        return ""

    settings = SETTINGS.model_copy(update={"compaction_timeout_s": 0.05})
    with anyio.fail_after(5):
        assert not await compact_conversation(pool, _request(alice), settings, stuck)


async def test_a_conversation_within_budget_is_left_alone(
    pool: asyncpg.Pool, alice: Member
) -> None:
    await _conversation(pool, alice, 2)
    notes = Notes()
    assert not await compact_conversation(pool, _request(alice), SETTINGS, notes)
    assert notes.calls == []


async def test_a_summary_planned_on_stale_state_is_not_stored(
    pool: asyncpg.Pool, alice: Member
) -> None:
    await _conversation(pool, alice, 12)
    async with pool.acquire() as conn:
        key = await key_of(conn, alice)
        plan = await plan_compaction(conn, key, alice.user_id, "long", SETTINGS)
        assert plan is not None
        assert await store_summary(
            conn, key, alice.user_id, plan, "a", keep_originals=True, now=NOW
        )
        again = await store_summary(
            conn, key, alice.user_id, plan, "b", keep_originals=True, now=NOW
        )
    assert not again


async def test_the_compactor_queues_each_conversation_once_and_survives_failures(
    pool: asyncpg.Pool, alice: Member
) -> None:
    await _conversation(pool, alice, 12)
    compactor = Compactor(pool, SETTINGS.model_copy(update={"compaction_queue_size": 1}), Notes())
    assert compactor.submit(_request(alice))
    assert not compactor.submit(_request(alice))
    assert compactor.pending == 1
    revoked = CompactionRequest(alice.user_id, alice.token.id, "iam_0000000000_" + "x" * 43, "long")
    assert not await compactor.run_one(revoked)
    assert await compactor.run_one(_request(alice))
