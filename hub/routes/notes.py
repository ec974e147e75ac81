"""L4 agent notes (``/v1/memory/notes``); shared namespaces are ``hub/routes/namespaces.py``.

Notes are plaintext and need no data key. A caller reads their own ``user:`` namespace and the
``pool:`` / ``fed:`` namespaces they are subscribed to. Naming another user's private namespace,
or a shared one the caller is not subscribed to, is 403; a shared one that does not exist is 404;
a note the caller cannot read is 404 (as an unknown id is).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, Query
from fastapi.exceptions import RequestValidationError
from pydantic import ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from federation.notes_sync import NoteSync, QuorumNotReached
from hub.deps import Semantic, State, UserCallerDep
from hub.errors import InvalidRequestError, NotFoundError, UpstreamFailedError
from hub.routes.facts import MAX_TAGS, KQuery, Tag, TagsQuery, parse_tags
from hub.schemas import DbText, JsonDatetime, StrictBody
from hub.semantic import SemanticMemory
from hub.state import HubState
from memory import notes
from memory.context import MAX_CONTEXT_CHARS, Turn, window_contexts
from memory.namespaces import check_readable
from memory.notes import (
    MAX_AGENT_CHARS,
    MAX_BODY_CHARS,
    MAX_TITLE_CHARS,
    NAMESPACE_PATTERN,
    NewNote,
    Note,
    NoteEdit,
    resolve_namespace,
)
from memory.recall import NoteHit, RecallQuery, SearchMode, note_query_text, recall

router = APIRouter(prefix="/v1/memory", tags=["memory"])

NamespaceQuery = Annotated[
    list[str] | None,
    Query(description="Only these namespaces (repeatable); default: every one you can read."),
]
SNIPPET_CHARS = 240
MAX_BATCH = 1000  # notes in one POST
MAX_WINDOW = 5  # neighbouring notes either side in a batch's contexts


class NoteBody(StrictBody):
    """A note for the caller's agents, or for a shared namespace."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = Field(
        "user:me",
        pattern=NAMESPACE_PATTERN,
        description="`user:me` (private), `pool:<name>` or `fed:<name>`.",
    )
    title: Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_TITLE_CHARS)] = ""
    body: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_BODY_CHARS)
    ] = Field(description="The note's text (plaintext at rest).")
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    author_agent: str = Field(
        "", max_length=MAX_AGENT_CHARS, description="Which agent wrote it (`claude-code`)."
    )
    context: Annotated[str, StringConstraints(max_length=MAX_CONTEXT_CHARS)] = Field(
        "",
        description="Text that situates the note (searched with it, never returned as its "
        "body): a topic, a place in a conversation.",
    )
    speaker: str = Field(
        "", max_length=MAX_AGENT_CHARS, description="Who said it (a conversation turn)."
    )
    said_at: JsonDatetime | None = Field(
        None, description="When it was said: its relative dates are resolved against this."
    )
    write_quorum: int | None = Field(
        None,
        ge=1,
        le=100,
        description="`fed:` namespaces only: answer once this many peer pools stored the note "
        "(else 502 `write_quorum_not_reached`; the note stays here and syncs later).",
    )


class NoteEditBody(StrictBody):
    """A note's new content: title, body and tags are replaced whole."""

    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_TITLE_CHARS)] = ""
    body: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_BODY_CHARS)
    ] = Field(description="The note's text (plaintext at rest).")
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)


def index_contexts(bodies: list[NoteBody], window: int) -> list[str]:
    """Each note's context: its speaker and date, ``window`` notes of the list either side
    (memory/context.py), then the context the caller gave."""
    turns = [Turn(b.body, b.speaker, b.said_at) for b in bodies]
    contexts = window_contexts(turns, window)
    return [
        "\n".join(part for part in (made, body.context) if part)[:MAX_CONTEXT_CHARS]
        for made, body in zip(contexts, bodies, strict=True)
    ]


def note_body(note: Note, **extra: Any) -> dict[str, Any]:
    """A note as the API shows it."""
    return {
        "object": "memory.note",
        "id": str(note.id),
        "namespace": note.namespace,
        "title": note.title,
        "body": note.body,
        "tags": list(note.tags),
        "author_agent": note.author_agent,
        "author": note.author,
        "mine": note.mine,
        "content_hash": note.content_hash,
        "clock": note.clock,
        "origin_pool": note.origin_pool,
        "created_at": note.created_at.isoformat(),
        "updated_at": note.updated_at.isoformat(),
        "deleted_at": note.deleted_at.isoformat() if note.deleted_at else None,
        "context": note.context,
        "speaker": note.speaker,
        "said_at": note.said_at.isoformat() if note.said_at else None,
    } | extra


def hit_body(hit: NoteHit) -> dict[str, Any]:
    """A search hit: the note, its fused score, each side's rank and a snippet."""
    return note_body(
        hit.note,
        score=round(hit.score, 6),
        similarity=None if hit.similarity is None else round(hit.similarity, 6),
        vector_rank=hit.vector_rank,
        keyword_rank=hit.keyword_rank,
        snippet=hit.snippet,
    )


async def readable_filter(
    semantic: SemanticMemory, user_id: UUID, namespace: list[str] | None
) -> list[str] | None:
    """A namespace filter in canonical form, refused unless the caller may read each one."""
    if namespace is None:
        return None
    spaces = [resolve_namespace(n, user_id) for n in namespace]
    async with semantic.pool.acquire() as conn:
        await check_readable(conn, user_id, spaces)
    return spaces


def _quorum_sync(state: HubState, namespace: str) -> NoteSync:
    if not namespace.startswith("fed:"):
        raise InvalidRequestError(
            "write_quorum applies to fed: namespaces only (other notes never leave the pool).",
            param="write_quorum",
        )
    if state.note_sync is None:
        raise InvalidRequestError(
            "write_quorum needs federation, which is off in this pool.", param="write_quorum"
        )
    return state.note_sync


@router.post("/notes", status_code=201)
async def create_note(
    payload: Annotated[Any, Body(description="A note (NoteBody), or a list of 1 to 1000 notes.")],
    semantic: Semantic,
    caller: UserCallerDep,
    state: State,
    window: Annotated[
        int,
        Query(
            ge=0,
            le=MAX_WINDOW,
            description="A list: index each note with this many "
            "notes of the list either side (conversation turns).",
        ),
    ] = 0,
) -> dict[str, Any]:
    """Store a note: in `user:me`, or in a shared namespace that exists and you are subscribed to
    (404 `namespace_not_found`, 403 `namespace_forbidden` otherwise). With `write_quorum` W (a
    `fed:` namespace), the answer waits until W peer pools stored it; fewer is 502
    `write_quorum_not_reached`, saying how many did (the note stays stored here). A list of up
    to 1000 notes is stored at once (all or none) and answered as a list."""
    body = _parse_notes(payload)
    if isinstance(body, list):
        return await _create_notes(body, semantic, caller.user_id, window)
    namespace = resolve_namespace(body.namespace, caller.user_id)
    sync = None if body.write_quorum is None else _quorum_sync(state, namespace)
    new = NewNote(
        namespace, body.body, body.title, tuple(body.tags), body.author_agent,
        index_contexts([body], 0)[0], body.speaker, body.said_at,
    )  # fmt: skip
    vector = await semantic.embedder.embed_one(new.index_text)
    async with semantic.pool.acquire() as conn:
        note = await notes.add_note(conn, caller.user_id, new, vector, now=datetime.now(UTC))
    if sync is None or body.write_quorum is None:
        return note_body(note)
    try:
        acknowledged = await sync.replicate(note.id, body.write_quorum)
    except QuorumNotReached as exc:
        raise UpstreamFailedError(exc.message, code=exc.code) from exc
    return note_body(note, write_quorum=body.write_quorum, acknowledged=acknowledged)


_NOTE_LIST = TypeAdapter(Annotated[list[NoteBody], Field(min_length=1, max_length=MAX_BATCH)])


def _parse_notes(payload: Any) -> NoteBody | list[NoteBody]:
    """One note or a list, validated as the body: errors name the field (``[3].body``)."""
    try:
        if isinstance(payload, list):
            return _NOTE_LIST.validate_python(payload)
        return NoteBody.model_validate(payload)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


async def _create_notes(
    bodies: list[NoteBody], semantic: SemanticMemory, user_id: UUID, window: int
) -> dict[str, Any]:
    """A batch: embedded in batches, stored in one statement."""
    if any(b.write_quorum is not None for b in bodies):
        raise InvalidRequestError(
            "write_quorum applies to a single note, not to a list.", param="write_quorum"
        )
    batch = [
        NewNote(
            resolve_namespace(b.namespace, user_id), b.body, b.title, tuple(b.tags),
            b.author_agent, context, b.speaker, b.said_at,
        )
        for b, context in zip(bodies, index_contexts(bodies, window), strict=True)
    ]  # fmt: skip
    vectors = await semantic.embedder.embed([n.index_text for n in batch])
    async with semantic.pool.acquire() as conn:
        stored = await notes.add_notes(conn, user_id, batch, list(vectors), now=datetime.now(UTC))
    return {"object": "list", "data": [note_body(n) for n in stored]}


@router.put("/notes/{note_id}")
async def edit_note(
    note_id: UUID, body: NoteEditBody, semantic: Semantic, caller: UserCallerDep
) -> dict[str, Any]:
    """Replace a note's title, body and tags: yours, or a shared one you wrote or whose
    namespace you own (403 `namespace_forbidden` otherwise); a `fed:` edit syncs to peers."""
    vector = await semantic.embedder.embed_one(f"{body.title}\n{body.body}".strip())
    edit = NoteEdit(body.body, body.title, tuple(body.tags))
    async with semantic.pool.acquire() as conn:
        note = await notes.edit_note(
            conn, caller.user_id, note_id, edit, vector, now=datetime.now(UTC)
        )
    if note is None:
        raise NotFoundError(f"No note {note_id}.", param="note_id")
    return note_body(note)


@router.get("/notes")
async def search_notes(
    semantic: Semantic,
    caller: UserCallerDep,
    query: Annotated[
        DbText | None, Query(max_length=2000, description="Search text (hybrid by default).")
    ] = None,
    k: KQuery = 10,
    namespace: NamespaceQuery = None,
    tags: TagsQuery = None,
    since: Annotated[JsonDatetime | None, Query(description="Created at or after.")] = None,
    until: Annotated[JsonDatetime | None, Query(description="Created before.")] = None,
    mode: Annotated[SearchMode, Query(description="hybrid, vector or keyword.")] = (
        SearchMode.HYBRID
    ),
) -> dict[str, Any]:
    """Notes you can read: the best `k` for `query` (vector and full text fused by reciprocal
    rank, with scores and snippets), or the newest `k` without it."""
    wanted = parse_tags(tags)
    spaces = await readable_filter(semantic, caller.user_id, namespace)
    if query is not None and query.strip():
        vector = None
        if mode is not SearchMode.KEYWORD:
            vector = await semantic.embedder.embed_one(note_query_text(query))
        search = RecallQuery(
            query, vector, facts=0, notes=k, mode=mode, tags=wanted, namespaces=spaces,
            since=since, until=until,
        )  # fmt: skip
        async with semantic.pool.acquire() as conn:
            bm25 = await semantic.notes_bm25(conn)
            found = await recall(conn, None, caller.user_id, search, bm25=bm25)
        return {"object": "list", "data": [hit_body(h) for h in found.notes]}
    async with semantic.pool.acquire() as conn:
        listed = await notes.list_notes(
            conn, caller.user_id, namespaces=spaces, tags=wanted, since=since, until=until, limit=k
        )
    return {"object": "list", "data": [note_body(n) for n in listed]}


@router.get("/notes/{note_id}")
async def read_note(note_id: UUID, semantic: Semantic, caller: UserCallerDep) -> dict[str, Any]:
    """One note you can read (a deleted shared note shows as a tombstone)."""
    async with semantic.pool.acquire() as conn:
        note = await notes.get_note(conn, caller.user_id, note_id)
    if note is None:
        raise NotFoundError(f"No note {note_id}.", param="note_id")
    return note_body(note)


@router.delete("/notes/{note_id}")
async def delete_note(note_id: UUID, semantic: Semantic, caller: UserCallerDep) -> dict[str, Any]:
    """Delete a note: yours for good; a shared one (you wrote it or own its namespace) becomes a
    tombstone that federation can pass on."""
    async with semantic.pool.acquire() as conn:
        deleted = await notes.delete_note(conn, caller.user_id, note_id, now=datetime.now(UTC))
    if not deleted:
        raise NotFoundError(f"No note {note_id}.", param="note_id")
    return {"object": "memory.note.deleted", "id": str(note_id), "deleted": True}
