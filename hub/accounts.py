"""Users and bearer tokens: issue, list, revoke, and find a token row by its public prefix.

A token looks like ``iam_<prefix>_<secret>``: 10 hex characters of public prefix (the lookup key,
safe to show in lists and logs) and 256 random bits of secret. Only the SHA-256 of the whole text
is stored; the text is shown once, when issued.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from hub.errors import ConflictError, InvalidRequestError, NotFoundError
from inference import identity

SCOPES = ("user", "worker", "admin")
TOKEN_PATTERN = re.compile(r"^iam_([0-9a-f]{10})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class User:
    """A pool member."""

    id: UUID
    name: str
    created_at: datetime
    disabled_at: datetime | None


@dataclass(frozen=True)
class TokenRecord:
    """What the database knows of a token (never its text)."""

    id: UUID
    prefix: str
    user_id: UUID | None
    user_name: str | None
    name: str
    scopes: tuple[str, ...]
    is_pool_admin: bool
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    user_disabled: bool
    hash: bytes
    parent_id: UUID | None = None
    worker_id: UUID | None = None


@dataclass(frozen=True)
class IssuedToken:
    """A freshly issued token: its text (shown once) and its record."""

    token: str
    record: TokenRecord


def hash_token(token: str) -> bytes:
    """SHA-256 of the token text, as stored."""
    return hashlib.sha256(token.encode()).digest()


def token_prefix(token: str) -> str | None:
    """Return the public prefix of a well-formed token, else None."""
    match = TOKEN_PATTERN.match(token)
    return match[1] if match else None


def new_token_text() -> str:
    """Generate a token: ``iam_`` + 10 hex prefix + ``_`` + 256-bit URL-safe secret."""
    return f"iam_{secrets.token_hex(5)}_{secrets.token_urlsafe(32)}"


_ROW_SQL = """
SELECT t.id, t.prefix, t.user_id, u.name AS user_name, t.name, t.scopes, t.is_pool_admin,
       t.created_at, t.expires_at, t.revoked_at, t.last_used_at, t.hash, t.parent_id,
       t.worker_id,
       (u.disabled_at IS NOT NULL) AS user_disabled
FROM tokens t LEFT JOIN users u ON u.id = t.user_id
"""


def _token_record(row: asyncpg.Record) -> TokenRecord:
    return TokenRecord(
        id=row["id"],
        prefix=row["prefix"],
        user_id=row["user_id"],
        user_name=row["user_name"],
        name=row["name"],
        scopes=tuple(row["scopes"]),
        is_pool_admin=row["is_pool_admin"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
        user_disabled=bool(row["user_disabled"]),
        hash=bytes(row["hash"]),
        parent_id=row["parent_id"],
        worker_id=row["worker_id"],
    )


def _user(row: asyncpg.Record) -> User:
    return User(row["id"], row["name"], row["created_at"], row["disabled_at"])


async def create_user(conn: asyncpg.Connection, name: str) -> User:
    """Create a user; names are unique."""
    try:
        row = await conn.fetchrow("INSERT INTO users (name) VALUES ($1) RETURNING *", name)
    except asyncpg.UniqueViolationError:
        raise ConflictError(f"A user named '{name}' already exists.", param="name") from None
    except asyncpg.CheckViolationError:
        raise InvalidRequestError(
            "User names are 1-64 characters of letters, digits and _ . @ -, starting with a "
            "letter or digit.",
            param="name",
        ) from None
    return _user(row)


async def get_user(conn: asyncpg.Connection, name: str) -> User:
    """Return the user with this name or raise NotFoundError."""
    row = await conn.fetchrow("SELECT * FROM users WHERE name = $1", name)
    if row is None:
        raise NotFoundError(f"No user named '{name}'.", param="user")
    return _user(row)


async def list_users(conn: asyncpg.Connection) -> list[User]:
    """All users, oldest first."""
    return [_user(r) for r in await conn.fetch("SELECT * FROM users ORDER BY created_at, name")]


async def disable_user(conn: asyncpg.Connection, name: str) -> User:
    """Disable a user: their tokens stop working (kept for the record)."""
    row = await conn.fetchrow(
        "UPDATE users SET disabled_at = coalesce(disabled_at, now()) WHERE name = $1 RETURNING *",
        name,
    )
    if row is None:
        raise NotFoundError(f"No user named '{name}'.", param="user")
    return _user(row)


def _check_scopes(scopes: tuple[str, ...], user_id: UUID | None) -> None:
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise InvalidRequestError(
            f"Scopes must be among {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}.",
            param="scopes",
        )
    if user_id is None and scopes != ("admin",):
        raise InvalidRequestError("Only admin tokens may have no user.", param="user")


async def create_token(
    conn: asyncpg.Connection,
    *,
    user_id: UUID | None,
    scopes: tuple[str, ...],
    name: str = "",
    expires_at: datetime | None = None,
    is_pool_admin: bool = False,
    parent_id: UUID | None = None,
    worker_id: UUID | None = None,
) -> IssuedToken:
    """Issue a token and return its text (to be shown once) with its record.

    A token minted from another (``parent_id``) never outlives it: the database caps its expiry
    at the parent's and revokes it with the parent (migration 007), so the returned record's
    ``expires_at`` may be earlier than asked.

    A ``worker``-scope token speaks for one worker record (migration 010): ``worker_id``, else
    its parent's, else a new record registered for the user (trust 0, a CPU worker of
    :data:`~inference.identity.DEFAULT_SLOTS` slots, named after the token or the user) that
    the owner or the admin may widen later.
    """
    _check_scopes(scopes, user_id)
    if "worker" not in scopes and worker_id is not None:
        raise InvalidRequestError(
            "Only a token with the worker scope names a worker.", param="worker"
        )
    async with conn.transaction():
        if "worker" in scopes and worker_id is None:
            assert user_id is not None  # _check_scopes: only admin tokens have no user
            worker_id = await _worker_for_token(conn, user_id, name, parent_id)
        return await _insert_token(
            conn, user_id, scopes, name, expires_at, is_pool_admin, parent_id, worker_id
        )


async def _insert_token(
    conn: asyncpg.Connection,
    user_id: UUID | None,
    scopes: tuple[str, ...],
    name: str,
    expires_at: datetime | None,
    is_pool_admin: bool,
    parent_id: UUID | None,
    worker_id: UUID | None,
) -> IssuedToken:
    token = new_token_text()
    prefix = token_prefix(token)
    row = await conn.fetchrow(
        "INSERT INTO tokens "
        "(user_id, prefix, hash, name, scopes, expires_at, is_pool_admin, parent_id, worker_id) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        user_id,
        prefix,
        hash_token(token),
        name,
        list(scopes),
        expires_at,
        is_pool_admin,
        parent_id,
        worker_id,
    )
    record = await get_token(conn, row["id"])
    return IssuedToken(token=token, record=record)


async def _worker_for_token(
    conn: asyncpg.Connection, user_id: UUID, token_name: str, parent_id: UUID | None
) -> UUID:
    if parent_id is not None:
        inherited: UUID | None = await conn.fetchval(
            "SELECT worker_id FROM tokens WHERE id = $1", parent_id
        )
        if inherited is not None:
            return inherited
    user_name = await conn.fetchval("SELECT name FROM users WHERE id = $1", user_id)
    wanted = token_name if identity.NAME_PATTERN.match(token_name) else f"{user_name}-worker"
    record = await identity.register_worker(
        conn, name=await identity.free_name(conn, wanted), owner_id=user_id
    )
    return record.id


async def get_token(conn: asyncpg.Connection, token_id: UUID) -> TokenRecord:
    """Return a token's record by id."""
    row = await conn.fetchrow(_ROW_SQL + " WHERE t.id = $1", token_id)
    if row is None:
        raise NotFoundError("No such token.", param="token")
    return _token_record(row)


async def find_token_by_prefix(conn: asyncpg.Connection, prefix: str) -> TokenRecord | None:
    """Return the token row with this public prefix, if any (the hash is checked by the caller)."""
    row = await conn.fetchrow(_ROW_SQL + " WHERE t.prefix = $1", prefix)
    return _token_record(row) if row else None


async def list_tokens(
    conn: asyncpg.Connection, *, user_id: UUID | None = None, include_revoked: bool = True
) -> list[TokenRecord]:
    """Tokens, newest first; only one user's when ``user_id`` is given."""
    clauses: list[str] = []
    args: list[Any] = []
    if user_id is not None:
        args.append(user_id)
        clauses.append(f"t.user_id = ${len(args)}")
    if not include_revoked:
        clauses.append("t.revoked_at IS NULL")
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = await conn.fetch(_ROW_SQL + where + " ORDER BY t.created_at DESC", *args)
    return [_token_record(r) for r in rows]


async def revoke_token(
    conn: asyncpg.Connection, prefix: str, *, user_id: UUID | None = None
) -> TokenRecord:
    """Revoke a token by prefix; with ``user_id``, only that user's token (others are 404).

    Tokens minted from it are revoked with it, transitively (a trigger, see migration 007).
    """
    row = await conn.fetchrow(
        "UPDATE tokens SET revoked_at = coalesce(revoked_at, now()) "
        "WHERE prefix = $1 AND ($2::uuid IS NULL OR user_id = $2) RETURNING id",
        prefix,
        user_id,
    )
    if row is None:
        raise NotFoundError(f"No token with prefix '{prefix}'.", param="prefix")
    return await get_token(conn, row["id"])


async def token_lineage(conn: asyncpg.Connection, token_id: UUID) -> list[UUID]:
    """The token and every token minted from it, transitively (revoked with it)."""
    rows = await conn.fetch(
        "WITH RECURSIVE tree AS ("
        " SELECT id FROM tokens WHERE id = $1"
        " UNION SELECT t.id FROM tokens t JOIN tree ON t.parent_id = tree.id"
        ") SELECT id FROM tree",
        token_id,
    )
    return [r["id"] for r in rows]


async def dead_tokens(conn: asyncpg.Connection, token_ids: Collection[UUID]) -> dict[UUID, str]:
    """Which of these tokens no longer work, each with the 401 code it would now get.

    A token that no longer exists (its user was deleted) reads as revoked.
    """
    if not token_ids:
        return {}
    rows = await conn.fetch(
        "SELECT t.id, CASE"
        " WHEN t.revoked_at IS NOT NULL THEN 'token_revoked'"
        " WHEN t.expires_at <= now() THEN 'token_expired'"
        " WHEN u.disabled_at IS NOT NULL THEN 'user_disabled' END AS dead "
        "FROM tokens t LEFT JOIN users u ON u.id = t.user_id WHERE t.id = ANY($1::uuid[])",
        list(token_ids),
    )
    found = {r["id"]: r["dead"] for r in rows}
    dead = {token_id: "token_revoked" for token_id in token_ids if token_id not in found}
    dead.update({token_id: reason for token_id, reason in found.items() if reason is not None})
    return dead


async def rotate_pool_admin_token(conn: asyncpg.Connection) -> IssuedToken:
    """Revoke the pool's admin token(s) and issue a new one, atomically."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE tokens SET revoked_at = now() WHERE is_pool_admin AND revoked_at IS NULL"
        )
        return await create_token(
            conn, user_id=None, scopes=("admin",), name="pool admin", is_pool_admin=True
        )


async def has_pool_admin_token(conn: asyncpg.Connection) -> bool:
    """True when the pool has a live admin token."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM tokens WHERE is_pool_admin AND revoked_at IS NULL)"
        )
    )


async def touch_tokens(conn: asyncpg.Connection, last_used: dict[UUID, datetime]) -> None:
    """Record last-used times for many tokens in one statement."""
    if not last_used:
        return
    ids, times = zip(*last_used.items(), strict=True)
    await conn.execute(
        "UPDATE tokens t SET last_used_at = greatest(t.last_used_at, v.used) "
        "FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, used) WHERE t.id = v.id",
        list(ids),
        list(times),
    )
