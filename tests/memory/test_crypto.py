"""Tests for memory/crypto.py: data keys, per-token wraps, rotation and ciphertexts."""

from __future__ import annotations

import dataclasses
import pickle
import secrets
from collections.abc import Callable

import pytest

from memory.crypto import (
    KDF_HKDF_SHA256,
    SALT_BYTES,
    CryptoError,
    DataKey,
    DecryptError,
    KeyUnwrapError,
    KeyWrap,
    UnsupportedWrapError,
    _pack_key_set,
    _unpack_key_set,
    decrypt_json,
    decrypt_text,
    encrypt_json,
    encrypt_text,
    new_data_key,
    reencrypt,
    retire_versions_before,
    rotate_data_key,
    unwrap_data_key,
    wrap_data_key,
)


def make_token() -> str:
    """A token shaped like the hub's: ``iam_`` + 10 hex + ``_`` + 256-bit URL-safe secret."""
    return f"iam_{secrets.token_hex(5)}_{secrets.token_urlsafe(32)}"


def flip_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def wrap_is_closed_to(wrap: KeyWrap, token: str) -> bool:
    try:
        unwrap_data_key(wrap, token)
    except KeyUnwrapError:
        return True
    return False


def oldest_version_only(key: DataKey) -> DataKey:
    """The version-1 key alone, via the private key-set format (no public accessor exists)."""
    packed = _pack_key_set(key)
    return _unpack_key_set(b"\x01\x00\x01" + packed[-36:])


def test_text_round_trips_through_encrypt_and_decrypt() -> None:
    key = new_data_key()
    assert decrypt_text(key, encrypt_text(key, "hello, memory")) == "hello, memory"


def test_unicode_text_round_trips_unchanged() -> None:
    key = new_data_key()
    text = "Zoë says 你好 — emoji 🧠🔐, RTL שלום, NUL \x00 and combining e\u0301"
    assert decrypt_text(key, encrypt_text(key, text)) == text


def test_large_text_round_trips() -> None:
    key = new_data_key()
    text = "a conversation turn. " * 200_000  # ~4 MB
    assert decrypt_text(key, encrypt_text(key, text)) == text


def test_empty_text_round_trips() -> None:
    key = new_data_key()
    assert decrypt_text(key, encrypt_text(key, "")) == ""


def test_json_values_round_trip() -> None:
    key = new_data_key()
    value = {"role": "user", "content": "héllo", "n": [1, 2.5, None, True], "meta": {}}
    assert decrypt_json(key, encrypt_json(key, value)) == value


def test_encrypt_json_refuses_nan() -> None:
    with pytest.raises(ValueError, match="JSON"):
        encrypt_json(new_data_key(), {"x": float("nan")})


def test_decrypt_json_of_non_json_plaintext_raises_decrypt_error() -> None:
    key = new_data_key()
    with pytest.raises(DecryptError):
        decrypt_json(key, encrypt_text(key, "not json {"))


def test_same_plaintext_encrypts_to_different_ciphertexts() -> None:
    key = new_data_key()
    assert encrypt_text(key, "same") != encrypt_text(key, "same")


def test_ciphertext_does_not_contain_the_plaintext() -> None:
    key = new_data_key()
    assert b"secret diary" not in encrypt_text(key, "my secret diary")


def test_wrap_round_trips_to_a_key_that_decrypts_earlier_ciphertexts() -> None:
    key, token = new_data_key(), make_token()
    ciphertext = encrypt_text(key, "remember me")
    unwrapped = unwrap_data_key(wrap_data_key(key, token), token)
    assert decrypt_text(unwrapped, ciphertext) == "remember me"
    assert unwrapped.versions == key.versions


def test_wrong_token_cannot_unwrap() -> None:
    wrap = wrap_data_key(new_data_key(), make_token())
    with pytest.raises(KeyUnwrapError) as excinfo:
        unwrap_data_key(wrap, make_token())
    assert excinfo.value.code == "key_unwrap_failed"
    assert isinstance(excinfo.value, CryptoError)


def test_token_differing_in_one_character_cannot_unwrap() -> None:
    token = make_token()
    wrap = wrap_data_key(new_data_key(), token)
    near = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(KeyUnwrapError):
        unwrap_data_key(wrap, near)


def test_short_secret_is_refused_as_a_wrapping_token() -> None:
    with pytest.raises(ValueError, match="at least"):
        wrap_data_key(new_data_key(), "hunter2")


@pytest.mark.parametrize("index", [0, 11, 12, 20, -1])
def test_tampered_wrapped_bytes_are_detected(index: int) -> None:
    token = make_token()
    wrap = wrap_data_key(new_data_key(), token)
    tampered = dataclasses.replace(wrap, wrapped=flip_byte(wrap.wrapped, index))
    with pytest.raises(KeyUnwrapError):
        unwrap_data_key(tampered, token)


def test_tampered_salt_is_detected() -> None:
    token = make_token()
    wrap = wrap_data_key(new_data_key(), token)
    with pytest.raises(KeyUnwrapError):
        unwrap_data_key(dataclasses.replace(wrap, salt=flip_byte(wrap.salt, 0)), token)


def test_edited_key_version_in_a_wrap_is_detected() -> None:
    token = make_token()
    wrap = wrap_data_key(rotate_data_key(new_data_key()), token)
    with pytest.raises(KeyUnwrapError):
        unwrap_data_key(dataclasses.replace(wrap, key_version=1), token)


def test_truncated_wrap_is_rejected() -> None:
    token = make_token()
    wrap = wrap_data_key(new_data_key(), token)
    for wrapped in (b"", wrap.wrapped[:12], wrap.wrapped[:-1]):
        with pytest.raises(KeyUnwrapError):
            unwrap_data_key(dataclasses.replace(wrap, wrapped=wrapped), token)
    with pytest.raises(KeyUnwrapError):
        unwrap_data_key(dataclasses.replace(wrap, salt=wrap.salt[:16]), token)


def test_unknown_kdf_or_format_is_reported_as_unsupported() -> None:
    token = make_token()
    wrap = wrap_data_key(new_data_key(), token)
    for odd in (
        dataclasses.replace(wrap, kdf="scrypt"),
        dataclasses.replace(wrap, format_version=2),
    ):
        with pytest.raises(UnsupportedWrapError) as excinfo:
            unwrap_data_key(odd, token)
        assert excinfo.value.code == "key_wrap_unsupported"


def test_wrap_records_kdf_and_newest_key_version() -> None:
    wrap = wrap_data_key(rotate_data_key(new_data_key()), make_token())
    assert wrap.kdf == KDF_HKDF_SHA256 == "hkdf-sha256"
    assert wrap.key_version == 2
    assert len(wrap.salt) == SALT_BYTES


def test_wrap_does_not_contain_raw_key_bytes() -> None:
    key = new_data_key()
    raw = _pack_key_set(key)[-32:]
    wrap = wrap_data_key(key, make_token())
    assert raw not in wrap.wrapped
    assert raw not in wrap.salt


def test_salts_differ_per_wrap_even_for_the_same_key_and_token() -> None:
    key, token = new_data_key(), make_token()
    first, second = wrap_data_key(key, token), wrap_data_key(key, token)
    assert first.salt != second.salt
    assert first.wrapped != second.wrapped


def test_two_tokens_make_two_wraps_that_open_to_the_same_key() -> None:
    key = new_data_key()
    token_a, token_b = make_token(), make_token()
    wrap_a, wrap_b = wrap_data_key(key, token_a), wrap_data_key(key, token_b)
    assert wrap_a.wrapped != wrap_b.wrapped
    key_a, key_b = unwrap_data_key(wrap_a, token_a), unwrap_data_key(wrap_b, token_b)
    from_a, from_b = encrypt_text(key_a, "written via A"), encrypt_text(key_b, "written via B")
    assert decrypt_text(key_b, from_a) == "written via A"
    assert decrypt_text(key_a, from_b) == "written via B"


def test_a_token_cannot_open_another_tokens_wrap() -> None:
    key = new_data_key()
    token_a, token_b = make_token(), make_token()
    with pytest.raises(KeyUnwrapError):
        unwrap_data_key(wrap_data_key(key, token_a), token_b)


def test_deleting_one_wrap_leaves_the_other_token_working() -> None:
    key = new_data_key()
    token_a, token_b = make_token(), make_token()
    ciphertext = encrypt_text(key, "kept")
    stored: dict[str, KeyWrap] = {
        "a": wrap_data_key(key, token_a),
        "b": wrap_data_key(key, token_b),
    }
    del stored["a"]  # what revoking token A does in the database
    assert decrypt_text(unwrap_data_key(stored["b"], token_b), ciphertext) == "kept"
    assert all(wrap_is_closed_to(wrap, token_a) for wrap in stored.values())


def test_another_users_key_cannot_decrypt_a_ciphertext() -> None:
    ciphertext = encrypt_text(new_data_key(), "private")
    with pytest.raises(DecryptError) as excinfo:
        decrypt_text(new_data_key(), ciphertext)
    assert excinfo.value.code == "decrypt_failed"


@pytest.mark.parametrize("index", [0, 9, 30, -1])
def test_tampered_ciphertext_is_detected(index: int) -> None:
    key = new_data_key()
    ciphertext = encrypt_text(key, "do not touch")
    with pytest.raises(DecryptError):
        decrypt_text(key, flip_byte(ciphertext, index))


def test_garbage_ciphertext_raises_decrypt_error() -> None:
    key = new_data_key()
    for garbage in (b"", b"not a fernet token", "ünïcode".encode()):
        with pytest.raises(DecryptError):
            decrypt_text(key, garbage)


def test_rotation_adds_a_newest_version_and_keeps_the_old_ones() -> None:
    key = new_data_key()
    rotated = rotate_data_key(rotate_data_key(key))
    assert key.versions == (1,)
    assert rotated.versions == (3, 2, 1)
    assert rotated.current_version == 3


def test_old_ciphertexts_still_decrypt_after_rotation() -> None:
    key = new_data_key()
    old = encrypt_text(key, "before rotation")
    assert decrypt_text(rotate_data_key(key), old) == "before rotation"


def test_new_ciphertexts_use_the_newest_version_after_rotation() -> None:
    rotated = rotate_data_key(new_data_key())
    new = encrypt_text(rotated, "after rotation")
    only_newest = retire_versions_before(rotated, 2)
    assert decrypt_text(only_newest, new) == "after rotation"
    with pytest.raises(DecryptError):
        decrypt_text(oldest_version_only(rotated), new)


def test_reencrypt_moves_an_old_ciphertext_to_the_newest_version() -> None:
    key = new_data_key()
    old = encrypt_text(key, "migrate me")
    rotated = rotate_data_key(key)
    moved = reencrypt(rotated, old)
    assert decrypt_text(retire_versions_before(rotated, 2), moved) == "migrate me"
    with pytest.raises(DecryptError):
        decrypt_text(key, moved)


def test_reencrypt_of_a_foreign_ciphertext_raises_decrypt_error() -> None:
    with pytest.raises(DecryptError):
        reencrypt(new_data_key(), encrypt_text(new_data_key(), "foreign"))


def test_retired_versions_no_longer_decrypt() -> None:
    key = new_data_key()
    old = encrypt_text(key, "shredded")
    retired = retire_versions_before(rotate_data_key(key), 2)
    assert retired.versions == (2,)
    with pytest.raises(DecryptError):
        decrypt_text(retired, old)


def test_retiring_every_version_is_refused() -> None:
    with pytest.raises(ValueError, match="no key version"):
        retire_versions_before(new_data_key(), 2)


def test_a_wrap_carries_every_key_version() -> None:
    key = new_data_key()
    old = encrypt_text(key, "v1 text")
    rotated = rotate_data_key(key)
    new = encrypt_text(rotated, "v2 text")
    token = make_token()
    unwrapped = unwrap_data_key(wrap_data_key(rotated, token), token)
    assert unwrapped.versions == (2, 1)
    assert decrypt_text(unwrapped, old) == "v1 text"
    assert decrypt_text(unwrapped, new) == "v2 text"


def test_a_wrap_made_before_rotation_cannot_read_new_ciphertexts() -> None:
    key, token = new_data_key(), make_token()
    stale_wrap = wrap_data_key(key, token)
    new = encrypt_text(rotate_data_key(key), "after rotation")
    stale_key = unwrap_data_key(stale_wrap, token)
    assert stale_wrap.key_version == 1
    with pytest.raises(DecryptError):
        decrypt_text(stale_key, new)


def test_repr_shows_versions_but_no_key_material() -> None:
    key = rotate_data_key(new_data_key())
    packed = _pack_key_set(key)
    raw_keys = [packed[3 + 4 : 3 + 36], packed[3 + 36 + 4 :]]
    text = repr(key) + str(key) + f"{key}"
    assert text.startswith("DataKey(versions=[2, 1])")
    for raw in raw_keys:
        assert raw.hex() not in text
        assert raw.hex() not in text.lower()
        assert repr(raw) not in text


def test_data_key_cannot_be_pickled() -> None:
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(new_data_key())


def test_key_set_serialisation_round_trips_every_version() -> None:
    key = rotate_data_key(rotate_data_key(new_data_key()))
    packed = _pack_key_set(key)
    assert packed[0] == 1  # format version
    assert len(packed) == 3 + 3 * 36
    assert _unpack_key_set(packed).versions == (3, 2, 1)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p: p[:-1],  # truncated
        lambda p: p + b"\x00",  # trailing bytes
        lambda p: p[:2],  # shorter than the header
        lambda p: b"\x01\x00\x00",  # zero versions
        lambda p: b"\x01\x00\x03" + p[3:],  # count claims more than present
        lambda p: p[:3] + b"\x00\x00\x00\x00" + p[7:],  # version 0
        lambda p: p[:3] + p[3 + 36 :] + p[3 : 3 + 36],  # oldest first
    ],
)
def test_malformed_key_sets_are_rejected(mangle: Callable[[bytes], bytes]) -> None:
    key = rotate_data_key(new_data_key())
    packed = _pack_key_set(key)
    with pytest.raises(KeyUnwrapError):
        _unpack_key_set(mangle(packed))


def test_unknown_key_set_format_is_reported_as_unsupported() -> None:
    packed = _pack_key_set(new_data_key())
    with pytest.raises(UnsupportedWrapError):
        _unpack_key_set(b"\x02" + packed[1:])


def test_data_key_constructor_rejects_bad_material() -> None:
    raw = secrets.token_bytes(32)
    for keys in ([], [(1, raw[:16])], [(1, raw), (2, raw)], [(2, raw), (2, raw)], [(0, raw)]):
        with pytest.raises(ValueError, match=r"key|version"):
            DataKey(keys)
