"""The versions of ``fed:`` notes and their tictac tree (Riak's anti-entropy), in plain Python.

A note version is what every pool must agree on: id, namespace, title, body, tags, the writing
agent, the creation time, the origin pool, the HLC and the tombstone flag. ``row_hash`` is the
sha256 of its RFC 8785 canonical JSON; local-only columns (embedding, owner, author user id,
local timestamps) stay out, so every pool computes the same hash for the same version.

The tree: a row falls in one of :data:`SEGMENTS` segments by the first bits of ``sha256(id)``
(never the id: a UUIDv7 starts with its time, and fresh ids would share one segment); its leaf is
the first 64 bits of ``sha256(id ‖ row_hash)``; a segment is the XOR of its leaves, a branch the
XOR of :data:`BRANCH_WIDTH` segments, the root the XOR of everything. XOR lets a pool change one
row and update its tree in O(1); migration 014 computes the same ``segment`` and ``leaf`` in SQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import rfc8785

from federation.errors import InvalidFederationInput

SEGMENT_BITS = 10
SEGMENTS = 1 << SEGMENT_BITS
BRANCH_WIDTH = 32
BRANCHES = SEGMENTS // BRANCH_WIDTH


@dataclass(frozen=True)
class NoteVersion:
    """One version of a ``fed:`` note, as pools exchange it."""

    id: UUID
    namespace: str
    title: str
    body: str
    tags: tuple[str, ...]
    author_agent: str
    created_ms: int
    origin_pool: str
    hlc: int
    deleted: bool

    def canonical(self) -> bytes:
        """The RFC 8785 canonical JSON of the version (the HLC as a decimal string: it
        exceeds the integers JSON numbers hold exactly)."""
        return rfc8785.dumps(self._fields())

    def row_hash(self) -> bytes:
        """sha256 of :meth:`canonical`."""
        return hashlib.sha256(self.canonical()).digest()

    def wins_over(self, hlc: int, origin_pool: str, row_hash: bytes) -> bool:
        """Whether this version beats another: higher HLC, then higher origin pool id, then
        higher ``row_hash`` (two versions alike but for it can only come from a lying pool;
        every pool still picks the same one)."""
        return (self.hlc, self.origin_pool, self.row_hash()) > (hlc, origin_pool, row_hash)

    def as_wire(self) -> dict[str, Any]:
        """The version as sent to a peer, with its ``row_hash`` (hex)."""
        return {**self._fields(), "row_hash": self.row_hash().hex()}

    def _fields(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "namespace": self.namespace,
            "title": self.title,
            "body": self.body,
            "tags": list(self.tags),
            "author_agent": self.author_agent,
            "created_ms": self.created_ms,
            "origin_pool": self.origin_pool,
            "hlc": str(self.hlc),
            "deleted": self.deleted,
        }


def segment_of(note_id: UUID) -> int:
    """The segment of a note: the first :data:`SEGMENT_BITS` bits of sha256(id)."""
    digest = hashlib.sha256(note_id.bytes).digest()
    return int.from_bytes(digest[:2], "big") >> (16 - SEGMENT_BITS)


def leaf_of(note_id: UUID, row_hash: bytes) -> int:
    """The leaf of a row: the first 64 bits of sha256(id ‖ row_hash), signed as a bigint."""
    digest = hashlib.sha256(note_id.bytes + row_hash).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def branch_of(segment: int) -> int:
    """The branch a segment belongs to."""
    return segment // BRANCH_WIDTH


@dataclass(frozen=True)
class Tree:
    """A pool's tictac tree: the XOR of each non-empty segment (absent: 0)."""

    segments: Mapping[int, int]

    @classmethod
    def of_rows(cls, rows: Iterable[tuple[UUID, bytes]]) -> Tree:
        """The tree of ``(id, row_hash)`` pairs."""
        segments: dict[int, int] = {}
        for note_id, row_hash in rows:
            segment = segment_of(note_id)
            segments[segment] = segments.get(segment, 0) ^ leaf_of(note_id, row_hash)
        return cls({s: v for s, v in segments.items() if v != 0})

    def branches(self) -> list[int]:
        """The XOR of each branch's segments, all :data:`BRANCHES` of them."""
        values = [0] * BRANCHES
        for segment, value in self.segments.items():
            values[branch_of(segment)] ^= value
        return values

    def root(self) -> int:
        """The XOR of every leaf."""
        value = 0
        for branch in self.branches():
            value ^= branch
        return value

    def segments_of(self, branches: Iterable[int]) -> dict[int, int]:
        """The segment values of the given branches (every segment, zeros included)."""
        return {
            s: self.segments.get(s, 0)
            for b in branches
            for s in range(b * BRANCH_WIDTH, (b + 1) * BRANCH_WIDTH)
        }


def differing(mine: Mapping[int, int], theirs: Mapping[int, int]) -> list[int]:
    """The keys (branches or segments) whose values differ, absent keys reading 0."""
    return sorted(k for k in set(mine) | set(theirs) if mine.get(k, 0) != theirs.get(k, 0))


def encode_values(values: Mapping[int, int]) -> dict[str, str]:
    """Tree values as JSON: keys and signed 64-bit values as decimal strings."""
    return {str(k): str(v) for k, v in values.items()}


def decode_values(data: object, limit: int, param: str) -> dict[int, int]:
    """Tree values from JSON (:func:`encode_values`), or :class:`InvalidFederationInput`."""
    if not isinstance(data, dict) or len(data) > limit:
        raise InvalidFederationInput(f"{param} must be an object of at most {limit} entries.")
    try:
        values = {int(k): int(v) for k, v in data.items() if isinstance(v, str)}
    except ValueError:
        raise InvalidFederationInput(f"{param} holds a value that is not an integer.") from None
    if len(values) != len(data) or any(
        not 0 <= k < SEGMENTS or not -(1 << 63) <= v < (1 << 63) for k, v in values.items()
    ):
        raise InvalidFederationInput(f"{param} holds a key or value out of range.")
    return values
