"""The pool's admin token: issued at first start, kept for the operator in the data directory.

The database holds only its hash, like any token. The file ``<data_dir>/admin-token`` (mode 0600)
is the operator's copy so ``iamine admin-token show`` can print it again; ``rotate`` revokes the
old one and rewrites the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg

from hub.accounts import (
    IssuedToken,
    find_token_by_prefix,
    has_pool_admin_token,
    hash_token,
    rotate_pool_admin_token,
    token_prefix,
)

FILE_NAME = "admin-token"


def token_file(data_dir: Path) -> Path:
    """Where the operator's copy of the admin token lives."""
    return data_dir / FILE_NAME


def write_token_file(data_dir: Path, token: str) -> Path:
    """Write the token to its file with mode 0600, replacing any previous one atomically."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = token_file(data_dir)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.replace(tmp, path)
    return path


def read_token_file(data_dir: Path) -> str | None:
    """Return the token saved in the data directory, if any."""
    path = token_file(data_dir)
    return path.read_text().strip() if path.exists() else None


async def ensure_admin_token(conn: asyncpg.Connection, data_dir: Path) -> IssuedToken | None:
    """Issue the pool admin token if there is no live one; return it when issued."""
    if await has_pool_admin_token(conn):
        return None
    issued = await rotate_pool_admin_token(conn)
    write_token_file(data_dir, issued.token)
    return issued


async def rotate_admin_token(conn: asyncpg.Connection, data_dir: Path) -> IssuedToken:
    """Revoke the current admin token, issue a new one and save it for the operator."""
    issued = await rotate_pool_admin_token(conn)
    write_token_file(data_dir, issued.token)
    return issued


async def saved_token_is_live(conn: asyncpg.Connection, token: str) -> bool:
    """True when the saved token is this pool's current, unrevoked admin token."""
    prefix = token_prefix(token)
    if prefix is None:
        return False
    record = await find_token_by_prefix(conn, prefix)
    return (
        record is not None
        and record.is_pool_admin
        and record.revoked_at is None
        and record.hash == hash_token(token)
    )
