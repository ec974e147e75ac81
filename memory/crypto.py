"""Envelope encryption for user memory: per-user data keys, wrapped once per API token.

The hierarchy is ``token -> HKDF-SHA256 -> wrapping key -> data key -> ciphertexts``:

- A user's **data key** is random. It encrypts their memory (L2 turns, L3 fact text) with Fernet.
  It may hold several *versions*: encryption uses the newest, decryption tries them all
  (:class:`cryptography.fernet.MultiFernet`), so a key can be rotated without re-encrypting first.
- The data key is stored only **wrapped**, once per token of the user. The wrapping key is
  ``HKDF-SHA256(token, salt, info)``. HKDF and not scrypt/Argon2: a token holds ~256 random bits,
  so brute force is already out of reach and a memory-hard KDF would only add latency to every
  request. A password would need scrypt, so :func:`wrap_data_key` refuses short secrets.
- Every wrap has its own random **salt**, so two wraps never share a wrapping key, and a leaked
  wrapping key opens exactly one wrap.
- The wrap is **AES-256-GCM** (an AEAD) with the wrap's metadata as associated data: a wrong token,
  a flipped bit or an edited ``key_version`` all fail authentication as :class:`KeyUnwrapError`,
  never as a garbage key that would then "decrypt" to garbage.

Nothing here touches the database or the environment; the hub stores :class:`KeyWrap` fields and
ciphertexts, and holds a :class:`DataKey` only for the duration of a request.
"""

from __future__ import annotations

import base64
import json
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KDF_HKDF_SHA256 = "hkdf-sha256"
WRAP_FORMAT_VERSION = 1
KEY_SET_FORMAT_VERSION = 1
WRAP_INFO = b"iamine/data-key-wrap/v1"

SALT_BYTES = 32  # HKDF's salt is best as long as the hash output (RFC 5869, section 3.1).
NONCE_BYTES = 12
FERNET_KEY_BYTES = 32  # Fernet: 16 bytes HMAC-SHA256 key + 16 bytes AES-128-CBC key.
MIN_TOKEN_CHARS = 32  # Below this a "token" is likely a password, which HKDF must not guard.

_KEY_SET_HEADER = struct.Struct(">BH")  # format version, number of versions
_KEY_SET_ENTRY = struct.Struct(f">I{FERNET_KEY_BYTES}s")  # version, raw key
_WRAP_HEADER = struct.Struct(">BI")  # wrap format version, newest key version


class CryptoError(Exception):
    """Base of the errors raised by memory encryption; ``code`` is machine-readable."""

    code = "crypto_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class KeyUnwrapError(CryptoError):
    """A wrap cannot be opened: wrong token, tampered wrap, or a malformed key set inside."""

    code = "key_unwrap_failed"


class UnsupportedWrapError(KeyUnwrapError):
    """A wrap names a KDF or format version this code does not know."""

    code = "key_wrap_unsupported"


class DecryptError(CryptoError):
    """A ciphertext is not valid under any version of the data key, or its plaintext is invalid."""

    code = "decrypt_failed"


class DataKey:
    """A user's data key: one or more versioned Fernet keys, newest first, held only in memory.

    Opaque on purpose: no accessor returns key bytes, ``repr`` shows only version numbers, and
    pickling is refused so a key cannot slip into a cache, a queue or a log by accident.
    """

    __slots__ = ("_fernet", "_keys")

    def __init__(self, keys: Sequence[tuple[int, bytes]]) -> None:
        """Build from ``(version, raw 32-byte key)`` pairs, newest (highest version) first."""
        if not keys:
            raise ValueError("a data key needs at least one version")
        versions = [version for version, _ in keys]
        if any(v < 1 for v in versions) or versions != sorted(set(versions), reverse=True):
            raise ValueError("key versions must be positive, unique and newest first")
        if any(len(raw) != FERNET_KEY_BYTES for _, raw in keys):
            raise ValueError(f"each key version must be {FERNET_KEY_BYTES} bytes")
        self._keys = tuple((version, bytes(raw)) for version, raw in keys)
        self._fernet = MultiFernet([Fernet(base64.urlsafe_b64encode(raw)) for _, raw in self._keys])

    @property
    def versions(self) -> tuple[int, ...]:
        """Key versions held, newest first."""
        return tuple(version for version, _ in self._keys)

    @property
    def current_version(self) -> int:
        """The version new ciphertexts are encrypted with."""
        return self._keys[0][0]

    def __repr__(self) -> str:
        return f"DataKey(versions={list(self.versions)})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a DataKey cannot be pickled; store a KeyWrap instead")


@dataclass(frozen=True, slots=True)
class KeyWrap:
    """A data key encrypted under one token; every field is safe to store in the database.

    ``wrapped`` is ``nonce || AES-GCM ciphertext+tag`` of the serialised key set. ``key_version``
    is the newest data-key version inside, so the hub can spot a wrap that predates a rotation.
    """

    salt: bytes
    wrapped: bytes
    key_version: int
    kdf: str = KDF_HKDF_SHA256
    format_version: int = WRAP_FORMAT_VERSION


def new_data_key() -> DataKey:
    """Generate a fresh random data key at version 1."""
    return DataKey([(1, secrets.token_bytes(FERNET_KEY_BYTES))])


def rotate_data_key(data_key: DataKey) -> DataKey:
    """Return the key with a new random newest version; older versions stay for decryption."""
    fresh = (data_key.current_version + 1, secrets.token_bytes(FERNET_KEY_BYTES))
    return DataKey([fresh, *data_key._keys])


def retire_versions_before(data_key: DataKey, version: int) -> DataKey:
    """Return the key without versions older than ``version``, once nothing needs them.

    Call only after every ciphertext was re-encrypted with :func:`reencrypt`; a ciphertext under a
    retired version is lost for good (which is the point when a version is suspected leaked).
    """
    kept = [(v, raw) for v, raw in data_key._keys if v >= version]
    if not kept:
        raise ValueError("retiring would leave no key version")
    return DataKey(kept)


def wrap_data_key(data_key: DataKey, token: str) -> KeyWrap:
    """Wrap the whole key set (every version) under a key derived from ``token``."""
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"a wrapping token must have at least {MIN_TOKEN_CHARS} characters")
    salt = secrets.token_bytes(SALT_BYTES)
    nonce = secrets.token_bytes(NONCE_BYTES)
    key_version = data_key.current_version
    sealed = AESGCM(_wrapping_key(token, salt)).encrypt(
        nonce, _pack_key_set(data_key), _associated_data(WRAP_FORMAT_VERSION, key_version)
    )
    return KeyWrap(salt=salt, wrapped=nonce + sealed, key_version=key_version)


def unwrap_data_key(wrap: KeyWrap, token: str) -> DataKey:
    """Open a wrap with ``token``; raise :class:`KeyUnwrapError` unless it is authentic."""
    if wrap.kdf != KDF_HKDF_SHA256 or wrap.format_version != WRAP_FORMAT_VERSION:
        raise UnsupportedWrapError(
            f"unsupported key wrap (kdf={wrap.kdf!r}, format={wrap.format_version})"
        )
    if len(wrap.salt) != SALT_BYTES or len(wrap.wrapped) <= NONCE_BYTES:
        raise KeyUnwrapError("the key wrap is malformed")
    nonce, sealed = wrap.wrapped[:NONCE_BYTES], wrap.wrapped[NONCE_BYTES:]
    try:
        packed = AESGCM(_wrapping_key(token, wrap.salt)).decrypt(
            nonce, sealed, _associated_data(wrap.format_version, wrap.key_version)
        )
    except InvalidTag:
        raise KeyUnwrapError("the token does not open this key wrap") from None
    data_key = _unpack_key_set(packed)
    if data_key.current_version != wrap.key_version:
        raise KeyUnwrapError("the key wrap's version does not match its contents")
    return data_key


def encrypt_text(data_key: DataKey, plaintext: str) -> bytes:
    """Encrypt text under the newest key version; the result is a Fernet token (ASCII bytes)."""
    return data_key._fernet.encrypt(plaintext.encode("utf-8"))


def decrypt_text(data_key: DataKey, ciphertext: bytes) -> str:
    """Decrypt a ciphertext made by :func:`encrypt_text` with any version of the key."""
    try:
        return _decrypt(data_key, ciphertext).decode("utf-8")
    except UnicodeDecodeError:
        raise DecryptError("the plaintext is not UTF-8 text") from None


def encrypt_json(data_key: DataKey, value: object) -> bytes:
    """Encrypt any JSON-serialisable value (compact JSON, UTF-8, NaN refused)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return encrypt_text(data_key, text)


def decrypt_json(data_key: DataKey, ciphertext: bytes) -> Any:
    """Decrypt a ciphertext made by :func:`encrypt_json` and parse it."""
    try:
        return json.loads(decrypt_text(data_key, ciphertext))
    except json.JSONDecodeError:
        raise DecryptError("the plaintext is not JSON") from None


def reencrypt(data_key: DataKey, ciphertext: bytes) -> bytes:
    """Re-encrypt a ciphertext under the newest key version (its timestamp is kept)."""
    try:
        return data_key._fernet.rotate(ciphertext)
    except InvalidToken:
        raise DecryptError("the ciphertext is not valid under this data key") from None


def _decrypt(data_key: DataKey, ciphertext: bytes) -> bytes:
    # No TTL: memory does not expire by age; Fernet's timestamp is only metadata here.
    try:
        return data_key._fernet.decrypt(ciphertext)
    except InvalidToken:
        raise DecryptError("the ciphertext is not valid under this data key") from None


def _wrapping_key(token: str, salt: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=WRAP_INFO)
    return hkdf.derive(token.encode("utf-8"))


def _associated_data(format_version: int, key_version: int) -> bytes:
    # Binding the metadata stops a database edit (say, a lowered key_version) going unnoticed.
    return WRAP_INFO + _WRAP_HEADER.pack(format_version, key_version) + KDF_HKDF_SHA256.encode()


def _pack_key_set(data_key: DataKey) -> bytes:
    """Serialise every version: ``format (1 B) | count (2 B) | (version (4 B) | key (32 B))*``."""
    header = _KEY_SET_HEADER.pack(KEY_SET_FORMAT_VERSION, len(data_key._keys))
    return header + b"".join(_KEY_SET_ENTRY.pack(v, raw) for v, raw in data_key._keys)


def _unpack_key_set(packed: bytes) -> DataKey:
    """Parse :func:`_pack_key_set` output, checking format, exact length and version order."""
    if len(packed) < _KEY_SET_HEADER.size:
        raise KeyUnwrapError("the wrapped key set is truncated")
    fmt, count = _KEY_SET_HEADER.unpack_from(packed)
    if fmt != KEY_SET_FORMAT_VERSION:
        raise UnsupportedWrapError(f"unsupported key set format {fmt}")
    if count < 1 or len(packed) != _KEY_SET_HEADER.size + count * _KEY_SET_ENTRY.size:
        raise KeyUnwrapError("the wrapped key set has the wrong length")
    entries = [
        _KEY_SET_ENTRY.unpack_from(packed, _KEY_SET_HEADER.size + i * _KEY_SET_ENTRY.size)
        for i in range(count)
    ]
    try:
        return DataKey([(int(version), bytes(raw)) for version, raw in entries])
    except ValueError as exc:
        raise KeyUnwrapError(f"the wrapped key set is invalid: {exc}") from None
