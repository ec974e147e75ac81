"""The ids and names MCP clients send, as typed arguments and as parsed hub paths.

A tool builds a hub URL from what the client sent, so an unparsed id is a path: ``forget`` with
``fact_id="../../memory"`` once became ``DELETE /v1/memory`` (httpx resolves dot segments) and
wiped the caller's memory. Every id therefore has a type the client sees in the tool's JSON
schema (a UUID, the conversation id pattern, a name pattern), and the path functions here parse
it again before writing it as exactly one percent-encoded path segment. Nothing else in
``mcp_server`` puts client text into a path; everything else goes in a JSON body or in query
parameters, which httpx encodes.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import quote
from uuid import UUID

from pydantic import Field

from inference.roles import RoleName as _RoleName
from memory.conversations import CONVERSATION_ID, is_valid_conversation_id
from memory.notes import NAMESPACE_PATTERN

CONVERSATION_ID_PATTERN = CONVERSATION_ID.pattern
_NAMESPACE = re.compile(NAMESPACE_PATTERN)

FactId = Annotated[UUID, Field(description="A fact id (UUID) from remember or recall.")]
NoteId = Annotated[UUID, Field(description="A note id (UUID) from note_write or note_search.")]
ConversationId = Annotated[
    str,
    Field(
        pattern=CONVERSATION_ID_PATTERN,
        description="A conversation id: 1-128 letters, digits and `._:-`, not `.` or `..`.",
    ),
]
RoleName = Annotated[
    _RoleName,
    Field(
        description="scout (explore), coder (write code), tank (hard problems), "
        "reviewer (critique), or a role the pool configured (lower-case name)."
    ),
]
Namespace = Annotated[
    str,
    Field(
        pattern=NAMESPACE_PATTERN,
        description="`user:me` (private), `pool:<name>` (shared) or `fed:<name>`.",
    ),
]


class InvalidId(ValueError):
    """A client's id is not of its type; nothing was sent to the hub."""

    code = "invalid_id"

    def __init__(self, name: str, value: object, expected: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"`{name}` must be {expected}, not {shown}.")
        self.message = str(self)


def parse_uuid(name: str, value: UUID | str) -> UUID:
    """``value`` as a UUID (already one, or its text), else :class:`InvalidId`."""
    if isinstance(value, UUID):
        return value
    try:
        return UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise InvalidId(name, value, "a UUID") from None


def parse_conversation_id(value: str) -> str:
    """A conversation id the hub accepts and that names exactly one path segment.

    The hub's pattern allows ``.`` and ``..``, which a URL would resolve as dot segments, so
    they are refused here even though the hub could store them.
    """
    if not isinstance(value, str) or not is_valid_conversation_id(value) or value in {".", ".."}:
        raise InvalidId(
            "conversation_id", value, "1-128 letters, digits and `._:-` (not `.` or `..`)"
        )
    return value


def parse_namespace(value: str) -> str:
    """A note namespace name (``user:me``, ``pool:<name>``, ``fed:<name>``)."""
    if not isinstance(value, str) or _NAMESPACE.match(value) is None:
        raise InvalidId("namespace", value, "`user:me`, `pool:<name>` or `fed:<name>`")
    return value


def fact_path(fact_id: UUID | str) -> str:
    """The hub path of one of the caller's facts."""
    return f"/v1/memory/facts/{parse_uuid('fact_id', fact_id)}"


def note_path(note_id: UUID | str) -> str:
    """The hub path of one note."""
    return f"/v1/memory/notes/{parse_uuid('note_id', note_id)}"


def conversation_path(conversation_id: str) -> str:
    """The hub path of one of the caller's conversations (the id percent-encoded)."""
    return "/v1/conversations/" + quote(parse_conversation_id(conversation_id), safe="")
