"""Conversations as a whole: listed with counts, deleted one by one, crypto-shredded together."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from memory.conversations import (
    delete_conversation,
    get_conversation,
    list_conversations,
    record_exchange,
    shred_memory,
)
from memory.l1 import append_messages
from memory.l2 import append_turn
from tests.memory.conftest import NOW, Member, key_of, new_member

pytestmark = pytest.mark.anyio

EXCHANGE = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


async def test_conversations_are_listed_newest_first_with_counts(
    conn: asyncpg.Connection, alice: Member
) -> None:
    key = await key_of(conn, alice)
    await record_exchange(conn, alice.user_id, "older", NOW)
    await append_turn(conn, key, alice.user_id, "older", EXCHANGE, now=NOW)
    await append_turn(conn, key, alice.user_id, "newer", EXCHANGE, now=NOW + timedelta(1))
    await append_turn(conn, key, alice.user_id, "newer", EXCHANGE, now=NOW + timedelta(2))
    listed = await list_conversations(conn, alice.user_id)
    assert [(c.id, c.turns, c.exchanges) for c in listed] == [("newer", 2, 0), ("older", 1, 1)]
    assert await list_conversations(conn, alice.user_id, limit=1) == listed[:1]


async def test_another_users_conversation_is_invisible_and_undeletable(
    conn: asyncpg.Connection, alice: Member
) -> None:
    bob = await new_member(conn, "bob")
    await append_turn(conn, await key_of(conn, bob), bob.user_id, "c1", EXCHANGE, now=NOW)
    assert await get_conversation(conn, alice.user_id, "c1") is None
    assert await delete_conversation(conn, alice.user_id, "c1") is None
    assert await get_conversation(conn, bob.user_id, "c1") is not None


async def test_deleting_a_conversation_deletes_its_turns_and_l1_messages(
    conn: asyncpg.Connection, alice: Member
) -> None:
    key = await key_of(conn, alice)
    await append_turn(conn, key, alice.user_id, "c1", EXCHANGE, now=NOW)
    await append_turn(conn, key, alice.user_id, "c2", EXCHANGE, now=NOW)
    await append_messages(conn, alice.user_id, "c1", EXCHANGE, now=NOW, ttl_s=60)
    assert await delete_conversation(conn, alice.user_id, "c1") == (1, 2)
    assert [c.id for c in await list_conversations(conn, alice.user_id)] == ["c2"]


async def test_shredding_deletes_wraps_rows_and_generations_of_one_user_only(
    conn: asyncpg.Connection, alice: Member
) -> None:
    bob = await new_member(conn, "bob")
    for member in (alice, bob):
        key = await key_of(conn, member)
        await append_turn(conn, key, member.user_id, "c1", EXCHANGE, now=NOW)
        await append_messages(conn, member.user_id, "c1", EXCHANGE, now=NOW, ttl_s=60)
    report = await shred_memory(conn, alice.user_id)
    assert (report.wraps, report.generations, report.conversations) == (1, 1, 1)
    assert (report.turns, report.l1_messages) == (1, 2)
    for table in ("memory_key_wraps", "conversation_turns", "l1_messages", "conversations"):
        users = await conn.fetch(f"SELECT DISTINCT user_id FROM {table}")  # noqa: S608
        assert [r["user_id"] for r in users] == [bob.user_id], table
