"""Received note versions: every field checked, the hash recomputed, only fed: rows accepted."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

from federation.errors import InvalidFederationInput
from federation.hlc import HybridClock, pack
from federation.note_rows import MAX_ROWS, Held, fed_namespaces, note_ids, parse_have, parse_rows
from federation.tictac import NoteVersion

NOW_MS = 1_796_299_491_000
POOL = "iam1" + "a" * 52


def clock() -> HybridClock:
    """A clock whose wall reads ``NOW_MS``."""
    return HybridClock(clock=lambda: NOW_MS)


def wire(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": UUID("01890a5d-ac96-774b-bcce-b302099a8057"),
        "namespace": "fed:team",
        "title": "t",
        "body": "b",
        "tags": ("a", "b"),
        "author_agent": "agent",
        "created_ms": NOW_MS,
        "origin_pool": POOL,
        "hlc": pack(NOW_MS),
        "deleted": False,
    } | changes
    return NoteVersion(**fields).as_wire()


def refused(rows: object, code: str = "invalid_federation_input") -> str:
    with pytest.raises(InvalidFederationInput) as caught:
        parse_rows(rows, clock())
    assert caught.value.code == code
    return caught.value.message


def test_a_well_formed_row_parses_back_to_the_same_version() -> None:
    [version] = parse_rows([wire()], clock())
    assert version.as_wire() == wire()
    tombstone = wire(title="", body="", tags=(), deleted=True)
    assert parse_rows([tombstone], clock())[0].deleted


def test_a_row_whose_content_changed_after_hashing_is_refused() -> None:
    assert "recomputes" in refused([wire() | {"body": "other"}], "row_hash_mismatch")
    assert "64 hex" in refused([wire() | {"row_hash": "00"}])


@pytest.mark.parametrize("namespace", ["user:0b9a6c2e-9a51-4c9b-9d7a-0c1e6d3f0a11", "pool:team"])
def test_private_and_pool_rows_never_cross(namespace: str) -> None:
    refused([wire(namespace=namespace)], "namespace_not_federated")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"tags": ["b", "a"]}, "sorted"),
        ({"tags": ["Not A Tag"]}, "valid tags"),
        ({"created_ms": 5}, "created_ms"),
        ({"origin_pool": POOL.upper()}, "lower case"),
        ({"deleted": "no"}, "true or false"),
        ({"hlc": 12}, "decimal string"),
        ({"id": "nope"}, "UUID"),
        ({"title": "x" * 201}, "title"),
    ],
)
def test_a_malformed_field_is_refused_by_name(change: dict[str, Any], words: str) -> None:
    assert words in refused([wire() | change])


def test_a_tombstone_with_content_an_empty_body_or_a_repeated_id_is_refused() -> None:
    assert "tombstone with content" in refused([wire(deleted=True)])
    assert "empty" in refused([wire(body="")])
    assert "twice" in refused([wire(), wire(body="other")])
    assert "at most" in refused([wire()] * (MAX_ROWS + 1))
    assert "list" in refused({"rows": []})


def test_an_hlc_too_far_ahead_is_refused() -> None:
    refused([wire(hlc=pack(NOW_MS + 61_000))], "hlc_in_future")


def test_namespace_and_id_lists_are_checked() -> None:
    assert fed_namespaces(["fed:b", "fed:a", "fed:a"]) == ["fed:a", "fed:b"]
    with pytest.raises(InvalidFederationInput):
        fed_namespaces(["user:me"])
    assert note_ids([str(UUID(int=1))], "held") == [UUID(int=1)]
    for bad in ([1], ["x"], "x"):
        with pytest.raises(InvalidFederationInput):
            note_ids(bad, "held")


def test_what_a_peer_holds_is_parsed_and_compared_by_the_conflict_rule() -> None:
    note = str(UUID(int=7))
    held = parse_have({note: ["ab" * 32, str(pack(NOW_MS)), POOL]}, 10)
    mine = held[UUID(int=7)]
    assert mine.as_wire() == ["ab" * 32, str(pack(NOW_MS)), POOL]
    later = Held("00" * 32, pack(NOW_MS) + 1, POOL)
    other_pool = Held("00" * 32, pack(NOW_MS), "iam1" + "b" * 52)
    assert later.beats(mine) and other_pool.beats(mine) and not mine.beats(later)
    assert Held("ff" * 32, mine.hlc, POOL).beats(mine)
    for bad in ({note: ["ab" * 32, "1"]}, {note: ["zz", "1", POOL]}, {"x": ["ab" * 32, "1", POOL]}):
        with pytest.raises(InvalidFederationInput):
            parse_have(bad, 10)
    with pytest.raises(InvalidFederationInput, match="at most 1"):
        parse_have({note: [], str(UUID(int=8)): []}, 1)
