"""Reconciling two pools' books of the chats between them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from economy.errors import InvalidLedgerInput
from economy.peering import PeerJob, parse_lines, reconcile

AT = datetime(2026, 1, 1, tzinfo=UTC)


def _lines(**amounts: int) -> list[PeerJob]:
    return [PeerJob(job, amount, AT) for job, amount in amounts.items()]


def test_the_same_chats_for_the_same_amounts_balance() -> None:
    result = reconcile(_lines(a=5, b=7), _lines(b=7, a=5))
    assert result.balanced
    assert (result.ours, result.theirs, result.jobs) == (12, 12, 2)


def test_missing_and_differing_chats_are_named() -> None:
    result = reconcile(_lines(a=5, b=7, c=1), _lines(a=5, b=8, d=2))
    assert not result.balanced
    assert (result.only_ours, result.only_theirs, result.differ) == (["c"], ["d"], ["b"])
    assert result.as_dict()["balanced"] is False


def test_a_statement_reads_back_and_a_malformed_one_is_refused() -> None:
    lines = _lines(a=5)
    assert parse_lines([line.as_dict() for line in lines]) == lines
    for bad in ({"job": "a"}, [{"job": "a", "amount": "x", "at": "now"}], [{"amount": 1}]):
        with pytest.raises(InvalidLedgerInput):
            parse_lines(bad)
