"""L4 notes: namespaces and their write rules, private isolation, federation-ready rows."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import asyncpg
import pytest

from memory.embeddings import Embedder
from memory.errors import InvalidNamespace, NamespaceForbidden
from memory.notes import (
    NewNote,
    Note,
    WriteRule,
    add_note,
    content_hash,
    delete_note,
    get_note,
    list_namespaces,
    list_notes,
    resolve_namespace,
    set_write_rule,
    uuid7,
)
from memory.recall import RecallQuery, recall
from memory.settings import MemorySettings
from tests.memory.conftest import NOW, Member, new_member

pytestmark = pytest.mark.anyio

SETTINGS = MemorySettings()


async def write(
    conn: asyncpg.Connection,
    embedder: Embedder,
    member: Member,
    namespace: str,
    body: str,
    **fields: object,
) -> Note:
    """Store a note as the API does (namespace resolved for the member)."""
    canonical = resolve_namespace(namespace, member.user_id)
    note = NewNote(canonical, body, **fields)  # type: ignore[arg-type]
    vector = await embedder.embed_one(f"{note.title}\n{body}")
    return await add_note(conn, member.user_id, note, vector, now=NOW, settings=SETTINGS)


def test_uuid7_ids_carry_version_7_and_sort_by_time() -> None:
    first, second = uuid7(NOW), uuid7(NOW + timedelta(milliseconds=1))
    assert first.version == 7 and first.variant == "specified in RFC 4122"
    assert first < second
    assert int(first.hex[:12], 16) == int(NOW.timestamp() * 1000)


def test_the_content_hash_covers_the_content_and_ignores_tag_order() -> None:
    one = NewNote("pool:team", "body", "title", ("b", "a"), "agent")
    assert content_hash(one) == content_hash(
        NewNote("pool:team", "body", "title", ("a", "b"), "agent")
    )
    assert content_hash(one) != content_hash(
        NewNote("pool:team", "body!", "title", ("a",), "agent")
    )
    assert len(content_hash(one)) == 32


def test_namespaces_resolve_user_me_and_refuse_anything_else_private() -> None:
    me = UUID(int=1)
    assert resolve_namespace("user:me", me) == f"user:{me}"
    assert resolve_namespace(f"user:{me}", me) == f"user:{me}"
    assert resolve_namespace("pool:team-notes", me) == "pool:team-notes"
    with pytest.raises(NamespaceForbidden):
        resolve_namespace(f"user:{UUID(int=2)}", me)
    for bad in ("team", "pool:", "pool:Team", "user:bob", "fed:a b", "global:x"):
        with pytest.raises(InvalidNamespace):
            resolve_namespace(bad, me)


async def test_a_private_note_is_invisible_to_everyone_else_whatever_they_ask(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    bob = await new_member(vconn, "bob")
    secret = await write(vconn, embedder, alice, "user:me", "Alice's deploy key lives in 1Password")
    private = f"user:{alice.user_id}"
    assert await get_note(vconn, bob.user_id, secret.id) is None
    assert await list_notes(vconn, bob.user_id) == []
    assert await list_notes(vconn, bob.user_id, namespaces=[private]) == []
    vector = await embedder.embed_one("deploy key")
    for namespaces in (None, [private], [private, "pool:team"]):
        query = RecallQuery(
            "deploy key 1Password", vector, facts=0, notes=20, namespaces=namespaces
        )
        assert (await recall(vconn, None, bob.user_id, query)).notes == []
    assert not await delete_note(vconn, bob.user_id, secret.id, now=NOW)
    mine = await list_notes(vconn, alice.user_id)
    assert [n.id for n in mine] == [secret.id] and mine[0].mine


async def test_the_first_writer_owns_a_shared_namespace_and_may_restrict_writes(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    bob = await new_member(vconn, "bob")
    await write(vconn, embedder, alice, "pool:team", "Stand-up is at 9:30")
    await write(vconn, embedder, bob, "pool:team", "Retro moved to Thursday")
    with pytest.raises(NamespaceForbidden):
        await set_write_rule(vconn, bob.user_id, "pool:team", WriteRule.OWNER)
    restricted = await set_write_rule(vconn, alice.user_id, "pool:team", WriteRule.OWNER)
    assert restricted.write_rule is WriteRule.OWNER and restricted.owned and restricted.notes == 2
    with pytest.raises(NamespaceForbidden):
        await write(vconn, embedder, bob, "pool:team", "Sneaky edit")
    await write(vconn, embedder, alice, "pool:team", "Owner may still write")
    assert [n.owned for n in await list_namespaces(vconn, bob.user_id)] == [False]
    assert len(await list_notes(vconn, bob.user_id, namespaces=["pool:team"])) == 3


async def test_deleting_a_shared_note_leaves_a_tombstone_for_federation(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    bob = await new_member(vconn, "bob")
    note = await write(
        vconn, embedder, bob, "fed:recipes", "Tomato soup needs basil", tags=("soup",)
    )
    assert note.clock == 1 and note.origin_pool is None and note.id.version == 7
    other = await new_member(vconn, "carol")
    with pytest.raises(NamespaceForbidden):
        await delete_note(vconn, other.user_id, note.id, now=NOW)
    assert await delete_note(vconn, bob.user_id, note.id, now=NOW)
    tombstone = await get_note(vconn, alice.user_id, note.id)
    assert tombstone is not None and tombstone.deleted_at == NOW and tombstone.clock == 2
    assert (tombstone.body, tombstone.title, tombstone.tags) == ("", "", ())
    assert tombstone.content_hash != note.content_hash
    assert await list_notes(vconn, alice.user_id) == []
    assert not await delete_note(vconn, bob.user_id, note.id, now=NOW)


async def test_the_namespace_owner_may_delete_other_writers_notes(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    bob = await new_member(vconn, "bob")
    await write(vconn, embedder, alice, "pool:team", "Alice made this namespace")
    bobs = await write(vconn, embedder, bob, "pool:team", "Bob's off-topic note")
    assert await delete_note(vconn, alice.user_id, bobs.id, now=NOW)


async def test_deleting_a_private_note_removes_the_row(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    note = await write(vconn, embedder, alice, "user:me", "Scratch idea")
    assert await delete_note(vconn, alice.user_id, note.id, now=NOW)
    assert await vconn.fetchval("SELECT count(*) FROM notes") == 0


async def test_listing_filters_by_namespace_tags_and_time(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    await write(vconn, embedder, alice, "user:me", "Tagged", tags=("a", "b"))
    await write(vconn, embedder, alice, "pool:x", "Shared", tags=("a",))
    assert len(await list_notes(vconn, alice.user_id, tags=("a",))) == 2
    assert [n.body for n in await list_notes(vconn, alice.user_id, tags=("a", "b"))] == ["Tagged"]
    assert [n.body for n in await list_notes(vconn, alice.user_id, namespaces=["pool:x"])] == [
        "Shared"
    ]
    assert await list_notes(vconn, alice.user_id, since=NOW + timedelta(seconds=1)) == []
    assert len(await list_notes(vconn, alice.user_id, until=NOW + timedelta(seconds=1))) == 2
