"""Note versions as received from a peer: parsed, bounded and checked before anything is stored.

A peer's row is refused (:class:`InvalidFederationInput`, the whole message with it) when a field
is missing, of the wrong type or too long, when its namespace is not a ``fed:`` one (``user:`` and
``pool:`` rows never cross pools, in either direction), when a tombstone carries content, when its
HLC lies too far ahead, or when its ``row_hash`` is not the hash this pool computes itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from federation.errors import InvalidFederationInput
from federation.hlc import HybridClock
from federation.identity import parse_pool_id
from federation.tictac import NoteVersion
from memory.facts import TAG_PATTERN
from memory.namespaces import SHARED_NAME
from memory.notes import MAX_AGENT_CHARS, MAX_BODY_CHARS, MAX_TITLE_CHARS

MAX_ROWS = 1000
MAX_TAGS = 16
FED_NAMESPACE = re.compile(rf"^fed:{SHARED_NAME}$")
_TAG = re.compile(TAG_PATTERN)
_HEX_HASH = re.compile(r"^[0-9a-f]{64}$")
# Unix milliseconds of 2000-01-01 and 2200-01-01: a creation time outside is a lie.
_MIN_MS, _MAX_MS = 946_684_800_000, 7_258_118_400_000


def fed_namespaces(data: object, param: str = "namespaces") -> list[str]:
    """A list of ``fed:`` namespace names from JSON, or :class:`InvalidFederationInput`."""
    if not isinstance(data, list) or len(data) > MAX_ROWS:
        raise InvalidFederationInput(f"{param} must be a list of at most {MAX_ROWS} names.")
    if not all(isinstance(n, str) and FED_NAMESPACE.match(n) for n in data):
        raise InvalidFederationInput(f"{param} may only name fed:<name> namespaces.", param=param)
    return sorted(set(data))


def note_ids(data: object, param: str) -> list[UUID]:
    """A list of note ids from JSON, or :class:`InvalidFederationInput`."""
    if not isinstance(data, list) or len(data) > MAX_ROWS:
        raise InvalidFederationInput(f"{param} must be a list of at most {MAX_ROWS} ids.")
    try:
        if all(isinstance(i, str) for i in data):
            return [UUID(i) for i in data]
    except ValueError:
        pass
    raise InvalidFederationInput(f"{param} holds an id that is not a UUID.", param=param)


@dataclass(frozen=True)
class Held:
    """What a pool says it holds of a note: the version's hash, HLC and origin pool."""

    row_hash: str
    hlc: int
    origin_pool: str

    def as_wire(self) -> list[str]:
        """``[row_hash, hlc, origin_pool]``, all strings."""
        return [self.row_hash, str(self.hlc), self.origin_pool]

    def beats(self, other: Held) -> bool:
        """Whether this version wins over ``other``, by the rule of
        :meth:`~federation.tictac.NoteVersion.wins_over` (hex digests order as the bytes do)."""
        return (self.hlc, self.origin_pool, self.row_hash) > (
            other.hlc,
            other.origin_pool,
            other.row_hash,
        )


def parse_have(data: object, limit: int, param: str = "have") -> dict[UUID, Held]:
    """A peer's ``{id: [row_hash, hlc, origin_pool]}``, or :class:`InvalidFederationInput`."""
    if not isinstance(data, dict) or len(data) > limit:
        raise InvalidFederationInput(
            f"{param} must be an object of at most {limit} id → [row_hash, hlc, origin_pool].",
            param=param,
        )
    held: dict[UUID, Held] = {}
    for key, value in data.items():
        where = f"{param}[{str(key)[:40]!r}]"
        if not isinstance(value, list) or len(value) != 3:
            raise InvalidFederationInput(f"{where} must be [row_hash, hlc, origin_pool].")
        row_hash = value[0]
        if not isinstance(row_hash, str) or _HEX_HASH.match(row_hash) is None:
            raise InvalidFederationInput(f"{where}: the row_hash must be 64 hex digits.")
        held[_uuid(key, where)] = Held(row_hash, _hlc(value[1], where), _pool_id(value[2], where))
    return held


def parse_rows(data: object, clock: HybridClock, param: str = "rows") -> list[NoteVersion]:
    """The versions of a message's ``rows``, each checked (see the module docstring)."""
    if not isinstance(data, list) or len(data) > MAX_ROWS:
        raise InvalidFederationInput(
            f"{param} must be a list of at most {MAX_ROWS} rows.", param=param
        )
    versions = [parse_row(row, clock, f"{param}[{i}]") for i, row in enumerate(data)]
    if len({v.id for v in versions}) != len(versions):
        raise InvalidFederationInput(f"{param} holds the same note twice.", param=param)
    return versions


def parse_row(row: object, clock: HybridClock, param: str) -> NoteVersion:
    """One received version, or :class:`InvalidFederationInput` naming the bad field."""
    if not isinstance(row, dict):
        raise InvalidFederationInput(f"{param} must be an object.", param=param)
    namespace = _text(row, "namespace", 70, param)
    if FED_NAMESPACE.match(namespace) is None:
        raise InvalidFederationInput(
            f"{param}.namespace {namespace[:70]!r} is not a fed: namespace: only fed: notes "
            "cross pools.",
            code="namespace_not_federated",
            param=f"{param}.namespace",
        )
    tags = row.get("tags")
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise InvalidFederationInput(f"{param}.tags must be a list of at most {MAX_TAGS} tags.")
    if not all(isinstance(t, str) and _TAG.match(t) for t in tags) or tags != sorted(set(tags)):
        raise InvalidFederationInput(f"{param}.tags must be sorted, distinct, valid tags.")
    version = NoteVersion(
        id=_uuid(row.get("id"), f"{param}.id"),
        namespace=namespace,
        title=_text(row, "title", MAX_TITLE_CHARS, param),
        body=_text(row, "body", MAX_BODY_CHARS, param),
        tags=tuple(tags),
        author_agent=_text(row, "author_agent", MAX_AGENT_CHARS, param),
        created_ms=_int(row.get("created_ms"), f"{param}.created_ms", _MIN_MS, _MAX_MS),
        origin_pool=_pool_id(row.get("origin_pool"), f"{param}.origin_pool"),
        hlc=_hlc(row.get("hlc"), f"{param}.hlc"),
        deleted=_bool(row.get("deleted"), f"{param}.deleted"),
    )
    if version.deleted and (version.title or version.body or version.tags):
        raise InvalidFederationInput(f"{param} is a tombstone with content.", param=param)
    if not version.deleted and not version.body:
        raise InvalidFederationInput(f"{param}.body is empty.", param=f"{param}.body")
    clock.check(version.hlc)
    claimed = row.get("row_hash")
    if not isinstance(claimed, str) or _HEX_HASH.match(claimed) is None:
        raise InvalidFederationInput(f"{param}.row_hash must be 64 hex digits.")
    if claimed != version.row_hash().hex():
        raise InvalidFederationInput(
            f"{param}.row_hash does not match the row (this pool recomputes it).",
            code="row_hash_mismatch",
            param=f"{param}.row_hash",
        )
    return version


def _text(row: dict[str, Any], name: str, limit: int, param: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise InvalidFederationInput(
            f"{param}.{name} must be a string of at most {limit} characters.",
            param=f"{param}.{name}",
        )
    return value


def _uuid(value: object, param: str) -> UUID:
    try:
        if isinstance(value, str):
            return UUID(value)
    except ValueError:
        pass
    raise InvalidFederationInput(f"{param} must be a UUID.", param=param)


def _int(value: object, param: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidFederationInput(f"{param} must be an integer in [{low}, {high}].", param=param)
    return value


def _hlc(value: object, param: str) -> int:
    if not isinstance(value, str) or not value.isdigit() or len(value) > 19:
        raise InvalidFederationInput(f"{param} must be a decimal string.", param=param)
    return int(value)


def _bool(value: object, param: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidFederationInput(f"{param} must be true or false.", param=param)
    return value


def _pool_id(value: object, param: str) -> str:
    try:
        if isinstance(value, str) and parse_pool_id(value) == value:
            return value
    except InvalidFederationInput:
        pass
    raise InvalidFederationInput(f"{param} is not a pool id (lower case).", param=param)
