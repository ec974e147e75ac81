"""L2: encrypted turns per user, opt-in, readable only with a token that opens the key."""

from __future__ import annotations

import asyncpg
import pytest

from memory.crypto import DecryptError
from memory.keys import issue_key
from memory.l2 import (
    Preferences,
    RecordOutcome,
    append_turn,
    context_messages,
    estimate_tokens,
    live_tokens,
    load_preferences,
    new_messages,
    read_turns,
    record_turn,
    save_preferences,
)
from memory.settings import MemorySettings
from tests.memory.conftest import NOW, Member, key_of, new_member, new_token

pytestmark = pytest.mark.anyio

SETTINGS = MemorySettings()
EXCHANGE = [
    {"role": "user", "content": "my cat is called Pixel"},
    {"role": "assistant", "content": "Pixel is a fine name"},
]


async def _record(conn: asyncpg.Connection, member: Member, conversation_id: str) -> RecordOutcome:
    return await record_turn(
        conn,
        member.user_id,
        member.token.id,
        member.token.text,
        conversation_id,
        EXCHANGE,
        now=NOW,
        settings=SETTINGS,
    )


def test_new_messages_are_those_after_the_last_assistant_message() -> None:
    history = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "tool", "content": "c"},
        {"role": "user", "content": "d"},
    ]
    assert new_messages(history) == history[3:]
    assert new_messages(history[:2]) == history[:2]


def test_token_estimates_grow_with_the_text() -> None:
    short = estimate_tokens([{"role": "user", "content": "hi"}])
    long = estimate_tokens([{"role": "user", "content": "hi " * 400}])
    assert 0 < short < long
    assert long >= 300


async def test_preferences_are_off_until_the_user_turns_them_on(
    conn: asyncpg.Connection,
) -> None:
    bob = await new_member(conn, "bob", memory=False)
    assert await load_preferences(conn, bob.user_id) == Preferences(False, False)
    await save_preferences(conn, bob.user_id, Preferences(True, False))
    assert await load_preferences(conn, bob.user_id) == Preferences(True, False)


async def test_nothing_is_written_to_l2_when_the_user_has_not_opted_in(
    conn: asyncpg.Connection,
) -> None:
    bob = await new_member(conn, "bob", memory=False)
    assert await _record(conn, bob, "c1") is RecordOutcome.DISABLED
    assert await conn.fetchval("SELECT count(*) FROM conversation_turns") == 0


async def test_a_recorded_turn_is_ciphertext_that_reads_back_in_order(
    conn: asyncpg.Connection, alice: Member
) -> None:
    assert await _record(conn, alice, "c1") is RecordOutcome.STORED
    assert await _record(conn, alice, "c1") is RecordOutcome.STORED
    stored = await conn.fetch("SELECT seq, ciphertext, generation FROM conversation_turns")
    assert [r["seq"] for r in stored] == [1, 2]
    assert all(b"Pixel" not in bytes(r["ciphertext"]) for r in stored)
    turns = await read_turns(conn, await key_of(conn, alice), alice.user_id, "c1")
    assert [t.seq for t in turns] == [1, 2]
    assert turns[0].messages == EXCHANGE
    assert turns[0].tokens == estimate_tokens(EXCHANGE)


async def test_a_token_that_cannot_open_the_key_stores_nothing(
    conn: asyncpg.Connection, alice: Member
) -> None:
    locked = await new_token(conn, alice.user_id)
    outcome = await record_turn(
        conn, alice.user_id, locked.id, locked.text, "c1", EXCHANGE, now=NOW, settings=SETTINGS
    )
    assert outcome is RecordOutcome.LOCKED
    assert await conn.fetchval("SELECT count(*) FROM conversation_turns") == 0


async def test_turns_past_the_budget_ask_for_compaction(
    conn: asyncpg.Connection, alice: Member
) -> None:
    small = MemorySettings(compaction_budget_tokens=64)
    outcomes = [
        await record_turn(
            conn,
            alice.user_id,
            alice.token.id,
            alice.token.text,
            "c1",
            EXCHANGE,
            now=NOW,
            settings=small,
        )
        for _ in range(4)
    ]
    assert outcomes[0] is RecordOutcome.STORED
    assert outcomes[-1] is RecordOutcome.STORED_OVER_BUDGET
    assert await live_tokens(conn, alice.user_id, "c1") == 4 * estimate_tokens(EXCHANGE)


async def test_a_ciphertext_moved_to_another_place_fails_to_read(
    conn: asyncpg.Connection, alice: Member
) -> None:
    await _record(conn, alice, "c1")
    await _record(conn, alice, "c2")
    await conn.execute(
        "UPDATE conversation_turns SET ciphertext = (SELECT ciphertext FROM conversation_turns "
        "WHERE conversation_id = 'c2') WHERE conversation_id = 'c1'"
    )
    with pytest.raises(DecryptError, match="moved"):
        await read_turns(conn, await key_of(conn, alice), alice.user_id, "c1")


async def test_turns_of_an_older_key_are_listed_as_unreadable(
    conn: asyncpg.Connection, alice: Member
) -> None:
    await _record(conn, alice, "c1")
    await conn.execute("UPDATE tokens SET revoked_at = now() WHERE id = $1", alice.token.id)
    fresh = await new_token(conn, alice.user_id, wrap=False)
    await issue_key(conn, alice.user_id, fresh.id, fresh.text, ("user",))
    key = await key_of(conn, alice, fresh)
    await append_turn(conn, key, alice.user_id, "c1", EXCHANGE, now=NOW)
    turns = await read_turns(conn, key, alice.user_id, "c1")
    assert [t.messages is None for t in turns] == [True, False]
    assert await context_messages(conn, key, alice.user_id, "c1") == EXCHANGE


async def test_another_users_conversation_reads_as_empty(
    conn: asyncpg.Connection, alice: Member
) -> None:
    bob = await new_member(conn, "bob")
    await _record(conn, bob, "shared-id")
    assert await read_turns(conn, await key_of(conn, alice), alice.user_id, "shared-id") == []
