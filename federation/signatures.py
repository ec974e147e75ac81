"""RFC 9421 HTTP Message Signatures (Ed25519) with an RFC 9530 content digest, both ways.

A request to a pool is signed over ``@method``, ``@authority``, ``@path``, ``@query`` and
``content-digest`` (sha-256 of the body, empty bodies included), with ``created``, ``nonce``,
``keyid`` (the sender's pool id), ``alg`` (``ed25519``) and ``tag`` (``iamine-federation``), under
the label ``iamine``. An answer is signed over ``@status``, its own ``content-digest`` and the
request's authority, path and signature (``"signature";req;key="iamine"``): it answers that one
request, so an old answer cannot be replayed for a new request.

Parsing, digests and the signature base are the ``http-message-signatures`` package's; this
module adds the policy: which components, which key, and distinct error codes for each check.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import http_sf
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_message_signatures import (
    ContentDigest,
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    MappingKeyResolver,
    VerifyResult,
    algorithms,
)

from federation.errors import SignatureRejected
from federation.identity import PoolIdentity

LABEL = "iamine"
TAG = "iamine-federation"
REQUEST_COMPONENTS = ("@method", "@authority", "@path", "@query", "content-digest")
RESPONSE_COMPONENTS = (
    "@status",
    "content-digest",
    '"@authority";req',
    '"@path";req',
    f'"signature";req;key="{LABEL}"',
)


@dataclass
class SignedRequest:
    """A request as the signature library sees it: method, absolute URL and header fields."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class SignedResponse:
    """An answer with the request it answers (its signature covers parts of that request)."""

    status_code: int
    headers: dict[str, str]
    request: SignedRequest


@dataclass(frozen=True)
class SignatureParams:
    """The signed metadata of a request, read before the signature is checked."""

    keyid: str
    created: int
    nonce: str


def header_fields(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header fields by lower-case name, repeated lines joined as HTTP combines them."""
    fields: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        fields[key] = f"{fields[key]}, {value}" if key in fields else value
    return fields


def _signer(identity: PoolIdentity) -> HTTPMessageSigner:
    keys = MappingKeyResolver(public_keys={}, private_keys={identity.pool_id: identity.private_key})
    return HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=keys)


def _verifier(keyid: str, public_key: bytes, skew_s: float) -> HTTPMessageVerifier:
    key = Ed25519PublicKey.from_public_bytes(public_key)
    keys = MappingKeyResolver(public_keys={keyid: key}, private_keys={})
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=keys)
    verifier.max_clock_skew = timedelta(seconds=skew_s)
    return verifier


def sign_request(
    identity: PoolIdentity,
    request: SignedRequest,
    body: bytes,
    *,
    now: datetime,
    nonce: str | None = None,
) -> None:
    """Add ``Content-Digest``, ``Signature-Input`` and ``Signature`` to ``request`` in place."""
    _signer(identity).sign(
        request,
        key_id=identity.pool_id,
        created=now,
        nonce=nonce or secrets.token_urlsafe(18),
        label=LABEL,
        tag=TAG,
        covered_component_ids=REQUEST_COMPONENTS,
        body=body,
    )


def sign_response(
    identity: PoolIdentity, response: SignedResponse, body: bytes, now: datetime
) -> None:
    """Sign an answer in place, bound to the (signed) request it answers."""
    _signer(identity).sign(
        response,
        key_id=identity.pool_id,
        created=now,
        label=LABEL,
        tag=TAG,
        covered_component_ids=RESPONSE_COMPONENTS,
        body=body,
    )


def signature_params(headers: Mapping[str, str]) -> SignatureParams:
    """Read the ``iamine`` signature's keyid, created and nonce, unverified.

    Raises :class:`SignatureRejected` (``signature_missing`` or ``signature_invalid``).
    """
    value = headers.get("signature-input")
    if value is None or "signature" not in headers:
        raise SignatureRejected(
            "The request carries no HTTP message signature.", code="signature_missing"
        )
    try:
        parsed = http_sf.parse(value.encode("latin-1"), tltype="dictionary")
    except (ValueError, TypeError, UnicodeEncodeError):
        raise SignatureRejected("Signature-Input is malformed.") from None
    member = parsed.get(LABEL) if isinstance(parsed, dict) else None
    if not isinstance(member, tuple) or not isinstance(member[1], dict):
        raise SignatureRejected(
            f"No signature labelled {LABEL!r} in the request.", code="signature_missing"
        )
    params = member[1]
    keyid, created, nonce = params.get("keyid"), params.get("created"), params.get("nonce")
    if not isinstance(keyid, str) or type(created) is not int or not isinstance(nonce, str):
        raise SignatureRejected("The signature needs keyid, created and nonce parameters.")
    if not 8 <= len(nonce) <= 128:
        raise SignatureRejected("The signature's nonce must have 8 to 128 characters.")
    return SignatureParams(keyid, created, nonce)


def check_age(created: int, now: datetime, *, max_age_s: float, skew_s: float) -> None:
    """Refuse a ``created`` time older than ``max_age_s`` or further ahead than ``skew_s``."""
    moment = datetime.fromtimestamp(created, UTC)
    if moment < now - timedelta(seconds=max_age_s):
        raise SignatureRejected(
            f"The signature was created more than {max_age_s:g} s ago.", code="signature_expired"
        )
    if moment > now + timedelta(seconds=skew_s):
        raise SignatureRejected(
            "The signature was created in the future (check this host's clock).",
            code="signature_future",
        )


def _check_digest(headers: Mapping[str, str], body: bytes) -> None:
    digest = headers.get("content-digest")
    if digest is None:
        raise SignatureRejected("The message carries no Content-Digest.")
    try:
        ContentDigest.verify(digest, body)
    except HTTPMessageSignaturesException:
        raise SignatureRejected(
            "Content-Digest does not match the body.", code="digest_mismatch"
        ) from None


def _verify(
    verifier: HTTPMessageVerifier,
    message: SignedRequest | SignedResponse,
    body: bytes,
    components: tuple[str, ...],
    max_age_s: float,
) -> VerifyResult:
    _check_digest(message.headers, body)
    try:
        results = verifier.verify(
            message,
            max_age=timedelta(seconds=max_age_s),
            expect_tag=TAG,
            require_components=components,
            body=body,
        )
    except HTTPMessageSignaturesException as exc:
        raise SignatureRejected(f"The signature does not verify: {exc}.") from None
    return results[0]


def verify_request(
    request: SignedRequest,
    body: bytes,
    keyid: str,
    public_key: bytes,
    *,
    max_age_s: float,
    skew_s: float,
) -> str:
    """Verify a request's signature and digest under ``public_key``; return its ``@authority``."""
    verifier = _verifier(keyid, public_key, skew_s)
    result = _verify(verifier, request, body, REQUEST_COMPONENTS, max_age_s)
    return result.covered_components['"@authority"']


def verify_response(
    response: SignedResponse,
    body: bytes,
    keyid: str,
    public_key: bytes,
    *,
    max_age_s: float,
    skew_s: float,
) -> None:
    """Verify an answer's signature and digest under the peer's key; raise if it fails."""
    _verify(_verifier(keyid, public_key, skew_s), response, body, RESPONSE_COMPONENTS, max_age_s)
