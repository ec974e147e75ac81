"""L4: agent notes in namespaces, in plaintext, searched by ``memory/recall.py``.

Namespaces:

- ``user:<user id>`` — private to one user (``user:me`` names the caller's own). Nobody else
  reads or writes it, whatever filter they send: every query also checks ``owner_id`` in SQL.
- ``pool:<name>`` — shared by the users subscribed to it. Only the admin (or a user the admin
  allowed) creates one, never a first note: ``memory/namespaces.py`` holds who reads and writes.
- ``fed:<name>`` — like ``pool:``, and to be synced between pools by federation later.

Notes are stored in plaintext: full-text search needs the words, and a ``tsvector`` of an
encrypted body would give them away anyway (docs/privacy.md). Rows are shaped to cross pools
(DESIGN.md, "Built now"): a time-ordered UUIDv7 id, a SHA-256 content hash, an origin pool
(NULL here: federation fills it), a logical clock bumped on each change, and tombstone deletes in
shared namespaces (the id, namespace and clock stay; the content goes). A private note is deleted
outright: it never leaves the pool.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg
from pgvector import Vector as PgVector

from memory.embeddings import MODEL_DIM, MODEL_NAME, Vector
from memory.errors import InvalidNamespace, NamespaceForbidden
from memory.namespaces import READABLE_NOTE, SHARED_NAME, check_write

NAMESPACE_PATTERN = rf"^(user:(me|[0-9a-f-]{{36}})|(pool|fed):{SHARED_NAME})$"
_NAMESPACE = re.compile(NAMESPACE_PATTERN)
MAX_TITLE_CHARS = 200
MAX_BODY_CHARS = 32_000
MAX_AGENT_CHARS = 64


@dataclass(frozen=True)
class NewNote:
    """A note to store."""

    namespace: str
    body: str
    title: str = ""
    tags: tuple[str, ...] = ()
    author_agent: str = ""
    context: str = ""
    speaker: str = ""
    said_at: datetime | None = None

    @property
    def index_text(self) -> str:
        """What the note is embedded by: its title and body.

        Not its context: on the multi-session set, embedding a turn with its date or its
        neighbours made the vector side worse (recall@10 0.58 to 0.45 and 0.54); the context
        is searched by the keyword side only (memory/context.py). Nor its speaker: a name
        is a rare token that pulls a short turn's vector toward every question naming that
        person (migration 020); recall matches the speaker by name instead.
        """
        return f"{self.title}\n{self.body}".strip()


@dataclass(frozen=True)
class Note:
    """A stored note (a tombstone has ``deleted_at`` and no content).

    ``mine``: the reader wrote it; ``author``: the writer's user name (None once deleted);
    ``context``: the text it is also indexed by (memory/context.py), never part of its body;
    ``speaker`` and ``said_at``: who said it and when, for a conversation turn (else empty).
    """

    id: UUID
    namespace: str
    author_agent: str
    title: str
    body: str
    tags: tuple[str, ...]
    content_hash: str
    clock: int
    origin_pool: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    mine: bool
    author: str | None = None
    context: str = ""
    speaker: str = ""
    said_at: datetime | None = None


NOTE_COLUMNS = (
    "id, namespace, author_id, author_agent, title, body, tags, content_hash, clock, "
    "origin_pool, created_at, updated_at, deleted_at, context, speaker, said_at"
)


_NOTE_FIELDS = ", ".join(f"n.{c}" for c in NOTE_COLUMNS.split(", "))
_AUTHOR = "LEFT JOIN users u ON u.id = n.author_id"

# Statements are built once from constants; no value is ever formatted in.
_INSERT_SQL = (
    "WITH n AS (INSERT INTO notes (id, namespace, owner_id, author_id, author_agent, title, "  # noqa: S608
    "body, tags, embedding, embedding_model, embedding_dim, content_hash, created_at, "
    "updated_at, context, speaker, said_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
    "$11, $12, $13, $13, $14, $15, $16) "
    f"RETURNING *) SELECT {_NOTE_FIELDS}, u.name AS author_name FROM n {_AUTHOR}"
)
_GET_SQL = (
    f"SELECT {_NOTE_FIELDS}, u.name AS author_name FROM notes n {_AUTHOR} "  # noqa: S608
    f"WHERE n.id = $2 AND {READABLE_NOTE}"
)
_LIST_SQL = (
    f"SELECT {_NOTE_FIELDS}, u.name AS author_name FROM notes n {_AUTHOR} "  # noqa: S608
    f"WHERE {READABLE_NOTE} AND n.deleted_at IS NULL "
    "AND ($2::text[] IS NULL OR n.namespace = ANY($2)) AND n.tags @> $3::text[] "
    "AND ($4::timestamptz IS NULL OR n.created_at >= $4) "
    "AND ($5::timestamptz IS NULL OR n.created_at < $5) ORDER BY n.id DESC LIMIT $6"
)
_EXPORT_SQL = (
    f"SELECT {_NOTE_FIELDS}, u.name AS author_name FROM notes n {_AUTHOR} "  # noqa: S608
    "WHERE n.owner_id = $1 OR (n.owner_id IS NULL AND n.author_id = $1 "
    "AND n.deleted_at IS NULL) ORDER BY n.id"
)


def note_from_row(row: asyncpg.Record, user_id: UUID) -> Note:
    """A note from a row holding :data:`NOTE_COLUMNS`, as seen by ``user_id``."""
    return Note(
        id=row["id"],
        namespace=row["namespace"],
        author_agent=row["author_agent"],
        title=row["title"],
        body=row["body"],
        tags=tuple(row["tags"]),
        content_hash=bytes(row["content_hash"]).hex(),
        clock=row["clock"],
        origin_pool=row["origin_pool"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        deleted_at=row["deleted_at"],
        mine=row["author_id"] == user_id,
        author=row.get("author_name"),
        context=row["context"],
        speaker=row["speaker"],
        said_at=row["said_at"],
    )


def uuid7(now: datetime) -> UUID:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then 74 random bits; sorts by time."""
    millis = int(now.timestamp() * 1000) & ((1 << 48) - 1)
    rand_a, rand_b = secrets.randbits(12), secrets.randbits(62)
    return UUID(int=(millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b)


def content_hash(note: NewNote) -> bytes:
    """SHA-256 of the note's content as canonical JSON (what anti-entropy will compare)."""
    canonical = {
        "namespace": note.namespace,
        "title": note.title,
        "body": note.body,
        "tags": sorted(set(note.tags)),
        "author_agent": note.author_agent,
    }
    encoded = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).digest()


def resolve_namespace(namespace: str, user_id: UUID) -> str:
    """The canonical namespace (``user:me`` → ``user:<id>``); refuse another user's private one."""
    if _NAMESPACE.match(namespace) is None:
        raise InvalidNamespace(
            "A namespace is user:me, pool:<name> or fed:<name>; a name is 1-63 lower-case "
            "letters, digits and . _ -.",
            param="namespace",
        )
    if namespace == "user:me":
        return f"user:{user_id}"
    if namespace.startswith("user:") and namespace != f"user:{user_id}":
        raise NamespaceForbidden(
            "A user: namespace is private to its user; yours is user:me.", param="namespace"
        )
    return namespace


def owner_of(namespace: str) -> UUID | None:
    """The user a private namespace belongs to (None for shared namespaces)."""
    return UUID(namespace.removeprefix("user:")) if namespace.startswith("user:") else None


async def add_note(
    conn: asyncpg.Connection,
    user_id: UUID,
    note: NewNote,
    vector: Vector,
    *,
    now: datetime,
) -> Note:
    """Store a note in a namespace the user may write (``note.namespace`` is canonical).

    A shared namespace must exist and the user be subscribed to it (:func:`check_write`).
    """
    async with conn.transaction():
        if owner_of(note.namespace) is None:
            await check_write(conn, user_id, note.namespace)
        row = await conn.fetchrow(
            _INSERT_SQL,
            uuid7(now),
            note.namespace,
            owner_of(note.namespace),
            user_id,
            note.author_agent,
            note.title,
            note.body,
            sorted(set(note.tags)),
            vector,
            MODEL_NAME,
            MODEL_DIM,
            content_hash(note),
            now,
            note.context,
            note.speaker,
            note.said_at,
        )
    return note_from_row(row, user_id)


_INSERT_MANY_SQL = (
    "WITH n AS (INSERT INTO notes (id, namespace, owner_id, author_id, author_agent, title, "  # noqa: S608
    "body, tags, embedding, embedding_model, embedding_dim, content_hash, created_at, "
    "updated_at, context, speaker, said_at) SELECT r.id, r.namespace, r.owner_id, $1, "
    "r.author_agent, r.title, r.body, ARRAY(SELECT jsonb_array_elements_text(r.tags)), "
    "r.embedding, $2, $3, r.content_hash, $4, $4, r.context, r.speaker, r.said_at "
    "FROM unnest($5::uuid[], $6::text[], $7::uuid[], $8::text[], $9::text[], $10::text[], "
    "$11::jsonb[], $12::vector[], $13::bytea[], $14::text[], $15::text[], $16::timestamptz[]) "
    "WITH ORDINALITY AS r (id, namespace, owner_id, author_agent, title, body, tags, embedding, "
    "content_hash, context, speaker, said_at, i) ORDER BY r.i RETURNING *) "
    f"SELECT {_NOTE_FIELDS}, u.name AS author_name FROM n {_AUTHOR} ORDER BY n.id"
)


async def add_notes(
    conn: asyncpg.Connection,
    user_id: UUID,
    batch: Sequence[NewNote],
    vectors: Sequence[Vector],
    *,
    now: datetime,
) -> list[Note]:
    """Store many notes in one statement and one transaction (all or none), in order.

    Each shared namespace is checked once (:func:`check_write`). One statement keeps a large
    ingest cheap: one round trip, and one pass over each index instead of one per note.
    """
    async with conn.transaction():
        for namespace in dict.fromkeys(n.namespace for n in batch):
            if owner_of(namespace) is None:
                await check_write(conn, user_id, namespace)
        ids = sorted(uuid7(now) for _ in batch)  # time-ordered ids keep the batch's order
        rows = await conn.fetch(
            _INSERT_MANY_SQL,
            user_id,
            MODEL_NAME,
            MODEL_DIM,
            now,
            ids,
            [n.namespace for n in batch],
            [owner_of(n.namespace) for n in batch],
            [n.author_agent for n in batch],
            [n.title for n in batch],
            [n.body for n in batch],
            [json.dumps(sorted(set(n.tags))) for n in batch],
            [PgVector(v) for v in vectors],  # binary: the text form cost 0.3 ms a note
            [content_hash(n) for n in batch],
            [n.context for n in batch],
            [n.speaker for n in batch],
            [n.said_at for n in batch],
        )
    return [note_from_row(r, user_id) for r in rows]


async def get_note(conn: asyncpg.Connection, user_id: UUID, note_id: UUID) -> Note | None:
    """A note the user may read (their own, or in a namespace they are subscribed to),
    tombstones included."""
    row = await conn.fetchrow(
        _GET_SQL,
        user_id,
        note_id,
    )
    return note_from_row(row, user_id) if row else None


async def list_notes(
    conn: asyncpg.Connection,
    user_id: UUID,
    *,
    namespaces: Sequence[str] | None = None,
    tags: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[Note]:
    """Live notes the user may read (their own and their subscriptions'), newest first,
    filtered by namespace, tags and time."""
    rows = await conn.fetch(
        _LIST_SQL,
        user_id,
        None if namespaces is None else list(namespaces),
        list(tags),
        since,
        until,
        limit,
    )
    return [note_from_row(r, user_id) for r in rows]


_DELETABLE_SQL = (
    "SELECT n.owner_id, n.author_id, s.owner_id AS namespace_owner FROM notes n "  # noqa: S608
    "LEFT JOIN note_namespaces s ON s.namespace = n.namespace "
    f"WHERE n.id = $2 AND {READABLE_NOTE} AND n.deleted_at IS NULL FOR UPDATE OF n"
)


async def delete_note(
    conn: asyncpg.Connection, user_id: UUID, note_id: UUID, *, now: datetime
) -> bool:
    """Delete a note: a private one outright, a shared one as a tombstone.

    Its author or the namespace's owner may delete a shared note; False if the user cannot read
    the note (or it is already a tombstone), :class:`NamespaceForbidden` if they may not delete it.
    """
    async with conn.transaction():
        row = await conn.fetchrow(
            _DELETABLE_SQL,
            user_id,
            note_id,
        )
        if row is None:
            return False
        if row["owner_id"] == user_id:
            await conn.execute(
                "DELETE FROM notes WHERE id = $1 AND owner_id = $2", note_id, user_id
            )
            return True
        if user_id not in (row["author_id"], row["namespace_owner"]):
            raise NamespaceForbidden("Only its author or the namespace's owner may delete a note.")
        await conn.execute(
            "UPDATE notes SET title = '', body = '', tags = '{}', embedding = NULL, "
            "embedding_model = NULL, embedding_dim = NULL, deleted_at = $2, updated_at = $2, "
            "clock = clock + 1, content_hash = sha256(convert_to('tombstone:' || id::text, "
            "'UTF8')), row_hash = NULL WHERE id = $1",
            note_id,
            now,
        )
    return True


_EDITABLE_SQL = (
    "SELECT n.namespace, n.author_agent, n.owner_id, n.author_id, "  # noqa: S608
    "s.owner_id AS namespace_owner FROM notes n "
    "LEFT JOIN note_namespaces s ON s.namespace = n.namespace "
    f"WHERE n.id = $2 AND {READABLE_NOTE} AND n.deleted_at IS NULL FOR UPDATE OF n"
)
_UPDATE_SQL = (
    "WITH n AS (UPDATE notes SET title = $2, body = $3, tags = $4, embedding = $5, "  # noqa: S608
    "embedding_model = $6, embedding_dim = $7, content_hash = $8, updated_at = $9, "
    "clock = clock + 1, row_hash = NULL WHERE id = $1 RETURNING *) "
    f"SELECT {_NOTE_FIELDS}, u.name AS author_name FROM n {_AUTHOR}"
)


@dataclass(frozen=True)
class NoteEdit:
    """A note's new content (it replaces title, body and tags whole)."""

    body: str
    title: str = ""
    tags: tuple[str, ...] = ()


async def edit_note(
    conn: asyncpg.Connection,
    user_id: UUID,
    note_id: UUID,
    edit: NoteEdit,
    vector: Vector,
    *,
    now: datetime,
) -> Note | None:
    """Replace a live note's title, body and tags (``vector`` embeds the new content); None if
    the user cannot read it. The same people as for :func:`delete_note` may edit a shared note.
    In a ``fed:`` namespace the edit is a new version that federation stamps and passes on."""
    async with conn.transaction():
        row = await conn.fetchrow(_EDITABLE_SQL, user_id, note_id)
        if row is None:
            return None
        if row["owner_id"] != user_id and user_id not in (row["author_id"], row["namespace_owner"]):
            raise NamespaceForbidden("Only its author or the namespace's owner may edit a note.")
        new = NewNote(row["namespace"], edit.body, edit.title, edit.tags, row["author_agent"])
        updated = await conn.fetchrow(
            _UPDATE_SQL,
            note_id,
            new.title,
            new.body,
            sorted(set(new.tags)),
            vector,
            MODEL_NAME,
            MODEL_DIM,
            content_hash(new),
            now,
        )
    return note_from_row(updated, user_id)


async def export_notes(conn: asyncpg.Connection, user_id: UUID) -> list[Note]:
    """The user's private notes and the live shared notes they wrote, oldest first."""
    rows = await conn.fetch(
        _EXPORT_SQL,
        user_id,
    )
    return [note_from_row(r, user_id) for r in rows]


async def delete_private_notes(conn: asyncpg.Connection, user_id: UUID) -> int:
    """Delete every note of the user's private namespace; return how many."""
    count = await conn.fetchval(
        "WITH d AS (DELETE FROM notes WHERE owner_id = $1 RETURNING 1) SELECT count(*) FROM d",
        user_id,
    )
    return int(count)
