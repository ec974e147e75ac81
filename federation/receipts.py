"""A serving pool's signed receipt for a forwarded chat: what it charges the origin pool, and why.

The serving pool ends a forwarded chat's stream with one ``iamine-receipt`` event: the job, both
pools, the usage it counted, the micro-credits it charged the origin's ``peer_pool`` account, and
the SHA-256 of every ``data`` line it streamed before (the stream itself is not covered by an
HTTP signature: its length is unknown when its headers go out). The receipt is signed with the
serving pool's Ed25519 key over its canonical JSON (sorted keys, no spaces), so the origin can
check that the answer it relayed is the one billed, and hold the peer to its charge.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from federation.identity import PoolIdentity

RECEIPT_EVENT = "iamine-receipt"
RECEIPT_FIELDS = frozenset(
    {"job", "peer", "to", "model", "prompt_tokens", "completion_tokens", "amount", "digest"}
)


class StreamDigest:
    """SHA-256 over a stream's ``data`` payloads, each followed by a newline, in order."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, data: str) -> None:
        """Count one ``data`` payload (the text after ``data: ``)."""
        self._hash.update(data.encode() + b"\n")

    def hexdigest(self) -> str:
        """The digest so far, as hex."""
        return self._hash.hexdigest()


@dataclass(frozen=True)
class Receipt:
    """What the serving pool ``peer`` charged the origin pool ``to`` for job ``job``."""

    job: str
    peer: str
    to: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    amount: int
    digest: str | None

    def body(self) -> dict[str, Any]:
        """The receipt's fields, as signed."""
        return {
            "job": self.job,
            "peer": self.peer,
            "to": self.to,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "amount": self.amount,
            "digest": self.digest,
        }


def _canonical(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign_receipt(identity: PoolIdentity, receipt: Receipt) -> dict[str, Any]:
    """The receipt with its signature, as the ``iamine-receipt`` event carries it."""
    signature = identity.private_key.sign(_canonical(receipt.body()))
    return {**receipt.body(), "signature": base64.urlsafe_b64encode(signature).decode()}


def read_receipt(data: Any, public_key: bytes) -> Receipt | None:
    """The receipt in an ``iamine-receipt`` event if ``public_key`` signed it; else ``None``."""
    if not isinstance(data, dict) or set(data) != RECEIPT_FIELDS | {"signature"}:
        return None
    body = {name: data[name] for name in RECEIPT_FIELDS}
    numbers = (body["prompt_tokens"], body["completion_tokens"], body["amount"])
    texts = (body["job"], body["peer"], body["to"], body["model"])
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        return None
    if not all(isinstance(t, str) for t in texts) or not isinstance(body["digest"], str | None):
        return None
    try:
        signature = base64.urlsafe_b64decode(str(data["signature"]))
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, _canonical(body))
    except (ValueError, InvalidSignature):
        return None
    return Receipt(**body)
