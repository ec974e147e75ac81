"""A user's conversations (``/v1/conversations``): list, read decrypted, delete.

Every route needs a ``user``-scope token and reads only the caller's rows (user id in SQL); an id
of another user's conversation is 404, as an unknown one is. Reading turns needs the caller's
token to open the memory key, so the pool admin token (no user, no key) reads nothing here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from hub.deps import State, UserCallerDep
from hub.errors import NotFoundError
from memory.conversations import (
    CONVERSATION_ID,
    Conversation,
    delete_conversation,
    get_conversation,
)
from memory.conversations import list_conversations as list_user_conversations
from memory.keys import open_key
from memory.l2 import Turn, read_turns

router = APIRouter(prefix="/v1/conversations", tags=["memory"])


def conversation_summary(conversation: Conversation) -> dict[str, Any]:
    """A conversation's metadata as listed (no text)."""
    return {
        "id": conversation.id,
        "object": "conversation",
        "created_at": conversation.created_at.isoformat(),
        "last_active_at": conversation.last_active_at.isoformat(),
        "exchanges": conversation.exchanges,
        "turn_count": conversation.turns,
        "summary_count": conversation.summaries,
        "compacted_through": conversation.compacted_through,
    }


def conversation_body(conversation: Conversation, turns: Sequence[Turn]) -> dict[str, Any]:
    """A conversation with its decrypted turns; turns an older data key made are only counted."""
    readable = [t for t in turns if t.messages is not None]
    return conversation_summary(conversation) | {
        "turns": [turn_body(t) for t in readable],
        "unreadable_turns": len(turns) - len(readable),
    }


def turn_body(turn: Turn) -> dict[str, Any]:
    """One decrypted turn or summary."""
    body: dict[str, Any] = {
        "seq": turn.seq,
        "kind": turn.kind,
        "created_at": turn.created_at.isoformat(),
        "messages": turn.messages,
    }
    if turn.covers_through is not None:
        body["covers_through"] = turn.covers_through
    return body


# Parsed where it enters: an id that cannot exist is a 400, and never reaches SQL.
ConversationId = Annotated[str, Path(pattern=CONVERSATION_ID.pattern)]


def _not_found(conversation_id: str) -> NotFoundError:
    return NotFoundError(f"No conversation '{conversation_id}'.", param="conversation_id")


@router.get("")
async def list_conversations(
    state: State,
    caller: UserCallerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """List the caller's conversations, most recently active first: ids, times, counts."""
    async with state.db.pool.acquire() as conn:
        conversations = await list_user_conversations(conn, caller.user_id, limit)
    return {"object": "list", "data": [conversation_summary(c) for c in conversations]}


@router.get("/{conversation_id}")
async def read_conversation(
    conversation_id: ConversationId, state: State, caller: UserCallerDep
) -> dict[str, Any]:
    """One of the caller's conversations with its turns, decrypted with the caller's key."""
    async with state.db.pool.acquire() as conn:
        conversation = await get_conversation(conn, caller.user_id, conversation_id)
        if conversation is None:
            raise _not_found(conversation_id)
        key = await open_key(conn, caller.user_id, caller.token_id, caller.token)
        turns = await read_turns(conn, key, caller.user_id, conversation_id)
    return conversation_body(conversation, turns)


@router.delete("/{conversation_id}")
async def remove_conversation(
    conversation_id: ConversationId, state: State, caller: UserCallerDep
) -> dict[str, Any]:
    """Delete one of the caller's conversations: its turns, summaries and L1 messages."""
    async with state.db.pool.acquire() as conn:
        deleted = await delete_conversation(conn, caller.user_id, conversation_id)
    if deleted is None:
        raise _not_found(conversation_id)
    turns, l1_messages = deleted
    return {
        "id": conversation_id,
        "object": "conversation.deleted",
        "deleted": True,
        "turns": turns,
        "l1_messages": l1_messages,
    }
