"""Signed receipts of forwarded chats: what the origin accepts and what it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from federation.receipts import Receipt, StreamDigest, read_receipt, sign_receipt
from tests.federation.conftest import new_identity


def _receipt(**changes: Any) -> Receipt:
    fields: dict[str, Any] = {
        "job": "0" * 32,
        "peer": "iam1peer",
        "to": "iam1origin",
        "model": "m",
        "prompt_tokens": 7,
        "completion_tokens": 5,
        "amount": 17,
        "digest": StreamDigest().hexdigest(),
    }
    return Receipt(**(fields | changes))


def test_a_receipt_signed_by_the_peer_reads_back_whole() -> None:
    peer = new_identity()
    receipt = _receipt()
    assert read_receipt(sign_receipt(peer, receipt), peer.public_key) == receipt


@pytest.mark.parametrize(
    "tamper",
    [
        {"amount": 1},
        {"to": "iam1someone-else"},
        {"digest": "0" * 64},
        {"amount": -1},
        {"amount": True},
        {"extra": 1},
        {"signature": "not base64 !"},
    ],
)
def test_a_tampered_or_malformed_receipt_is_refused(tamper: dict[str, Any]) -> None:
    peer = new_identity()
    signed = sign_receipt(peer, _receipt()) | tamper
    assert read_receipt(signed, peer.public_key) is None


def test_a_receipt_signed_by_another_pool_is_refused() -> None:
    signed = sign_receipt(new_identity(), _receipt())
    assert read_receipt(signed, new_identity().public_key) is None
    assert read_receipt(["not", "an", "object"], new_identity().public_key) is None


def test_the_stream_digest_covers_every_data_line_in_order() -> None:
    first, second = StreamDigest(), StreamDigest()
    for data in ("a", "b"):
        first.add(data)
    for data in ("b", "a"):
        second.add(data)
    assert first.hexdigest() != second.hexdigest()
