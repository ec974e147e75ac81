"""The pool's identity: an Ed25519 key pair in the data directory, named by its fingerprint.

The pool id is ``iam1`` followed by the RFC 4648 base32 of sha256(raw 32-byte public key),
lower case, unpadded: 56 characters. The whole hash, not a truncation, because the id is what
admins compare out of band to admit a peer: matching ids mean matching keys. Base32 because it
survives every place an id goes (URLs, file names, SQL, a phone call: no case, no ``+/=``, no
``0/O`` or ``1/l`` pairs), and the ``iam1`` prefix says what the string is and leaves room for
another scheme later (``iam2``), as ``age1`` keys do.

The key file (``federation-key.pem``, PKCS#8) is created with mode 0600; a key that group or
others may read is refused rather than used: anyone who read it could speak for the pool.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.errors import IdentityError, InvalidFederationInput

KEY_FILE = "federation-key.pem"
POOL_ID_PREFIX = "iam1"
POOL_ID_PATTERN = re.compile(r"^iam1[a-z2-7]{52}$")


def pool_id_of(public_key: bytes) -> str:
    """The pool id (fingerprint) of a raw 32-byte Ed25519 public key."""
    digest = hashlib.sha256(public_key).digest()
    return POOL_ID_PREFIX + base64.b32encode(digest).decode().rstrip("=").lower()


def parse_pool_id(text: str) -> str:
    """A pool id as typed (spaces trimmed, any case), or :class:`InvalidFederationInput`."""
    pool_id = text.strip().lower()
    if not POOL_ID_PATTERN.match(pool_id):
        raise InvalidFederationInput(
            f"Not a pool id: {text!r} (iam1 followed by 52 base32 letters).", param="pool_id"
        )
    return pool_id


def encode_public_key(public_key: bytes) -> str:
    """A raw public key as unpadded base64url, its form in federation messages."""
    return base64.urlsafe_b64encode(public_key).decode().rstrip("=")


def decode_public_key(text: str) -> bytes:
    """The raw 32 bytes of a base64url public key, or :class:`InvalidFederationInput`."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise InvalidFederationInput(
            "The public key is not base64url.", param="public_key"
        ) from exc
    if len(raw) != 32:
        raise InvalidFederationInput("An Ed25519 public key has 32 bytes.", param="public_key")
    return raw


@dataclass(frozen=True)
class PoolIdentity:
    """This pool's key pair and the id derived from it."""

    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def pool_id(self) -> str:
        """The pool id: the fingerprint of the public key."""
        return pool_id_of(self.public_key)

    @property
    def public_key_text(self) -> str:
        """The public key as it travels in messages (base64url)."""
        return encode_public_key(self.public_key)


def key_file(data_dir: Path) -> Path:
    """Where the pool's private key lives."""
    return data_dir / KEY_FILE


def load_or_create_identity(data_dir: Path) -> PoolIdentity:
    """The pool's identity from the data directory, created (mode 0600) on first use."""
    path = key_file(data_dir)
    if not path.exists():
        _create(path)
    return load_identity(path)


def load_identity(path: Path) -> PoolIdentity:
    """Read a key file, refusing one that group or others may read or write."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                f"anyone who read it could speak for this pool. Fix: chmod 600 {path}, or "
                "replace the key if it may have leaked (the pool id changes)."
            )
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise IdentityError(f"Cannot read the pool key {path}: {exc.strerror}.") from exc
    except ValueError as exc:
        raise IdentityError(f"{path} is not a PEM private key.") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} holds a key that is not Ed25519.")
    return PoolIdentity(key)


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Written aside, then linked into place: a process starting at the same moment sees either
    # no key or the whole key, and the first link wins (both then load the same key).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
