"""The pool key in the data directory: made once with mode 0600, refused when others may read it."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from federation.errors import IdentityError, InvalidFederationInput
from federation.identity import (
    decode_public_key,
    encode_public_key,
    key_file,
    load_or_create_identity,
    parse_pool_id,
    pool_id_of,
)


def test_the_key_is_created_on_first_use_with_mode_0600(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path / "data")
    path = key_file(tmp_path / "data")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert identity.pool_id == pool_id_of(identity.public_key)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_the_pool_id_stays_the_same_across_restarts(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path)
    again = load_or_create_identity(tmp_path)
    assert again.pool_id == first.pool_id and again.public_key == first.public_key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create_identity(tmp_path)
    key_file(tmp_path).chmod(mode)
    with pytest.raises(IdentityError, match="chmod 600") as refused:
        load_or_create_identity(tmp_path)
    assert refused.value.code == "pool_key_unusable"


def test_a_damaged_or_foreign_key_file_is_refused(tmp_path: Path) -> None:
    path = key_file(tmp_path)
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="not a PEM"):
        load_or_create_identity(tmp_path)
    ec_key = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(ec_key)
    with pytest.raises(IdentityError, match="not Ed25519"):
        load_or_create_identity(tmp_path)


def test_the_pool_id_is_iam1_and_the_base32_of_the_whole_key_hash(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path)
    digest = hashlib.sha256(identity.public_key).digest()
    expected = "iam1" + base64.b32encode(digest).decode().rstrip("=").lower()
    assert identity.pool_id == expected and len(identity.pool_id) == 56
    assert parse_pool_id(f"  {identity.pool_id.upper()} ") == identity.pool_id
    assert decode_public_key(encode_public_key(identity.public_key)) == identity.public_key


@pytest.mark.parametrize(
    "text", ["", "iam1", "iam2" + "a" * 52, "iam1" + "a" * 51, "iam1" + "1" * 52]
)
def test_a_malformed_pool_id_is_refused(text: str) -> None:
    with pytest.raises(InvalidFederationInput):
        parse_pool_id(text)


@pytest.mark.parametrize("text", ["!!!", "AAAA", encode_public_key(b"x" * 31)])
def test_a_malformed_public_key_is_refused(text: str) -> None:
    with pytest.raises(InvalidFederationInput):
        decode_public_key(text)
