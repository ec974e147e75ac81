"""A user's L3 facts (``/v1/memory/facts``): store, search, read, delete.

Every route needs a ``user``-scope token; reading or writing fact text needs the token to open the
user's data key (a locked token gets 403 ``memory_locked``). Another user's fact id is 404, as an
unknown one is. The explicit routes work whether or not the user turned memory on: the opt-in
governs what the hub does on its own (extraction, injection into chats).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import ConfigDict, Field, StringConstraints

from hub.deps import Semantic, UserCallerDep
from hub.errors import InvalidRequestError, NotFoundError
from hub.schemas import DbText, JsonDatetime, JsonUUID, StrictBody
from memory import facts
from memory.conversations import CONVERSATION_ID
from memory.facts import KEY_PATTERN, MAX_FACT_CHARS, TAG_PATTERN, Fact, NewFact
from memory.keys import open_key
from memory.recall import RecallQuery, recall

router = APIRouter(prefix="/v1/memory", tags=["memory"])

MAX_TAGS = 16
_TAG = re.compile(TAG_PATTERN)

Tag = Annotated[str, Field(pattern=TAG_PATTERN)]
Text = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_FACT_CHARS)
]
TagsQuery = Annotated[
    list[str] | None,
    Query(description="Only items carrying every tag (repeat it, or separate with commas)."),
]
KQuery = Annotated[int, Query(ge=1, le=100, description="How many results.")]


class FactBody(StrictBody):
    """A fact to remember about the caller."""

    model_config = ConfigDict(extra="forbid")

    text: Text = Field(description="The fact, one short sentence (encrypted at rest).")
    key: str | None = Field(
        None,
        pattern=KEY_PATTERN,
        description="What the fact is about (`home_city`); a newer fact with the same key "
        "supersedes it. Stored in clear.",
    )
    tags: list[Tag] = Field(
        default_factory=list, max_length=MAX_TAGS, description="Lower-case tags, stored in clear."
    )
    confidence: float = Field(1.0, ge=0, le=1, description="How sure the writer is, 0 to 1.")
    valid_from: JsonDatetime | None = Field(None, description="When it became true (now).")
    source_conversation: str | None = Field(
        None, pattern=CONVERSATION_ID.pattern, description="Conversation it came from."
    )
    supersedes: list[JsonUUID] = Field(
        default_factory=list, max_length=32, description="Ids of facts this one replaces."
    )


def parse_tags(values: list[str] | None) -> tuple[str, ...]:
    """Tags from a query string (repeated or comma-separated); 400 naming ``tags`` if invalid."""
    tags = [t.strip() for value in values or () for t in value.split(",") if t.strip()]
    bad = [t for t in tags if _TAG.match(t) is None]
    if bad or len(tags) > MAX_TAGS:
        raise InvalidRequestError(
            f"Tags are up to {MAX_TAGS} lower-case words of letters, digits and . _ - "
            f"(got {bad[0]!r})."
            if bad
            else f"At most {MAX_TAGS} tags.",
            param="tags",
        )
    return tuple(tags)


def fact_body(fact: Fact, **extra: Any) -> dict[str, Any]:
    """A fact as the API shows it."""
    return {
        "object": "memory.fact",
        "id": str(fact.id),
        "text": fact.text,
        "key": fact.key,
        "tags": list(fact.tags),
        "confidence": round(fact.confidence, 4),
        "source": fact.source,
        "source_conversation": fact.source_conversation,
        "valid_from": fact.valid_from.isoformat(),
        "valid_to": fact.valid_to.isoformat() if fact.valid_to else None,
        "superseded_by": str(fact.superseded_by) if fact.superseded_by else None,
        "created_at": fact.created_at.isoformat(),
        "embedding_model": fact.embedding_model,
    } | extra


@router.post("/facts", status_code=201)
async def create_fact(body: FactBody, semantic: Semantic, caller: UserCallerDep) -> dict[str, Any]:
    """Remember a fact: a near-duplicate of a current fact is merged into it (`status:
    duplicate`); facts it supersedes (by id, by key, or reworded) are closed, not deleted."""
    vector = await semantic.embedder.embed_one(body.text)
    new = NewFact(
        text=body.text,
        key=body.key,
        tags=tuple(body.tags),
        confidence=body.confidence,
        source_conversation=body.source_conversation,
        valid_from=body.valid_from,
        supersedes=tuple(body.supersedes),
    )
    async with semantic.pool.acquire() as conn:
        key = await open_key(conn, caller.user_id, caller.token_id, caller.token)
        outcome = await facts.add_fact(
            conn,
            key,
            caller.user_id,
            new,
            vector,
            now=datetime.now(UTC),
            settings=semantic.settings,
        )
    return fact_body(
        outcome.fact,
        status=outcome.action.value,
        superseded=[str(i) for i in outcome.superseded],
    )


@router.get("/facts")
async def search_facts(
    semantic: Semantic,
    caller: UserCallerDep,
    query: Annotated[
        DbText | None, Query(max_length=2000, description="Rank by similarity to this text.")
    ] = None,
    k: KQuery = 10,
    tags: TagsQuery = None,
    history: Annotated[
        bool, Query(description="Include superseded facts (only without `query`).")
    ] = False,
) -> dict[str, Any]:
    """The caller's current facts: the `k` most similar to `query` (with `score`, cosine
    similarity), or the newest `k` without it."""
    wanted = parse_tags(tags)
    if query is not None and query.strip():
        vector = await semantic.embedder.embed_one(query)
        async with semantic.pool.acquire() as conn:
            key = await open_key(conn, caller.user_id, caller.token_id, caller.token)
            found = await recall(
                conn, key, caller.user_id, RecallQuery(query, vector, facts=k, notes=0, tags=wanted)
            )
        data = [fact_body(h.fact, score=round(h.similarity, 6)) for h in found.facts]
    else:
        async with semantic.pool.acquire() as conn:
            key = await open_key(conn, caller.user_id, caller.token_id, caller.token)
            listed = await facts.list_facts(
                conn,
                key,
                caller.user_id,
                now=datetime.now(UTC),
                tags=wanted,
                history=history,
                limit=k,
            )
        data = [fact_body(f) for f in listed]
    return {"object": "list", "data": data}


@router.get("/facts/{fact_id}")
async def read_fact(fact_id: UUID, semantic: Semantic, caller: UserCallerDep) -> dict[str, Any]:
    """One of the caller's facts, current or superseded."""
    async with semantic.pool.acquire() as conn:
        key = await open_key(conn, caller.user_id, caller.token_id, caller.token)
        fact = await facts.get_fact(conn, key, caller.user_id, fact_id)
    if fact is None:
        raise NotFoundError(f"No fact {fact_id}.", param="fact_id")
    return fact_body(fact)


@router.delete("/facts/{fact_id}")
async def delete_fact(fact_id: UUID, semantic: Semantic, caller: UserCallerDep) -> dict[str, Any]:
    """Delete one of the caller's facts for good (its text, embedding and history row)."""
    async with semantic.pool.acquire() as conn:
        deleted = await facts.delete_fact(conn, caller.user_id, fact_id)
    if not deleted:
        raise NotFoundError(f"No fact {fact_id}.", param="fact_id")
    return {"object": "memory.fact.deleted", "id": str(fact_id), "deleted": True}
