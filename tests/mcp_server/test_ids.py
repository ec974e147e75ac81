"""Ids from MCP clients are parsed into exactly one path segment, or refused."""

from __future__ import annotations

from uuid import UUID

import pytest

from mcp_server.backend import BackendError, check_path
from mcp_server.ids import (
    InvalidId,
    conversation_path,
    fact_path,
    note_path,
    parse_conversation_id,
    parse_namespace,
)

FACT = "0190b3c0-1234-7abc-8def-0123456789ab"


def test_a_uuid_in_any_spelling_becomes_its_canonical_segment() -> None:
    assert fact_path(FACT) == f"/v1/memory/facts/{FACT}"
    assert fact_path(FACT.upper().replace("-", "")) == f"/v1/memory/facts/{FACT}"
    assert note_path(UUID(FACT)) == f"/v1/memory/notes/{FACT}"


@pytest.mark.parametrize(
    "value", ["../../memory", f"{FACT}/../../memory", "", "%2e%2e", f"{FACT}?x=1", "x" * 10_000]
)
def test_a_fact_or_note_id_that_is_not_a_uuid_is_refused(value: str) -> None:
    with pytest.raises(InvalidId):
        fact_path(value)
    with pytest.raises(InvalidId):
        note_path(value)


def test_a_conversation_id_is_one_percent_encoded_segment() -> None:
    assert conversation_path("mcp-door") == "/v1/conversations/mcp-door"
    assert conversation_path("team:ops.v2") == "/v1/conversations/team%3Aops.v2"


@pytest.mark.parametrize(
    "value", [".", "..", "../x", "a/b", "a b", "a\\b", "a?b", "a#b", "a\r\nb", "%2e", "", "x" * 129]
)
def test_a_conversation_id_outside_the_pattern_or_a_dot_segment_is_refused(value: str) -> None:
    with pytest.raises(InvalidId):
        parse_conversation_id(value)


def test_a_namespace_must_be_user_me_or_a_shared_name() -> None:
    assert parse_namespace("user:me") == "user:me"
    assert parse_namespace("pool:team-notes") == "pool:team-notes"
    for bad in ("pool:..", "pool:../x", "user:you", "fed:", "x"):
        with pytest.raises(InvalidId):
            parse_namespace(bad)


@pytest.mark.parametrize(
    "path",
    ["/v1/memory/../memory", "/v1/memory/facts/.", "/v1/x?y=1", "/v1/x#y", "/v1/a\\b", "v1/x",
     "//evil.example/v1", "http://evil.example/v1/x", "/v1/memory/", "/v1/a\nb", "/v2/x"],
)  # fmt: skip
def test_the_backend_refuses_a_path_that_is_not_one_hub_resource(path: str) -> None:
    with pytest.raises(BackendError) as refused:
        check_path(path)
    assert refused.value.code == "invalid_id"
