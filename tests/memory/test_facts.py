"""L3 facts: encrypted text, dedup, supersede with history, per-user isolation, filtered HNSW."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import numpy as np
import pytest

from memory.conversations import shred_memory
from memory.embeddings import MODEL_DIM, MODEL_NAME, Embedder, Vector
from memory.facts import (
    FactAction,
    FactOutcome,
    NewFact,
    add_fact,
    delete_fact,
    get_fact,
    list_facts,
    overlap,
    same_frame,
)
from memory.recall import RecallQuery, recall
from memory.settings import MemorySettings
from tests.memory.conftest import NOW, Member, key_of, new_member

pytestmark = pytest.mark.anyio

SETTINGS = MemorySettings()


async def remember(
    conn: asyncpg.Connection,
    embedder: Embedder,
    member: Member,
    text: str,
    **fields: object,
) -> FactOutcome:
    """Embed and store one fact for the member, as the API does."""
    key = await key_of(conn, member)
    vector = await embedder.embed_one(text)
    new = NewFact(text=text, **fields)  # type: ignore[arg-type]
    return await add_fact(conn, key, member.user_id, new, vector, now=NOW, settings=SETTINGS)


async def current_texts(
    conn: asyncpg.Connection, member: Member, at: datetime = NOW
) -> list[str | None]:
    key = await key_of(conn, member)
    return sorted((f.text for f in await list_facts(conn, key, member.user_id, now=at)), key=str)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("I live in Paris", "I live in Berlin", True),
        ("The user lives in Paris", "The user lives in Berlin now", True),
        ("My favourite colour is blue", "My favourite colour is green", True),
        ("I work as a nurse", "I work as a software engineer", True),
        ("I drink tea daily", "I drink coffee daily", True),
        ("I have a sister named Anna", "I have a brother named Tom", False),
        ("My dog is called Rex", "My cat is called Rex", False),
        ("The user's favourite colour is blue", "The user's home city is blue", False),
        ("I live in Paris", "I live in Paris", False),
        ("I drive a Toyota", "I use vim as my editor", False),
        ("Paris", "Berlin", False),
    ],
)
def test_same_frame_spots_one_changed_value_in_the_same_wording(
    old: str, new: str, expected: bool
) -> None:
    assert same_frame(old, new) is expected


def test_overlap_is_the_jaccard_of_word_sets() -> None:
    assert overlap("I live in Paris", "i live in paris") == 1.0
    assert overlap("a b", "c d") == 0.0


async def test_a_fact_is_stored_encrypted_with_its_model_beside_the_vector(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    stored = await remember(vconn, embedder, alice, "My cat is called Pixel", tags=("pets",))
    assert stored.action is FactAction.CREATED and stored.fact.text == "My cat is called Pixel"
    row = await vconn.fetchrow("SELECT * FROM facts WHERE id = $1", stored.fact.id)
    assert b"Pixel" not in bytes(row["ciphertext"])
    assert row["embedding_model"] == MODEL_NAME and row["embedding_dim"] == MODEL_DIM
    assert row["embedding"].to_numpy().shape == (MODEL_DIM,) and list(row["tags"]) == ["pets"]
    key = await key_of(vconn, alice)
    assert (await get_fact(vconn, key, alice.user_id, stored.fact.id)) == stored.fact


async def test_a_reworded_copy_is_a_duplicate_that_merges_tags_and_confidence(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    first = await remember(
        vconn, embedder, alice, "I am allergic to peanuts", tags=("health",), confidence=0.6
    )
    second = await remember(
        vconn, embedder, alice, "I'm allergic to peanuts", tags=("food",), confidence=0.9
    )
    assert second.action is FactAction.DUPLICATE and second.fact.id == first.fact.id
    assert second.fact.tags == ("food", "health")
    assert second.fact.confidence == pytest.approx(0.9)
    assert await current_texts(vconn, alice) == ["I am allergic to peanuts"]


async def test_a_newer_value_in_the_same_wording_supersedes_and_history_is_kept(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    paris = await remember(vconn, embedder, alice, "I live in Paris")
    later = NOW + timedelta(days=30)
    berlin = await remember(vconn, embedder, alice, "I live in Berlin", valid_from=later)
    assert berlin.action is FactAction.CREATED and berlin.superseded == (paris.fact.id,)
    assert await current_texts(vconn, alice, at=NOW) == ["I live in Paris"]
    assert await current_texts(vconn, alice, at=later) == ["I live in Berlin"]
    key = await key_of(vconn, alice)
    history = await list_facts(vconn, key, alice.user_id, now=NOW, history=True)
    old = next(f for f in history if f.id == paris.fact.id)
    assert old.valid_to == later and old.superseded_by == berlin.fact.id
    assert old.text == "I live in Paris"


async def test_facts_with_the_same_key_supersede_whatever_their_wording(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    old = await remember(vconn, embedder, alice, "Home is a flat in Paris", key="home_city")
    new = await remember(vconn, embedder, alice, "Moved to Lisbon last spring", key="home_city")
    assert new.superseded == (old.fact.id,)
    assert await current_texts(vconn, alice) == ["Moved to Lisbon last spring"]


async def test_unrelated_facts_stand_side_by_side(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    texts = ["I have a sister named Anna", "I have a brother named Tom", "I drive a Toyota"]
    for text in texts:
        outcome = await remember(vconn, embedder, alice, text)
        assert outcome.action is FactAction.CREATED and outcome.superseded == ()
    assert await current_texts(vconn, alice) == sorted(texts)


async def test_explicit_supersedes_closes_only_the_callers_own_facts(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    bob = await new_member(vconn, "bob")
    bobs = await remember(vconn, embedder, bob, "I play the cello")
    mine = await remember(vconn, embedder, alice, "I play the piano")
    newer = await remember(
        vconn, embedder, alice, "Piano lessons ended", supersedes=(mine.fact.id, bobs.fact.id)
    )
    assert newer.superseded == (mine.fact.id,)
    assert await current_texts(vconn, bob) == ["I play the cello"]


async def test_another_user_never_reads_finds_or_deletes_a_fact(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    bob = await new_member(vconn, "bob")
    secret = await remember(vconn, embedder, alice, "My bank PIN hint is the dog's birthday")
    bob_key = await key_of(vconn, bob)
    vector = await embedder.embed_one("bank PIN hint")
    for tags in ((), ("finance",)):
        query = RecallQuery("bank PIN hint", vector, facts=50, notes=0, tags=tags, history=True)
        assert (await recall(vconn, bob_key, bob.user_id, query)).facts == []
    assert await get_fact(vconn, bob_key, bob.user_id, secret.fact.id) is None
    assert not await delete_fact(vconn, bob.user_id, secret.fact.id)
    assert await current_texts(vconn, alice) == ["My bank PIN hint is the dog's birthday"]


async def test_deleting_a_fact_removes_it_for_good(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    stored = await remember(vconn, embedder, alice, "I collect stamps")
    assert await delete_fact(vconn, alice.user_id, stored.fact.id)
    assert await vconn.fetchval("SELECT count(*) FROM facts") == 0


async def test_crypto_shredding_the_memory_deletes_the_facts_with_the_key(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    await remember(vconn, embedder, alice, "I collect stamps")
    await shred_memory(vconn, alice.user_id)
    assert await vconn.fetchval("SELECT count(*) FROM facts") == 0


_NEAREST = "SELECT id FROM facts WHERE user_id = $1 ORDER BY embedding <=> $2 LIMIT 10"


def _unit_vectors(rng: np.random.Generator, n: int) -> list[Vector]:
    raw = rng.normal(size=(n, MODEL_DIM)).astype(np.float32)
    return list(raw / np.linalg.norm(raw, axis=1, keepdims=True))


async def test_a_user_filtered_search_on_the_hnsw_index_still_returns_k_facts(
    vconn: asyncpg.Connection, alice: Member
) -> None:
    crowd = await new_member(vconn, "crowd")
    rng = np.random.default_rng(6)
    for member, count in ((crowd, 400), (alice, 12)):
        key = await key_of(vconn, member)
        for i, vector in enumerate(_unit_vectors(rng, count)):
            new = NewFact(text=f"fact {i} of {count}")
            await add_fact(vconn, key, member.user_id, new, vector, now=NOW, settings=SETTINGS)
    # Make the planner walk the HNSW graph (a tiny table would be scanned and sorted instead).
    await vconn.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
    await vconn.execute("SET enable_sort = off")
    query_vector = _unit_vectors(rng, 1)[0]
    async with vconn.transaction():
        await vconn.execute("SET LOCAL hnsw.iterative_scan = off")
        plan = await vconn.fetch("EXPLAIN " + _NEAREST, alice.user_id, query_vector)
        without = await vconn.fetch(_NEAREST, alice.user_id, query_vector)
    assert "facts_embedding_idx" in "\n".join(r[0] for r in plan)
    assert len(without) < 10  # ef_search's 40 candidates hold only ~1 of alice's 12 facts
    key = await key_of(vconn, alice)
    found = await recall(
        vconn, key, alice.user_id, RecallQuery("", query_vector, facts=10, notes=0)
    )
    assert len(found.facts) == 10
    similarities = [h.similarity for h in found.facts]
    assert similarities == sorted(similarities, reverse=True)
