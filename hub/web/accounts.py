"""Web accounts: sign-up by email and password, verification, password reset, mailed links.

A web account is a hub user (``users``) with a ``web_accounts`` row: the email and, for a password
account, its argon2id hash (argon2-cffi, RFC 9106 low-memory profile). Mailed links carry 256
random bits; only their SHA-256 is stored, with the purpose, the address and an expiry, and each
link works once.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.profiles import RFC_9106_LOW_MEMORY

from hub import accounts
from hub.errors import ConflictError, InvalidRequestError
from hub.web.session import hash_secret

EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.@-]")
_hasher = PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)

MailPurpose = Literal["verify", "reset"]


@dataclass(frozen=True)
class WebAccount:
    """A user's web sign-in."""

    user_id: UUID
    name: str
    email: str
    password_hash: str | None
    verified: bool
    disabled: bool


def check_email(email: str) -> str:
    """The address, trimmed, or InvalidRequestError when it does not look like one."""
    email = email.strip()
    if len(email) > 254 or not EMAIL_PATTERN.match(email):
        raise InvalidRequestError("Enter a valid email address.", param="email")
    return email


def check_password(password: str, min_length: int) -> None:
    """Refuse a new password that is too short (or absurdly long: argon2 would still hash it)."""
    if len(password) < min_length:
        raise InvalidRequestError("This password is too short.", param="password")
    if len(password) > 1024:
        raise InvalidRequestError("A password has at most 1024 characters.", param="password")


async def hash_password(password: str) -> str:
    """The argon2id hash (PHC string) of a password, computed off the event loop."""
    return await asyncio.to_thread(_hasher.hash, password)


async def password_matches(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches the stored hash (always False for an account without one)."""
    if password_hash is None:
        # Same work as a real check, so timing does not tell which accounts exist.
        await asyncio.to_thread(_hasher.hash, password)
        return False
    try:
        return await asyncio.to_thread(_hasher.verify, password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def name_from_email(email: str) -> str:
    """A user name derived from the address's local part (letters, digits and ``_ . @ -``)."""
    local = _NAME_CHARS.sub("", email.split("@")[0]).lstrip("_.@-")[:48]
    return local or "member"


async def free_user_name(conn: asyncpg.Connection, wanted: str) -> str:
    """``wanted``, or ``wanted-2``, ``wanted-3``… when taken."""
    taken = {
        r["name"]
        for r in await conn.fetch(
            "SELECT name FROM users WHERE name = $1 OR name LIKE $2", wanted, wanted + "-%"
        )
    }
    suffix = 1
    name = wanted
    while name in taken:
        suffix += 1
        name = f"{wanted}-{suffix}"
    return name


async def create_account(
    conn: asyncpg.Connection,
    *,
    email: str,
    password_hash: str | None,
    name: str | None = None,
    verified: bool = False,
) -> WebAccount:
    """Create a user and its web account; a taken email or name is a ConflictError."""
    async with conn.transaction():
        if await find_account(conn, email) is not None:
            raise ConflictError("An account with this email exists already.", param="email")
        chosen = name or await free_user_name(conn, name_from_email(email))
        user = await accounts.create_user(conn, chosen)
        try:
            await conn.execute(
                "INSERT INTO web_accounts (user_id, email, password_hash, email_verified_at) "
                "VALUES ($1, $2, $3, CASE WHEN $4 THEN now() END)",
                user.id,
                email,
                password_hash,
                verified,
            )
        except asyncpg.UniqueViolationError:
            raise ConflictError(
                "An account with this email exists already.", param="email"
            ) from None
    return WebAccount(user.id, user.name, email, password_hash, verified, False)


_ACCOUNT_SQL = """
SELECT a.user_id, u.name, a.email, a.password_hash, a.email_verified_at IS NOT NULL AS verified,
       u.disabled_at IS NOT NULL AS disabled
FROM web_accounts a JOIN users u ON u.id = a.user_id
"""


def _account(row: asyncpg.Record) -> WebAccount:
    return WebAccount(
        row["user_id"],
        row["name"],
        row["email"],
        row["password_hash"],
        row["verified"],
        row["disabled"],
    )


async def find_account(conn: asyncpg.Connection, email: str) -> WebAccount | None:
    """The account of an address (case-insensitive), if any."""
    row = await conn.fetchrow(_ACCOUNT_SQL + " WHERE lower(a.email) = lower($1)", email.strip())
    return _account(row) if row else None


async def get_account(conn: asyncpg.Connection, user_id: UUID) -> WebAccount | None:
    """The web account of a user, if they have one."""
    row = await conn.fetchrow(_ACCOUNT_SQL + " WHERE a.user_id = $1", user_id)
    return _account(row) if row else None


async def mark_verified(conn: asyncpg.Connection, user_id: UUID, email: str) -> bool:
    """Record that ``email`` is verified, if it is still the account's address."""
    done = await conn.fetchval(
        "UPDATE web_accounts SET email_verified_at = coalesce(email_verified_at, now()) "
        "WHERE user_id = $1 AND lower(email) = lower($2) RETURNING true",
        user_id,
        email,
    )
    return bool(done)


async def set_password_hash(conn: asyncpg.Connection, user_id: UUID, password_hash: str) -> None:
    """Replace the account's password hash."""
    await conn.execute(
        "UPDATE web_accounts SET password_hash = $2 WHERE user_id = $1", user_id, password_hash
    )


async def issue_mail_link(
    conn: asyncpg.Connection, user_id: UUID, purpose: MailPurpose, email: str, ttl_s: float
) -> str:
    """Store a one-time link secret for ``purpose`` and return it (it goes into the mail only)."""
    secret = secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO web_mail_tokens (hash, user_id, purpose, email, expires_at) "
        "VALUES ($1, $2, $3, $4, $5)",
        hash_secret(secret),
        user_id,
        purpose,
        email,
        datetime.now(UTC) + timedelta(seconds=ttl_s),
    )
    return secret


async def mailed_recently(
    conn: asyncpg.Connection, user_id: UUID, purpose: MailPurpose, within_s: float
) -> bool:
    """Whether a link for ``purpose`` went to this account in the last ``within_s`` seconds."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM web_mail_tokens WHERE user_id = $1 AND purpose = $2 "
            "AND created_at > $3)",
            user_id,
            purpose,
            datetime.now(UTC) - timedelta(seconds=within_s),
        )
    )


async def forget_mail_link(conn: asyncpg.Connection, secret: str) -> None:
    """Delete a link that was never mailed (the mail server refused it)."""
    await conn.execute("DELETE FROM web_mail_tokens WHERE hash = $1", hash_secret(secret))


async def use_mail_link(
    conn: asyncpg.Connection, secret: str, purpose: MailPurpose
) -> tuple[UUID, str] | None:
    """Spend a link: its user and address; None when unknown, used, expired or for another use."""
    row = await conn.fetchrow(
        "UPDATE web_mail_tokens SET used_at = now() WHERE hash = $1 AND purpose = $2 "
        "AND used_at IS NULL AND expires_at > now() RETURNING user_id, email",
        hash_secret(secret),
        purpose,
    )
    return (row["user_id"], row["email"]) if row else None
