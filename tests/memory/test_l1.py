"""L1: raw messages kept until their TTL, hidden once expired, purged in batches."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from memory.l1 import append_messages, delete_messages, list_messages, purge_expired_l1
from tests.memory.conftest import NOW, Member, new_member

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}]


async def test_messages_are_kept_raw_and_in_order_until_their_ttl(
    conn: asyncpg.Connection, alice: Member
) -> None:
    assert await append_messages(conn, alice.user_id, "c1", MESSAGES, now=NOW, ttl_s=60) == 2
    kept = await list_messages(conn, alice.user_id, now=NOW + timedelta(seconds=59))
    assert [m.message for m in kept] == MESSAGES
    assert [m.role for m in kept] == ["user", "assistant"]
    assert kept[0].expires_at == NOW + timedelta(seconds=60)
    assert await list_messages(conn, alice.user_id, now=NOW + timedelta(seconds=60)) == []


async def test_purge_deletes_only_expired_messages_in_batches(
    conn: asyncpg.Connection, alice: Member
) -> None:
    await append_messages(conn, alice.user_id, "old", MESSAGES * 3, now=NOW, ttl_s=10)
    await append_messages(conn, alice.user_id, "new", MESSAGES, now=NOW, ttl_s=1000)
    purged = await purge_expired_l1(conn, NOW + timedelta(seconds=10), batch=2)
    assert purged == 6
    left = await conn.fetch("SELECT conversation_id FROM l1_messages")
    assert {r["conversation_id"] for r in left} == {"new"}
    assert await purge_expired_l1(conn, NOW + timedelta(seconds=10)) == 0


async def test_messages_are_listed_and_deleted_per_user_and_conversation(
    conn: asyncpg.Connection, alice: Member
) -> None:
    bob = await new_member(conn, "bob")
    await append_messages(conn, alice.user_id, "c1", MESSAGES, now=NOW, ttl_s=60)
    await append_messages(conn, alice.user_id, "c2", MESSAGES, now=NOW, ttl_s=60)
    await append_messages(conn, bob.user_id, "c1", MESSAGES, now=NOW, ttl_s=60)
    only_c1 = await list_messages(conn, alice.user_id, now=NOW, conversation_id="c1")
    assert {m.conversation_id for m in only_c1} == {"c1"} and len(only_c1) == 2
    assert await delete_messages(conn, alice.user_id, "c1") == 2
    assert await delete_messages(conn, alice.user_id) == 2
    assert len(await list_messages(conn, bob.user_id, now=NOW)) == 2


async def test_appending_nothing_writes_nothing(conn: asyncpg.Connection, alice: Member) -> None:
    assert await append_messages(conn, alice.user_id, "c1", [], now=NOW, ttl_s=60) == 0
    assert await conn.fetchval("SELECT count(*) FROM l1_messages") == 0
