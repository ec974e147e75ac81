"""Sign-in rate limits: failed attempts counted per client address and per account, in SQL.

Counting in the database (``web_login_failures``) holds across hub processes and restarts. Only
failures count; a successful sign-in clears its account's failures (not its address's, so one
address cannot try many accounts by succeeding on its own now and then).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from hub.web.session import WebForbidden
from hub.web.settings import WebSettings

TOO_MANY = (
    "Too many failed sign-ins from here or on this account. Wait a while and try again, or "
    "reset your password."
)


async def check_login_allowed(
    conn: asyncpg.Connection, ip: str, account: str, settings: WebSettings
) -> None:
    """Refuse (429) when this address or this account failed too often within the window."""
    since = datetime.now(UTC) - timedelta(seconds=settings.login_window_s)
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE ip = $1) AS by_ip, "
        "count(*) FILTER (WHERE lower(email) = lower($2)) AS by_account "
        "FROM web_login_failures WHERE at > $3 AND (ip = $1 OR lower(email) = lower($2))",
        ip,
        account,
        since,
    )
    if (
        row["by_ip"] >= settings.login_max_failures_ip
        or row["by_account"] >= settings.login_max_failures_account
    ):
        raise WebForbidden(TOO_MANY, status_code=429)


async def record_login_failure(
    conn: asyncpg.Connection, ip: str, account: str, settings: WebSettings
) -> None:
    """Count one failed sign-in of ``account`` from ``ip``; drop that address's expired ones."""
    since = datetime.now(UTC) - timedelta(seconds=settings.login_window_s)
    async with conn.transaction():
        await conn.execute("DELETE FROM web_login_failures WHERE ip = $1 AND at <= $2", ip, since)
        await conn.execute(
            "INSERT INTO web_login_failures (ip, email) VALUES ($1, $2)", ip, account.strip()
        )


async def clear_login_failures(conn: asyncpg.Connection, account: str) -> None:
    """Forget an account's failures after it signed in."""
    await conn.execute(
        "DELETE FROM web_login_failures WHERE lower(email) = lower($1)", account.strip()
    )
