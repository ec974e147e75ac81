"""Fact search at scale: owner indexes, per-k search settings, and what they must not change."""

from __future__ import annotations

from uuid import UUID

import asyncpg
import numpy as np
import pytest

from memory.embeddings import MODEL_DIM, Vector
from memory.facts import (
    MAX_SEARCH_K,
    OWNER_INDEX_LOCK,
    NewFact,
    add_fact,
    index_large_owners,
    owner_index_name,
    search_settings,
)
from memory.recall import RecallQuery, recall
from memory.settings import MemorySettings
from tests.memory.conftest import NOW, Member, key_of, new_member

pytestmark = pytest.mark.anyio

SETTINGS = MemorySettings()


def unit_vectors(rng: np.random.Generator, n: int) -> list[Vector]:
    """``n`` random unit vectors (far apart, so no fact is a duplicate of another)."""
    raw = rng.normal(size=(n, MODEL_DIM)).astype(np.float32)
    return list(raw / np.linalg.norm(raw, axis=1, keepdims=True))


async def store(conn: asyncpg.Connection, member: Member, vectors: list[Vector]) -> set[UUID]:
    """Store one fact per vector for the member; return their ids."""
    key = await key_of(conn, member)
    ids = set()
    for i, vector in enumerate(vectors):
        new = NewFact(text=f"fact {i} of {member.user_id}")
        outcome = await add_fact(conn, key, member.user_id, new, vector, now=NOW, settings=SETTINGS)
        ids.add(outcome.fact.id)
    return ids


async def exact_top(conn: asyncpg.Connection, user_id: UUID, vector: Vector, k: int) -> list[UUID]:
    """The user's k nearest current facts by a full sort, no index."""
    async with conn.transaction():
        await conn.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
        rows = await conn.fetch(
            "SELECT id FROM facts WHERE user_id = $1 ORDER BY embedding <=> $2 LIMIT $3",
            user_id,
            vector,
            k,
        )
    return [r["id"] for r in rows]


async def index_scans(conn: asyncpg.Connection) -> dict[str, int]:
    """Scans so far of each index on ``facts``, this session's included (flushed first)."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    rows = await conn.fetch(
        "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes WHERE relname = 'facts'"
    )
    return {r["indexrelname"]: r["idx_scan"] for r in rows}


async def test_a_large_user_is_searched_on_their_own_index_with_the_exact_top_results(
    vconn: asyncpg.Connection, alice: Member
) -> None:
    crowd = await new_member(vconn, "crowd")
    rng = np.random.default_rng(17)
    await store(vconn, alice, unit_vectors(rng, 60))
    crowd_ids = await store(vconn, crowd, unit_vectors(rng, 30))
    indexed = await index_large_owners(vconn, min_facts=50)
    assert indexed.created == (alice.user_id,)
    assert indexed.dropped == ()
    # A table this small is cheaper to sort than to search by graph: make the planner walk one.
    await vconn.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
    await vconn.execute("SET enable_sort = off")
    own, shared = owner_index_name(alice.user_id), "facts_embedding_idx"
    for member, used, unused in ((alice, own, shared), (crowd, shared, own)):
        query = unit_vectors(rng, 1)[0]
        key = await key_of(vconn, member)
        before = await index_scans(vconn)
        found = await recall(vconn, key, member.user_id, RecallQuery("", query, facts=10, notes=0))
        after = await index_scans(vconn)
        assert after[used] > before[used]
        assert after[unused] == before[unused]
        assert [h.fact.id for h in found.facts] == await exact_top(vconn, member.user_id, query, 10)
    # Alice's own index never answers for another user, whatever the query.
    for query in unit_vectors(rng, 5):
        key = await key_of(vconn, crowd)
        found = await recall(vconn, key, crowd.user_id, RecallQuery("", query, facts=50, notes=0))
        assert {h.fact.id for h in found.facts} == crowd_ids


async def test_an_index_is_dropped_when_its_user_falls_under_half_the_threshold(
    vconn: asyncpg.Connection, alice: Member
) -> None:
    rng = np.random.default_rng(18)
    ids = sorted(await store(vconn, alice, unit_vectors(rng, 40)))
    assert (await index_large_owners(vconn, min_facts=40)).created == (alice.user_id,)
    again = await index_large_owners(vconn, min_facts=40)
    assert (again.created, again.dropped) == ((), ())
    await vconn.execute("DELETE FROM facts WHERE id = ANY($1::uuid[])", ids[:15])
    kept = await index_large_owners(vconn, min_facts=40)  # 25 facts: over half, the index stays
    assert (kept.created, kept.dropped) == ((), ())
    await vconn.execute("DELETE FROM facts WHERE id = ANY($1::uuid[])", ids[15:25])
    assert (await index_large_owners(vconn, min_facts=40)).dropped == (alice.user_id,)
    names = await vconn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'facts'")
    assert owner_index_name(alice.user_id) not in {r["indexname"] for r in names}


async def test_an_index_left_invalid_by_an_interrupted_build_is_built_again(
    vconn: asyncpg.Connection, alice: Member
) -> None:
    await store(vconn, alice, unit_vectors(np.random.default_rng(21), 3))
    name = owner_index_name(alice.user_id)
    assert (await index_large_owners(vconn, min_facts=3)).created == (alice.user_id,)
    # What a CREATE INDEX CONCURRENTLY cut short leaves behind: the index, marked invalid.
    await vconn.execute(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = $1::regclass", name
    )
    rebuilt = await index_large_owners(vconn, min_facts=3)
    assert (rebuilt.created, rebuilt.dropped) == ((alice.user_id,), ())
    valid = await vconn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = $1::regclass", name
    )
    assert valid


async def test_a_second_session_skips_indexing_while_one_runs(
    vconn: asyncpg.Connection, database_url: str, alice: Member
) -> None:
    await store(vconn, alice, unit_vectors(np.random.default_rng(19), 3))
    other = await asyncpg.connect(database_url)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", OWNER_INDEX_LOCK)
        assert (await index_large_owners(vconn, min_facts=1)).skipped
        await other.execute("SELECT pg_advisory_unlock($1)", OWNER_INDEX_LOCK)
    finally:
        await other.close()
    assert (await index_large_owners(vconn, min_facts=1)).created == (alice.user_id,)


def test_ef_search_grows_with_k_within_pgvector_bounds() -> None:
    assert "hnsw.ef_search = 40" in search_settings(10)
    assert "hnsw.ef_search = 200" in search_settings(100)
    assert f"hnsw.ef_search = {MAX_SEARCH_K}" in search_settings(MAX_SEARCH_K)
    assert "plan_cache_mode = force_custom_plan" in search_settings(0)


@pytest.mark.parametrize("k", [-1, MAX_SEARCH_K + 1])
async def test_a_bad_k_is_rejected(vconn: asyncpg.Connection, alice: Member, k: int) -> None:
    key = await key_of(vconn, alice)
    query = unit_vectors(np.random.default_rng(20), 1)[0]
    with pytest.raises(ValueError, match="k must be between 0 and 1000"):
        await recall(vconn, key, alice.user_id, RecallQuery("", query, facts=k, notes=0))


async def test_a_threshold_under_one_is_rejected(vconn: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="min_facts must be at least 1"):
        await index_large_owners(vconn, min_facts=0)
