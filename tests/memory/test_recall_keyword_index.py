"""A search told whether the notes' BM25 index exists (the hub asks once, not per search)."""

from __future__ import annotations

import asyncpg
import pytest

from memory.embeddings import Embedder
from memory.notes import NewNote, add_notes
from memory.recall import NoteHit, RecallQuery, SearchMode, recall
from tests.memory.conftest import NOW, Member

pytestmark = pytest.mark.anyio

NOTES = (
    "Rotate the HER-1187 signing key every quarter",
    "The quarter ended with a team lunch",
    "Deploys freeze on Fridays after noon",
    "The signing ceremony for the new office is on Monday",
)


async def _store(conn: asyncpg.Connection, embedder: Embedder, member: Member) -> None:
    notes = [NewNote(f"user:{member.user_id}", body) for body in NOTES]
    vectors = await embedder.embed([n.index_text for n in notes])
    await add_notes(conn, member.user_id, notes, list(vectors), now=NOW)


async def _search(
    conn: asyncpg.Connection,
    embedder: Embedder,
    member: Member,
    mode: SearchMode,
    bm25: bool | None,
) -> list[NoteHit]:
    text = "when is the HER-1187 key rotated?"
    vector = None if mode is SearchMode.KEYWORD else await embedder.embed_one(text)
    query = RecallQuery(text, vector, facts=0, notes=4, mode=mode)
    return (await recall(conn, None, member.user_id, query, bm25=bm25)).notes


def _ranked(hits: list[NoteHit]) -> list[tuple[str, float, int | None, int | None, str]]:
    return [(h.note.body, h.score, h.vector_rank, h.keyword_rank, h.snippet) for h in hits]


@pytest.mark.parametrize("mode", list(SearchMode))
async def test_a_search_told_the_index_exists_finds_what_one_that_asks_finds(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member, mode: SearchMode
) -> None:
    await _store(vconn, embedder, alice)
    asked = await _search(vconn, embedder, alice, mode, bm25=None)
    assert asked and _ranked(await _search(vconn, embedder, alice, mode, True)) == _ranked(asked)


async def test_a_search_told_there_is_no_index_uses_full_text_as_a_server_without_pg_search(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    await _store(vconn, embedder, alice)
    told = await _search(vconn, embedder, alice, SearchMode.HYBRID, bm25=False)
    await vconn.execute("DROP INDEX notes_bm25_idx")
    without = await _search(vconn, embedder, alice, SearchMode.HYBRID, bm25=None)
    assert _ranked(told) == _ranked(without)
    assert told[0].note.body == NOTES[0] and told[0].keyword_rank == 1


async def test_a_search_told_of_an_index_that_is_gone_fails_as_a_database_error(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    await _store(vconn, embedder, alice)
    await vconn.execute("DROP INDEX notes_bm25_idx")
    with pytest.raises(asyncpg.PostgresError):
        await _search(vconn, embedder, alice, SearchMode.KEYWORD, bm25=True)
    # the transaction was rolled back: the connection searches on
    assert await _search(vconn, embedder, alice, SearchMode.KEYWORD, bm25=False)


async def test_a_vector_search_told_of_an_index_that_is_gone_never_uses_it(
    vconn: asyncpg.Connection, embedder: Embedder, alice: Member
) -> None:
    await _store(vconn, embedder, alice)
    await vconn.execute("DROP INDEX notes_bm25_idx")
    found = await _search(vconn, embedder, alice, SearchMode.VECTOR, bm25=True)
    assert len(found) == len(NOTES) and all(h.keyword_rank is None for h in found)
