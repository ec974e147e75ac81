"""The tictac tree: segments from sha256(id), XOR leaves, the same in Python and in SQL."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import pytest
import rfc8785

from federation.errors import InvalidFederationInput
from federation.tictac import (
    BRANCH_WIDTH,
    SEGMENTS,
    NoteVersion,
    Tree,
    decode_values,
    differing,
    encode_values,
    leaf_of,
    segment_of,
)
from memory.notes import uuid7

POOL = "iam1" + "a" * 52

pytestmark = pytest.mark.anyio


def version(**changes: object) -> NoteVersion:
    fields: dict[str, object] = {
        "id": UUID("01890a5d-ac96-774b-bcce-b302099a8057"),
        "namespace": "fed:team",
        "title": "Titre",
        "body": "Café ☕ body",
        "tags": ("a", "b"),
        "author_agent": "claude",
        "created_ms": 1_700_000_000_000,
        "origin_pool": POOL,
        "hlc": (1_700_000_000_000 << 16) | 3,
        "deleted": False,
    } | changes
    return NoteVersion(**fields)  # type: ignore[arg-type]


def test_row_hash_is_the_sha256_of_the_rfc8785_json_of_the_version() -> None:
    v = version()
    canonical = v.canonical()
    assert canonical.startswith(b'{"author_agent":"claude","body":"Caf\xc3\xa9')
    assert rfc8785.dumps(json.loads(canonical)) == canonical
    assert v.row_hash() == hashlib.sha256(canonical).digest()
    assert f'"hlc":"{v.hlc}"'.encode() in canonical  # a string: beyond JSON's exact integers
    for change in (
        {"title": "x"},
        {"hlc": 5},
        {"deleted": True},
        {"origin_pool": "iam1" + "b" * 52},
    ):
        assert version(**change).row_hash() != v.row_hash()


def test_higher_hlc_wins_then_the_higher_pool_id() -> None:
    v = version()
    low, high = b"\x00" * 32, b"\xff" * 32
    assert v.wins_over(v.hlc - 1, "iam1" + "z" * 52, high)
    assert not v.wins_over(v.hlc + 1, "iam1" + "2" * 52, low)
    assert v.wins_over(v.hlc, "iam1" + "2" * 52, high)
    assert not v.wins_over(v.hlc, "iam1" + "b" * 52, low)
    assert v.wins_over(v.hlc, POOL, low) and not v.wins_over(v.hlc, POOL, high)
    assert not v.wins_over(v.hlc, POOL, v.row_hash())


def test_fresh_uuidv7_ids_spread_over_the_segments() -> None:
    now = datetime.now(UTC)
    ids = [uuid7(now) for _ in range(5000)]
    assert len({i.int >> 118 for i in ids}) == 1  # the raw ids share their first bits
    used = {segment_of(i) for i in ids}
    assert len(used) > SEGMENTS * 0.95


def test_one_changed_row_changes_one_segment_one_branch_and_the_root() -> None:
    rng = random.Random(7)
    rows = {uuid.UUID(int=rng.getrandbits(128)): rng.randbytes(32) for _ in range(3000)}
    before = Tree.of_rows(rows.items())
    changed = next(iter(rows))
    rows[changed] = b"\x00" * 32
    after = Tree.of_rows(rows.items())
    assert before.root() != after.root()
    branches = differing(dict(enumerate(before.branches())), dict(enumerate(after.branches())))
    assert branches == [segment_of(changed) // BRANCH_WIDTH]
    assert differing(before.segments_of(branches), after.segments_of(branches)) == [
        segment_of(changed)
    ]
    assert Tree.of_rows([]).root() == 0


def test_tree_values_round_trip_through_json_and_bad_ones_are_refused() -> None:
    values = {3: -(1 << 63), 1023: (1 << 63) - 1}
    assert decode_values(encode_values(values), SEGMENTS, "segments") == values
    bad: object
    for bad in ([], {"1024": "1"}, {"1": 1}, {"x": "1"}, {"1": str(1 << 63)}):
        with pytest.raises(InvalidFederationInput):
            decode_values(bad, SEGMENTS, "segments")


async def test_sql_computes_the_same_segment_and_leaf_as_python(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO note_namespaces (namespace, write_rule) VALUES ('fed:t', 'members')"
        )
        now = datetime.now(UTC)
        rows = []
        for n in range(300):
            note_id = uuid7(now + timedelta(milliseconds=n))
            row_hash = hashlib.sha256(note_id.bytes).digest()
            rows.append((note_id, row_hash))
            await conn.execute(
                "INSERT INTO notes (id, namespace, body, embedding, embedding_model, embedding_dim,"
                " content_hash, row_hash, created_at, updated_at) VALUES ($1, 'fed:t', 'b', "
                "array_fill(0.1, ARRAY[384])::vector, 'm', 384, $2, $2, now(), now())",
                note_id,
                row_hash,
            )
        stored = await conn.fetch("SELECT id, segment, leaf FROM notes")
        assert {(r["id"], r["segment"], r["leaf"]) for r in stored} == {
            (i, segment_of(i), leaf_of(i, h)) for i, h in rows
        }
        sums = await conn.fetch(
            "SELECT segment, bit_xor(leaf) AS value FROM notes GROUP BY segment"
        )
        assert Tree({r["segment"]: r["value"] for r in sums if r["value"]}) == Tree.of_rows(rows)
    finally:
        await conn.close()
