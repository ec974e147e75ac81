"""RFC 9421 signatures with an RFC 9530 digest: what verifies, and the code of each refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from federation.errors import SignatureRejected
from federation.identity import PoolIdentity
from federation.settings import FederationSettings, normalise_origin
from federation.signatures import (
    REQUEST_COMPONENTS,
    SignedRequest,
    SignedResponse,
    check_age,
    header_fields,
    sign_response,
    signature_params,
    verify_request,
    verify_response,
)
from tests.federation.conftest import new_identity, signed_request

URL = "https://pool.example:8443/v1/federation/hello"
BODY = b'{"hello": 1}'


def _received(request: SignedRequest, url: str = URL) -> SignedRequest:
    """The request as the receiving hub rebuilds it from the wire."""
    return SignedRequest(request.method, url, header_fields(request.headers.items()))


def _verify(request: SignedRequest, body: bytes, signer: PoolIdentity) -> str:
    return verify_request(
        _received(request), body, signer.pool_id, signer.public_key, max_age_s=300, skew_s=10
    )


def test_a_signed_request_verifies_and_names_its_authority() -> None:
    signer = new_identity()
    request = signed_request(signer, "POST", URL, BODY)
    assert _verify(request, BODY, signer) == "pool.example:8443"
    params = signature_params(header_fields(request.headers.items()))
    assert params.keyid == signer.pool_id and len(params.nonce) >= 8
    covered = request.headers["Signature-Input"]
    assert all(f'"{c}"' in covered for c in REQUEST_COMPONENTS) and 'alg="ed25519"' in covered


def test_a_changed_body_is_a_digest_mismatch() -> None:
    signer = new_identity()
    request = signed_request(signer, "POST", URL, BODY)
    with pytest.raises(SignatureRejected) as refused:
        _verify(request, b'{"hello": 2}', signer)
    assert refused.value.code == "digest_mismatch"


def test_another_key_or_a_changed_path_does_not_verify() -> None:
    signer = new_identity()
    request = signed_request(signer, "POST", URL, BODY)
    with pytest.raises(SignatureRejected) as refused:
        _verify(request, BODY, new_identity())
    assert refused.value.code == "signature_invalid"
    moved = _received(request, URL.replace("hello", "ping"))
    with pytest.raises(SignatureRejected):
        verify_request(moved, BODY, signer.pool_id, signer.public_key, max_age_s=300, skew_s=10)


def test_a_request_without_signature_or_with_a_malformed_one_is_refused() -> None:
    with pytest.raises(SignatureRejected) as missing:
        signature_params({})
    assert missing.value.code == "signature_missing"
    with pytest.raises(SignatureRejected) as other_label:
        signature_params({"signature-input": 'x=("@method");created=1', "signature": "x=:AA==:"})
    assert other_label.value.code == "signature_missing"
    for value in [
        'iamine=("@method");created=1',
        "iamine=((",
        'iamine=();keyid="k";nonce="short";created=1',
    ]:
        with pytest.raises(SignatureRejected) as bad:
            signature_params({"signature-input": value, "signature": "iamine=:AA==:"})
        assert bad.value.code == "signature_invalid"


def test_created_must_be_recent_and_not_ahead_of_the_clock() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    stamp = int(now.timestamp())
    check_age(stamp - 299, now, max_age_s=300, skew_s=10)
    check_age(stamp + 10, now, max_age_s=300, skew_s=10)
    with pytest.raises(SignatureRejected) as old:
        check_age(stamp - 301, now, max_age_s=300, skew_s=10)
    assert old.value.code == "signature_expired"
    with pytest.raises(SignatureRejected) as ahead:
        check_age(stamp + 11, now, max_age_s=300, skew_s=10)
    assert ahead.value.code == "signature_future"


def test_an_answer_verifies_only_for_the_request_it_answers() -> None:
    client, server = new_identity(), new_identity()
    first = signed_request(client, "POST", URL, BODY)
    second = signed_request(client, "POST", URL, BODY)
    answer = SignedResponse(200, {"content-type": "application/json"}, _received(first))
    sign_response(server, answer, b"{}", datetime.now(UTC))
    headers = header_fields(answer.headers.items())
    verify_response(
        SignedResponse(200, headers, first),
        b"{}",
        server.pool_id,
        server.public_key,
        max_age_s=300,
        skew_s=10,
    )
    for status, request, body in [(200, second, b"{}"), (201, first, b"{}"), (200, first, b"[]")]:
        with pytest.raises(SignatureRejected):
            verify_response(
                SignedResponse(status, headers, request),
                body,
                server.pool_id,
                server.public_key,
                max_age_s=300,
                skew_s=10,
            )


def test_an_old_answer_is_refused() -> None:
    client, server = new_identity(), new_identity()
    request = signed_request(client, "GET", URL)
    answer = SignedResponse(200, {}, _received(request))
    sign_response(server, answer, b"{}", datetime.now(UTC) - timedelta(seconds=400))
    with pytest.raises(SignatureRejected):
        verify_response(
            SignedResponse(200, header_fields(answer.headers.items()), request),
            b"{}",
            server.pool_id,
            server.public_key,
            max_age_s=300,
            skew_s=10,
        )


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Pool.Example/", "https://pool.example"),
        ("https://pool.example:443", "https://pool.example"),
        ("http://127.0.0.1:8420", "http://127.0.0.1:8420"),
        ("http://[::1]:80", "http://[::1]"),
    ],
)
def test_a_public_url_is_kept_as_its_origin(url: str, origin: str) -> None:
    assert normalise_origin(url) == origin


@pytest.mark.parametrize(
    "url", ["ftp://pool.example", "https://pool.example/hub", "https://u@pool.example", "pool"]
)
def test_a_public_url_with_a_path_or_another_scheme_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="pool"):
        normalise_origin(url)


def test_federation_on_needs_a_public_url() -> None:
    with pytest.raises(ValueError, match="public_url"):
        FederationSettings(enabled=True)
    assert not FederationSettings(public_url="https://pool.example").active
