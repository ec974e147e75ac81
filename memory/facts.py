"""L3: a user's personal facts, encrypted under their data key, found by embedding.

A fact's text is Fernet ciphertext whose plaintext names the fact's id, so a ciphertext moved to
another row fails to read. Its embedding, ``key`` and ``tags`` stay plaintext so SQL can search
them (docs/privacy.md). Every query is scoped by user id in SQL; searches live in
``memory/recall.py``.

Writes keep the set of *current* facts clean, serialised per user:

- **dedup**: a new fact whose embedding is within ``facts_dedup_similarity`` of a current fact
  *and* whose words overlap it by ``facts_dedup_overlap`` (Jaccard) is that fact again: no new
  row; the old one keeps the higher confidence and gains the new tags.
- **supersede**: a newer fact closes older current ones (``valid_to``, ``superseded_by``; the
  rows stay as history) when the client names them (``supersedes``), when both carry the same
  ``key`` (``home_city``), or when the two say the same thing with another value: similar
  embeddings (``facts_supersede_similarity``) and the same wording up to a changed ending of at
  most two words ("I live in Paris" → "I live in Berlin"; a changed subject, as in "my dog is
  called Rex" → "my cat is called Rex", is not a new value). The heuristic cannot tell a value
  that replaces ("favourite colour") from one that adds ("I like cats" → "I like dogs"); keys or
  ``supersedes`` say it exactly.

Searches scope the HNSW scan by user. One shared graph over every user's facts makes a large
user's search wade through everyone else's (at 1M facts over 10 users, p95 96 ms), so a user
with :data:`OWNER_INDEX_MIN` facts gets an HNSW index of their own, partial on their user id
(:func:`index_large_owners`); :func:`search_settings` makes each search plan for the user it
names, so the planner takes that index, the shared one, or the user id B-tree and an exact sort,
whichever its statistics say is cheapest for that user.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import asyncpg

from memory.crypto import DecryptError, decrypt_json, encrypt_json
from memory.embeddings import MODEL_DIM, MODEL_NAME, Vector
from memory.keys import UserKey
from memory.settings import MemorySettings

TAG_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
KEY_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
MAX_FACT_CHARS = 1000
NEIGHBOURS = 8  # current facts compared with a new one
MAX_CHANGED_WORDS = 2  # the "same wording, another value" span
MAX_SEARCH_K = 1000  # pgvector's largest hnsw.ef_search
MIN_EF_SEARCH = 40  # pgvector's default hnsw.ef_search
OWNER_INDEX_MIN = 10_000  # a user's facts that pay for an HNSW index of their own
OWNER_INDEX_PREFIX = "facts_owner_"
OWNER_INDEX_LOCK = 0x6661637473  # advisory lock: one index_large_owners at a time

_WORD = re.compile(r"\w+")


class FactSource(StrEnum):
    """Where a fact came from."""

    EXPLICIT = "explicit"
    EXTRACTED = "extracted"


class FactAction(StrEnum):
    """What :func:`add_fact` did."""

    CREATED = "created"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class NewFact:
    """A fact to store."""

    text: str
    key: str | None = None
    tags: tuple[str, ...] = ()
    confidence: float = 1.0
    source: FactSource = FactSource.EXPLICIT
    source_conversation: str | None = None
    valid_from: datetime | None = None
    supersedes: tuple[UUID, ...] = ()


@dataclass(frozen=True)
class Fact:
    """A stored fact; ``text`` is None when an older data key (a lost memory) sealed it."""

    id: UUID
    text: str | None
    key: str | None
    tags: tuple[str, ...]
    confidence: float
    source: str
    source_conversation: str | None
    valid_from: datetime
    valid_to: datetime | None
    superseded_by: UUID | None
    created_at: datetime
    embedding_model: str


@dataclass(frozen=True)
class FactOutcome:
    """The fact now standing for what was written, and the facts it closed."""

    action: FactAction
    fact: Fact
    superseded: tuple[UUID, ...] = field(default=())


FACT_COLUMNS = (
    "id, generation, ciphertext, key, tags, confidence, source, source_conversation, "
    "valid_from, valid_to, superseded_by, created_at, embedding_model"
)


# Statements are built once from the constant column list; no value is ever formatted in.
_NEAREST_SQL = (
    f"SELECT {FACT_COLUMNS}, 1 - distance AS similarity FROM ("  # noqa: S608
    "SELECT *, embedding <=> $2 AS distance FROM facts WHERE user_id = $1 "
    "AND (valid_to IS NULL OR valid_to > $3) ORDER BY embedding <=> $2 LIMIT $4"
    ") nearest ORDER BY distance"
)
_SEARCH_SQL = (
    f"SELECT {FACT_COLUMNS}, 1 - distance AS similarity FROM ("  # noqa: S608
    "SELECT *, embedding <=> $2 AS distance FROM facts WHERE user_id = $1 "
    "AND ($5 OR (valid_from <= now() AND (valid_to IS NULL OR valid_to > now()))) "
    "AND tags @> $4::text[] ORDER BY embedding <=> $2 LIMIT $3"
    ") nearest ORDER BY distance, id"
)
_MERGE_SQL = (
    "UPDATE facts SET confidence = greatest(confidence, $2), key = coalesce(key, $3), "  # noqa: S608
    "tags = ARRAY(SELECT DISTINCT t FROM unnest(tags || $4::text[]) t ORDER BY t) "
    f"WHERE id = $1 RETURNING {FACT_COLUMNS}"
)
_INSERT_SQL = (
    "INSERT INTO facts (id, user_id, generation, ciphertext, embedding, embedding_model, "  # noqa: S608
    "embedding_dim, key, tags, confidence, source, source_conversation, valid_from) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
    f"RETURNING {FACT_COLUMNS}"
)
_GET_SQL = f"SELECT {FACT_COLUMNS} FROM facts WHERE user_id = $1 AND id = $2"  # noqa: S608
_LIST_SQL = (
    f"SELECT {FACT_COLUMNS} FROM facts WHERE user_id = $1 "  # noqa: S608
    "AND ($2 OR (valid_from <= $3 AND (valid_to IS NULL OR valid_to > $3))) "
    "AND tags @> $4::text[] "
    "ORDER BY created_at DESC, id LIMIT $5"
)


def fact_from_row(row: asyncpg.Record, key: UserKey) -> Fact:
    """A fact from a row holding :data:`FACT_COLUMNS`, decrypted when ``key`` made it."""
    text = None
    if row["generation"] == key.generation:
        text = _open(key, row["id"], bytes(row["ciphertext"]))
    return Fact(
        id=row["id"],
        text=text,
        key=row["key"],
        tags=tuple(row["tags"]),
        confidence=float(row["confidence"]),
        source=row["source"],
        source_conversation=row["source_conversation"],
        valid_from=row["valid_from"],
        valid_to=row["valid_to"],
        superseded_by=row["superseded_by"],
        created_at=row["created_at"],
        embedding_model=row["embedding_model"],
    )


def words(text: str) -> list[str]:
    """Lower-case words of a text, in order."""
    return _WORD.findall(text.lower())


def overlap(a: str, b: str) -> float:
    """Jaccard overlap of two texts' word sets."""
    left, right = set(words(a)), set(words(b))
    return len(left & right) / len(left | right) if left | right else 1.0


def same_frame(old: str, new: str) -> bool:
    """Whether two texts say the same thing with another value: the same words, then a changed
    ending of one or two words (and at most one word after it), as "X is Y" facts are worded."""
    a, b = words(old), words(new)
    shorter = min(len(a), len(b))
    prefix = 0
    while prefix < shorter and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < shorter - prefix and a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    frame = prefix + suffix
    changed = (len(a) - frame, len(b) - frame)
    return (
        prefix >= 2
        and suffix <= 1
        and 2 * frame >= max(len(a), len(b))
        and all(1 <= n <= MAX_CHANGED_WORDS for n in changed)
    )


async def add_fact(
    conn: asyncpg.Connection,
    key: UserKey,
    user_id: UUID,
    new: NewFact,
    vector: Vector,
    *,
    now: datetime,
    settings: MemorySettings,
) -> FactOutcome:
    """Store a fact for the user: dedup against current facts, supersede older ones."""
    valid_from = new.valid_from or now
    async with conn.transaction():
        # One writer per user at a time, so two copies of a fact cannot both be "new".
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 6))", str(user_id))
        neighbours = await _neighbours(conn, key, user_id, vector, now)
        for fact, similarity in neighbours:
            if _is_duplicate(fact, similarity, new, settings):
                return FactOutcome(FactAction.DUPLICATE, await _merge(conn, key, fact, new))
        closing = set(new.supersedes)
        for fact, similarity in neighbours:
            if fact.text is None:
                continue
            same_key = new.key is not None and fact.key == new.key
            reworded = similarity >= settings.facts_supersede_similarity and same_frame(
                fact.text, new.text
            )
            if same_key or (reworded and (fact.key is None or new.key is None)):
                closing.add(fact.id)
        if new.key is not None:
            closing.update(await _current_with_key(conn, user_id, new.key))
        fact = await _insert(conn, key, user_id, new, vector, valid_from)
        superseded = await _close(conn, user_id, sorted(closing), fact.id, valid_from)
    return FactOutcome(FactAction.CREATED, fact, tuple(superseded))


def _is_duplicate(fact: Fact, similarity: float, new: NewFact, settings: MemorySettings) -> bool:
    if fact.text is None or similarity < settings.facts_dedup_similarity:
        return False
    if fact.key is not None and new.key is not None and fact.key != new.key:
        return False
    return overlap(fact.text, new.text) >= settings.facts_dedup_overlap


async def _neighbours(
    conn: asyncpg.Connection, key: UserKey, user_id: UUID, vector: Vector, now: datetime
) -> list[tuple[Fact, float]]:
    await conn.execute(search_settings(NEIGHBOURS))  # inside add_fact's transaction
    rows = await conn.fetch(
        _NEAREST_SQL,
        user_id,
        vector,
        now,
        NEIGHBOURS,
    )
    return [(fact_from_row(r, key), float(r["similarity"])) for r in rows]


async def _current_with_key(conn: asyncpg.Connection, user_id: UUID, fact_key: str) -> list[UUID]:
    rows = await conn.fetch(
        "SELECT id FROM facts WHERE user_id = $1 AND key = $2 AND valid_to IS NULL",
        user_id,
        fact_key,
    )
    return [r["id"] for r in rows]


async def _merge(conn: asyncpg.Connection, key: UserKey, fact: Fact, new: NewFact) -> Fact:
    row = await conn.fetchrow(
        _MERGE_SQL,
        fact.id,
        new.confidence,
        new.key,
        list(new.tags),
    )
    return fact_from_row(row, key)


async def _insert(
    conn: asyncpg.Connection,
    key: UserKey,
    user_id: UUID,
    new: NewFact,
    vector: Vector,
    valid_from: datetime,
) -> Fact:
    fact_id = uuid.uuid4()
    row = await conn.fetchrow(
        _INSERT_SQL,
        fact_id,
        user_id,
        key.generation,
        encrypt_json(key.data_key, {"fact": str(fact_id), "text": new.text}),
        vector,
        MODEL_NAME,
        MODEL_DIM,
        new.key,
        sorted(set(new.tags)),
        new.confidence,
        new.source.value,
        new.source_conversation,
        valid_from,
    )
    return fact_from_row(row, key)


async def _close(
    conn: asyncpg.Connection,
    user_id: UUID,
    fact_ids: Sequence[UUID],
    by: UUID,
    at: datetime,
) -> list[UUID]:
    if not fact_ids:
        return []
    rows = await conn.fetch(
        "UPDATE facts SET valid_to = greatest(valid_from, $4), superseded_by = $3 "
        "WHERE user_id = $1 AND id = ANY($2::uuid[]) AND id <> $3 AND valid_to IS NULL "
        "RETURNING id",
        user_id,
        list(fact_ids),
        by,
        at,
    )
    return sorted(r["id"] for r in rows)


def search_settings(k: int) -> str:
    """The ``SET LOCAL`` statements a transaction runs before searching facts, ``k`` at a time.

    - ``hnsw.iterative_scan = relaxed_order``: the scan keeps walking the graph until k rows pass
      the user filter (the statement re-sorts them), so a user filter cannot starve k;
    - ``hnsw.ef_search`` of twice k, at least pgvector's default of 40: one pass of the graph
      holds enough candidates for k;
    - ``plan_cache_mode = force_custom_plan``: the statement is planned for the user id it is
      given, not as a generic plan, so an owner's partial index (:func:`index_large_owners`)
      matches and the row estimate is that user's.

    Raises ``ValueError`` unless ``0 <= k <= MAX_SEARCH_K``.
    """
    if not 0 <= k <= MAX_SEARCH_K:
        raise ValueError(f"k must be between 0 and {MAX_SEARCH_K}, not {k}")
    ef_search = min(MAX_SEARCH_K, max(MIN_EF_SEARCH, 2 * k))
    return (
        "SET LOCAL hnsw.iterative_scan = relaxed_order; "
        f"SET LOCAL hnsw.ef_search = {ef_search}; "
        "SET LOCAL plan_cache_mode = force_custom_plan"
    )


async def search_facts(
    conn: asyncpg.Connection,
    key: UserKey,
    user_id: UUID,
    vector: Vector,
    k: int,
    *,
    tags: Sequence[str] = (),
    history: bool = False,
) -> list[tuple[Fact, float]]:
    """The user's ``k`` facts nearest to ``vector`` with their cosine similarity, best first:
    current ones (every version with ``history``) carrying all of ``tags``.

    A statement of its own, small to plan: :func:`memory.recall.recall` uses it when no note is
    asked for, rather than planning the notes' hybrid search for nothing.
    """
    settings = search_settings(k)
    if k == 0:
        return []
    async with conn.transaction():
        await conn.execute(settings)
        rows = await conn.fetch(_SEARCH_SQL, user_id, vector, k, list(tags), history)
    return [(fact_from_row(r, key), float(r["similarity"])) for r in rows]


def owner_index_name(user_id: UUID) -> str:
    """The name of the user's own HNSW index over their facts."""
    return f"{OWNER_INDEX_PREFIX}{user_id.hex}"


@dataclass(frozen=True)
class OwnerIndexes:
    """What :func:`index_large_owners` changed: users indexed, and users whose index it dropped."""

    created: tuple[UUID, ...] = ()
    dropped: tuple[UUID, ...] = ()
    skipped: bool = False  # another session was already running it


async def index_large_owners(
    conn: asyncpg.Connection, *, min_facts: int = OWNER_INDEX_MIN
) -> OwnerIndexes:
    """Give each user with ``min_facts`` facts an HNSW index of their own; drop the index of a
    user who fell under half of it (the half keeps a user at the edge from flapping).

    Each index covers one user's rows (``WHERE user_id = ...``), so their searches walk a graph
    of their facts only, with no other user's to skip. Indexes are built and dropped
    ``CONCURRENTLY`` (writes go on; ``conn`` must not be in a transaction), one at a time; an
    index left invalid by an interrupted build is dropped and built again. Every index is one
    more for each insert to consider and for the planner to weigh, so ``min_facts`` should keep
    them to tens or hundreds. One session runs this at a time; another returns ``skipped``.
    """
    if min_facts < 1:
        raise ValueError(f"min_facts must be at least 1, not {min_facts}")
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", OWNER_INDEX_LOCK):
        return OwnerIndexes(skipped=True)
    try:
        counts = {
            r["user_id"]: r["facts"]
            for r in await conn.fetch(
                "SELECT user_id, count(*) AS facts FROM facts GROUP BY user_id "
                "HAVING 2 * count(*) >= $1",
                min_facts,
            )
        }
        existing = await conn.fetch(
            "SELECT c.relname AS name, i.indisvalid AS valid FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = 'facts'::regclass AND starts_with(c.relname, $1)",
            OWNER_INDEX_PREFIX,
        )
        valid: set[UUID] = set()
        dropped: list[UUID] = []
        for row in existing:
            user_id = UUID(row["name"].removeprefix(OWNER_INDEX_PREFIX))
            if row["valid"] and user_id in counts:
                valid.add(user_id)
                continue
            await _drop_owner_index(conn, user_id)
            if row["valid"]:
                dropped.append(user_id)
        created: list[UUID] = []
        for user_id in sorted(u for u, n in counts.items() if n >= min_facts and u not in valid):
            await _create_owner_index(conn, user_id)
            created.append(user_id)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", OWNER_INDEX_LOCK)
    return OwnerIndexes(tuple(created), tuple(sorted(dropped)))


async def _create_owner_index(conn: asyncpg.Connection, user_id: UUID) -> None:
    # DDL takes no parameters: the name is hex and the literal a UUID's own text.
    await conn.execute(
        f"CREATE INDEX CONCURRENTLY {owner_index_name(user_id)} ON facts "
        f"USING hnsw (embedding vector_cosine_ops) WHERE user_id = '{user_id}'::uuid"
    )


async def _drop_owner_index(conn: asyncpg.Connection, user_id: UUID) -> None:
    await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {owner_index_name(user_id)}")


async def get_fact(
    conn: asyncpg.Connection, key: UserKey, user_id: UUID, fact_id: UUID
) -> Fact | None:
    """One of the user's facts (current or history), or None (another user's id is None too)."""
    row = await conn.fetchrow(_GET_SQL, user_id, fact_id)
    return fact_from_row(row, key) if row else None


async def list_facts(
    conn: asyncpg.Connection,
    key: UserKey,
    user_id: UUID,
    *,
    now: datetime,
    tags: Sequence[str] = (),
    history: bool = False,
    limit: int | None = 100,
) -> list[Fact]:
    """The user's facts, newest first: current ones, or every version with ``history``."""
    rows = await conn.fetch(
        _LIST_SQL,
        user_id,
        history,
        now,
        list(tags),
        limit,
    )
    return [fact_from_row(r, key) for r in rows]


async def delete_fact(conn: asyncpg.Connection, user_id: UUID, fact_id: UUID) -> bool:
    """Delete one of the user's facts for good; False if the user has no such fact."""
    deleted = await conn.fetchval(
        "DELETE FROM facts WHERE user_id = $1 AND id = $2 RETURNING id", user_id, fact_id
    )
    return deleted is not None


async def delete_all_facts(conn: asyncpg.Connection, user_id: UUID) -> int:
    """Delete every fact of the user; return how many."""
    count = await conn.fetchval(
        "WITH d AS (DELETE FROM facts WHERE user_id = $1 RETURNING 1) SELECT count(*) FROM d",
        user_id,
    )
    return int(count)


def _open(key: UserKey, fact_id: UUID, ciphertext: bytes) -> str:
    plaintext: Any = decrypt_json(key.data_key, ciphertext)
    if not isinstance(plaintext, dict) or plaintext.get("fact") != str(fact_id):
        raise DecryptError("a stored fact was moved from its place in the database")
    text = plaintext.get("text")
    if not isinstance(text, str):
        raise DecryptError("a stored fact has an unexpected shape")
    return text
