"""A user's memory as a whole (``/v1/memory``): opt-in, export, crypto-shred, token linking.

What a chat writes to memory (L1, L2) is ``hub/chat.py``'s; this module reads, exports and
deletes it.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import ConfigDict, Field, StrictBool

from hub import accounts
from hub.deps import State, UserCallerDep
from hub.errors import InvalidRequestError
from hub.routes.conversations import conversation_body
from hub.routes.recall import erase_semantic, export_semantic
from hub.schemas import StrictBody
from hub.state import HubState
from memory import l1, l2
from memory.conversations import list_conversations, shred_memory
from memory.keys import UserKey, link_token, open_key

log = structlog.get_logger()

router = APIRouter(prefix="/v1/memory", tags=["memory"])


class MemorySettingsBody(StrictBody):
    """The caller's memory opt-in: L2 conversations, and compaction of long ones."""

    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool = Field(description="Store conversations (encrypted) in L2.")
    compaction: StrictBool = Field(
        False, description="Summarise older turns of long conversations with a pool model."
    )


class LinkBody(StrictBody):
    """Another token of the caller's, to be given access to the caller's memory."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=200, description="The full token text.")


@router.get("/settings")
async def read_settings(state: State, caller: UserCallerDep) -> MemorySettingsBody:
    """The caller's memory opt-in (both off until turned on)."""
    async with state.db.pool.acquire() as conn:
        preferences = await l2.load_preferences(conn, caller.user_id)
    return MemorySettingsBody(enabled=preferences.enabled, compaction=preferences.compaction)


@router.put("/settings")
async def write_settings(
    body: MemorySettingsBody, state: State, caller: UserCallerDep
) -> MemorySettingsBody:
    """Turn L2 memory (and compaction) on or off; turning it on needs a token with memory access."""
    async with state.db.pool.acquire() as conn:
        if body.enabled:
            # Fails with 403 memory_locked now, rather than dropping every later turn quietly.
            await open_key(conn, caller.user_id, caller.token_id, caller.token)
        await l2.save_preferences(
            conn, caller.user_id, l2.Preferences(body.enabled, body.compaction)
        )
    if state.semantic is not None:
        state.semantic.opt_in.forget(caller.user_id)
    return body


@router.get("/export")
async def export_memory(state: State, caller: UserCallerDep) -> StreamingResponse:
    """Everything the pool keeps of the caller's memory, decrypted, as one streamed JSON object."""
    async with state.db.pool.acquire() as conn:
        key = await open_key(conn, caller.user_id, caller.token_id, caller.token)
        preferences = await l2.load_preferences(conn, caller.user_id)
    head = {
        "object": "memory.export",
        "user": caller.principal.user_name,
        "exported_at": datetime.now(UTC).isoformat(),
        "settings": {"enabled": preferences.enabled, "compaction": preferences.compaction},
    }
    return StreamingResponse(
        stream_export(state, caller.user_id, key, head),
        media_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="iamine-memory.json"'},
    )


async def stream_export(
    state: HubState, user_id: UUID, key: UserKey, head: dict[str, Any]
) -> AsyncIterator[bytes]:
    """The export's JSON, in pieces: ``head``, then conversations, L1 messages, facts and notes.

    Also the web dashboard's export. One short connection per conversation: a slow client never
    pins a pooled connection.
    """
    yield json.dumps(head)[:-1].encode() + b', "conversations": ['
    async with state.db.pool.acquire() as conn:
        conversations = await list_conversations(conn, user_id, limit=None)
    for index, conversation in enumerate(conversations):
        async with state.db.pool.acquire() as conn:
            turns = await l2.read_turns(conn, key, user_id, conversation.id)
        separator = b", " if index else b""
        yield separator + json.dumps(conversation_body(conversation, turns)).encode()
    async with state.db.pool.acquire() as conn:
        messages = await l1.list_messages(conn, user_id, now=datetime.now(UTC))
    l1_body = [
        {
            "conversation_id": m.conversation_id,
            "created_at": m.created_at.isoformat(),
            "expires_at": m.expires_at.isoformat(),
            "message": m.message,
        }
        for m in messages
    ]
    async with state.db.pool.acquire() as conn:
        semantic = await export_semantic(conn, key, user_id)
    yield b'], "l1_messages": ' + json.dumps(l1_body).encode() + b", "
    yield json.dumps(semantic)[1:].encode()


@router.delete("")
async def delete_memory(state: State, caller: UserCallerDep) -> dict[str, Any]:
    """Crypto-shred the caller's memory: every key wrap first, then every conversation and turn.

    The opt-in stays as it is. The next memory use starts a new data key for the token that makes
    it; the user's other tokens are then locked until linked (``POST /v1/memory/link``).
    """
    async with state.db.pool.acquire() as conn, conn.transaction():
        erased = await erase_semantic(conn, caller.user_id)
        report = await shred_memory(conn, caller.user_id)
    return {
        "object": "memory.deleted",
        "deleted": True,
        "wraps": report.wraps,
        "generations": report.generations,
        "conversations": report.conversations,
        "turns": report.turns,
        "l1_messages": report.l1_messages,
        **erased,
    }


@router.post("/link")
async def link_memory(body: LinkBody, state: State, caller: UserCallerDep) -> dict[str, Any]:
    """Give another live ``user`` token of the caller's access to the caller's memory."""
    async with state.db.pool.acquire() as conn:
        target = await _own_live_token(conn, caller.user_id, body.token)
        async with conn.transaction():
            key = await open_key(conn, caller.user_id, caller.token_id, caller.token)
            await link_token(conn, key, caller.user_id, target, body.token)
    return {"object": "memory.link", "linked": True, "prefix": accounts.token_prefix(body.token)}


async def _own_live_token(conn: asyncpg.Connection, user_id: UUID, token: str) -> UUID:
    prefix = accounts.token_prefix(token)
    record = await accounts.find_token_by_prefix(conn, prefix) if prefix else None
    live = (
        record is not None
        and hmac.compare_digest(record.hash, accounts.hash_token(token))
        and record.user_id == user_id
        and record.revoked_at is None
        and (record.expires_at is None or record.expires_at > datetime.now(UTC))
        and "user" in record.scopes
    )
    if not live or record is None:
        raise InvalidRequestError(
            "Only a live user-scope token of your own can be linked to your memory.", param="token"
        )
    return record.id
