"""``GET /v1/memory/recall``: one search over the caller's facts and the notes they can read.

This is what agents (through the MCP server) ask before they work: facts by similarity, notes by
hybrid search, each hit with its cosine similarity so the tiers can be compared. Notes come from
the caller's own namespace and the shared ones they are subscribed to, as in a chat.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Query

from hub.deps import Semantic, UserCallerDep
from hub.routes.facts import KQuery, TagsQuery, fact_body, parse_tags
from hub.routes.notes import NamespaceQuery, hit_body, note_body, readable_filter
from hub.schemas import DbText
from memory import facts, notes
from memory.keys import UserKey, open_key
from memory.recall import RecallQuery, query_vectors, recall

router = APIRouter(prefix="/v1/memory", tags=["memory"])


@router.get("/recall")
async def recall_memory(
    semantic: Semantic,
    caller: UserCallerDep,
    query: Annotated[DbText, Query(min_length=1, max_length=2000, description="What to recall.")],
    k: KQuery = 5,
    namespace: NamespaceQuery = None,
    tags: TagsQuery = None,
) -> dict[str, Any]:
    """Up to `k` facts and `k` notes relevant to `query`, best first."""
    wanted = parse_tags(tags)
    spaces = await readable_filter(semantic, caller.user_id, namespace)
    vector, note_vector = await query_vectors(semantic.embedder, query)
    search = RecallQuery(
        query, vector, note_vector=note_vector, facts=k, notes=k, tags=wanted, namespaces=spaces
    )
    async with semantic.pool.acquire() as conn:
        key = await open_key(conn, caller.user_id, caller.token_id, caller.token)
        bm25 = await semantic.notes_bm25(conn)
        found = await recall(conn, key, caller.user_id, search, bm25=bm25)
    return {
        "object": "memory.recall",
        "query": query,
        "facts": [fact_body(h.fact, score=round(h.similarity, 6)) for h in found.facts],
        "notes": [hit_body(h) for h in found.notes],
    }


async def export_semantic(conn: asyncpg.Connection, key: UserKey, user_id: UUID) -> dict[str, Any]:
    """For the memory export: every version of the user's facts (decrypted) and their notes."""
    every_fact = await facts.list_facts(
        conn, key, user_id, now=datetime.now(UTC), history=True, limit=None
    )
    return {
        "facts": [fact_body(f) for f in reversed(every_fact)],
        "notes": [note_body(n) for n in await notes.export_notes(conn, user_id)],
    }


async def erase_semantic(conn: asyncpg.Connection, user_id: UUID) -> dict[str, int]:
    """For ``DELETE /v1/memory``: delete every fact and private note of the user."""
    return {
        "facts": await facts.delete_all_facts(conn, user_id),
        "notes": await notes.delete_private_notes(conn, user_id),
    }
