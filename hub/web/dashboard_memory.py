"""The member's memory on the dashboard: the switch, conversations (browse, read, delete), facts
and notes (browse, search, delete), the export, and deleting everything after a confirmation.

The same domain functions as ``/v1/memory`` and ``/v1/conversations``. Reading a conversation
needs the memory key; a browser has it only as its session's wrap (:mod:`memory.login_keys`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Form
from fastapi import Path as PathParam
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from hub.routes.memory import stream_export
from hub.web.dashboard import own_user_id, session_key
from hub.web.session import CsrfChecked, WebForbidden, WebUserDep, hub_state
from hub.web.templating import render
from memory import facts, l2, notes
from memory.conversations import (
    CONVERSATION_ID,
    delete_conversation,
    get_conversation,
    list_conversations,
    shred_memory,
)
from memory.errors import NamespaceForbidden
from memory.recall import RecallQuery, SearchMode, note_query_text, recall

router = APIRouter()

ConversationId = Annotated[str, PathParam(pattern=CONVERSATION_ID.pattern)]
NO_KEY = (
    "This session cannot open your memory, so it cannot turn memory on: use PUT "
    "/v1/memory/settings with a token that has memory access."
)
NO_KEY_EXPORT = (
    "This session cannot open your memory, so it cannot export it: use GET /v1/memory/export "
    "with a token that has memory access."
)
CONFIRM_WORD = "delete"


@router.post("/dashboard/memory")
async def memory_switch(
    request: Request,
    user: WebUserDep,
    _csrf: CsrfChecked,
    enabled: Annotated[bool, Form()] = False,
    compaction: Annotated[bool, Form()] = False,
) -> Response:
    """Turn memory (and compaction) on or off, as ``PUT /v1/memory/settings`` does.

    Turning it on needs the memory key in hand, here the session's: otherwise later turns could
    not be stored, and would be dropped quietly.
    """
    user_id = own_user_id(user)
    state = hub_state(request)
    async with state.db.pool.acquire() as conn:
        if enabled and await session_key(conn, request, user) is None:
            raise WebForbidden(NO_KEY)
        await l2.save_preferences(conn, user_id, l2.Preferences(enabled, compaction))
    if state.semantic is not None:
        state.semantic.opt_in.forget(user_id)
    return RedirectResponse("/dashboard", status_code=303)


@router.get("/dashboard/conversations")
async def conversations(request: Request, user: WebUserDep) -> HTMLResponse:
    """The member's conversations, most recently active first (metadata: no key needed)."""
    user_id = own_user_id(user)
    async with hub_state(request).db.pool.acquire() as conn:
        found = await list_conversations(conn, user_id)
    return render(request, "conversations.html", {"conversations": found})


@router.get("/dashboard/conversations/{conversation_id}")
async def conversation(
    request: Request, conversation_id: ConversationId, user: WebUserDep
) -> HTMLResponse:
    """One conversation, decrypted with the key this session holds."""
    user_id = own_user_id(user)
    async with hub_state(request).db.pool.acquire() as conn:
        found = await get_conversation(conn, user_id, conversation_id)
        if found is None:
            raise WebForbidden("You have no conversation with this id.", status_code=404)
        key = await session_key(conn, request, user)
        turns = await l2.read_turns(conn, key, user_id, conversation_id) if key else []
    readable = [t for t in turns if t.messages is not None]
    context = {
        "conversation": found,
        "turns": readable,
        "unreadable": len(turns) - len(readable),
        "holds_key": key is not None,
    }
    return render(request, "conversation.html", context)


@router.post("/dashboard/conversations/{conversation_id}/delete")
async def remove_conversation(
    request: Request, conversation_id: ConversationId, user: WebUserDep, _csrf: CsrfChecked
) -> Response:
    """Delete one conversation: its turns, summaries and L1 messages."""
    user_id = own_user_id(user)
    async with hub_state(request).db.pool.acquire() as conn:
        deleted = await delete_conversation(conn, user_id, conversation_id)
    if deleted is None:
        raise WebForbidden("You have no conversation with this id.", status_code=404)
    return RedirectResponse("/dashboard/conversations", status_code=303)


@router.get("/dashboard/facts")
async def fact_list(request: Request, user: WebUserDep, q: str = "") -> HTMLResponse:
    """The member's current facts: the newest, or the closest to ``q``.

    Decrypted with the key this session holds; without one, the page says so.
    """
    user_id = own_user_id(user)
    state = hub_state(request)
    query = q.strip()[:2000]
    vector = None
    if query and state.semantic is not None:
        vector = await state.semantic.embedder.embed_one(query)
    async with state.db.pool.acquire() as conn:
        key = await session_key(conn, request, user)
        found: list[facts.Fact] = []
        if key is not None and vector is not None:
            hits = await recall(conn, key, user_id, RecallQuery(query, vector, facts=20, notes=0))
            found = [hit.fact for hit in hits.facts]
        elif key is not None:
            found = await facts.list_facts(conn, key, user_id, now=datetime.now(UTC))
    context = {"facts": found, "q": query, "holds_key": key is not None}
    return render(request, "facts.html", context)


@router.post("/dashboard/facts/{fact_id}/delete")
async def remove_fact(
    request: Request, fact_id: UUID, user: WebUserDep, _csrf: CsrfChecked
) -> Response:
    """Delete one fact for good (its text, embedding and history)."""
    user_id = own_user_id(user)
    async with hub_state(request).db.pool.acquire() as conn:
        deleted = await facts.delete_fact(conn, user_id, fact_id)
    if not deleted:
        raise WebForbidden("You have no fact with this id.", status_code=404)
    return RedirectResponse("/dashboard/facts", status_code=303)


@router.get("/dashboard/notes")
async def note_list(request: Request, user: WebUserDep, q: str = "") -> HTMLResponse:
    """The notes the member's agents can read: the newest, or the best for ``q`` (hybrid)."""
    user_id = own_user_id(user)
    state = hub_state(request)
    query = q.strip()[:2000]
    async with state.db.pool.acquire() as conn:
        if query:
            semantic = state.semantic
            vector = await semantic.embedder.embed_one(note_query_text(query)) if semantic else None
            mode = SearchMode.HYBRID if vector is not None else SearchMode.KEYWORD
            search = RecallQuery(query, vector, facts=0, notes=20, mode=mode)
            bm25 = await semantic.notes_bm25(conn) if semantic else None
            found = [
                hit.note for hit in (await recall(conn, None, user_id, search, bm25=bm25)).notes
            ]
        else:
            found = await notes.list_notes(conn, user_id, limit=50)
    return render(request, "notes.html", {"notes": found, "q": query})


@router.post("/dashboard/notes/{note_id}/delete")
async def remove_note(
    request: Request, note_id: UUID, user: WebUserDep, _csrf: CsrfChecked
) -> Response:
    """Delete a note: the member's own for good, a shared one they may delete as a tombstone."""
    user_id = own_user_id(user)
    try:
        async with hub_state(request).db.pool.acquire() as conn:
            deleted = await notes.delete_note(conn, user_id, note_id, now=datetime.now(UTC))
    except NamespaceForbidden:
        raise WebForbidden(
            "Only its author or the namespace's owner may delete a shared note."
        ) from None
    if not deleted:
        raise WebForbidden("You have no note with this id.", status_code=404)
    return RedirectResponse("/dashboard/notes", status_code=303)


@router.get("/dashboard/memory/export")
async def export(request: Request, user: WebUserDep) -> Response:
    """Download everything the pool keeps of the member's memory, decrypted, as JSON.

    The same document as ``GET /v1/memory/export``, opened with the key this session holds.
    """
    user_id = own_user_id(user)
    state = hub_state(request)
    async with state.db.pool.acquire() as conn:
        key = await session_key(conn, request, user)
        preferences = await l2.load_preferences(conn, user_id)
    if key is None:
        raise WebForbidden(NO_KEY_EXPORT)
    head = {
        "object": "memory.export",
        "user": user.name,
        "exported_at": datetime.now(UTC).isoformat(),
        "settings": {"enabled": preferences.enabled, "compaction": preferences.compaction},
    }
    return StreamingResponse(
        stream_export(state, user_id, key, head),
        media_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="iamine-memory.json"'},
    )


@router.get("/dashboard/memory/delete")
async def delete_everything_form(request: Request, user: WebUserDep) -> HTMLResponse:
    """What deleting all memory would delete, and the form that confirms it."""
    user_id = own_user_id(user)
    async with hub_state(request).db.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM conversations WHERE user_id = $1) AS conversations, "
            "(SELECT count(*) FROM facts WHERE user_id = $1) AS facts",
            user_id,
        )
    context = {"counts": dict(row), "word": CONFIRM_WORD, "error": None}
    return render(request, "memory_delete.html", context)


@router.post("/dashboard/memory/delete")
async def delete_everything(
    request: Request,
    user: WebUserDep,
    _csrf: CsrfChecked,
    confirm: Annotated[str, Form(max_length=32)] = "",
) -> Response:
    """Crypto-shred the member's memory (as ``DELETE /v1/memory``) once they typed the word."""
    user_id = own_user_id(user)
    if confirm.strip().lower() != CONFIRM_WORD:
        raise WebForbidden("Type the word asked for to confirm; nothing was deleted.", 400)
    async with hub_state(request).db.pool.acquire() as conn, conn.transaction():
        await facts.delete_all_facts(conn, user_id)
        await notes.delete_private_notes(conn, user_id)
        await shred_memory(conn, user_id)
    return RedirectResponse("/dashboard", status_code=303)
