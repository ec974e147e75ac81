"""The admin's database cleanup (``/admin/cleanup``): see what each purge would delete, then do it.

Each task counts what it would delete now (the page shows the counts), and deletes only after
the admin confirms that one task (a second step shows the count again). What goes:

- ``l1``: expired L1 messages (what the ``l1_purge`` job deletes: ``purge_expired_l1``);
- ``sessions``: expired browser sessions, expired OIDC sign-ins under way, mail links expired or
  used;
- ``tokens``: API tokens that can never work again (revoked, or expired): their rows, and with
  them their memory-key wraps (already useless) and the tokens minted from them (dead too);
- ``tombstones``: deleted shared notes of this pool's ``pool:`` namespaces (``fed:`` ones the
  federation collects once every live peer holds them) older than the tombstone minimum age
  (``IAMINE_FEDERATION__NOTES__TOMBSTONE_MIN_AGE_S``).

Each task is given the moment before which its rows may go: now, or now less a minimum age.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Form, Path, Request
from starlette.responses import HTMLResponse, Response

from hub.config import Settings
from hub.web.session import CsrfChecked, WebAdminDep, WebForbidden, hub_state
from hub.web.templating import render
from memory.l1 import purge_expired_l1

router = APIRouter()

Count = Callable[[asyncpg.Connection, datetime], Awaitable[int]]


@dataclass(frozen=True)
class Task:
    """One purge: what it deletes (``label``), how many rows now, and the deletion."""

    name: str
    label: str
    count: Count
    purge: Count
    min_age_s: Callable[[Settings], float] = lambda _: 0.0


async def _count(conn: asyncpg.Connection, sql: str, now: datetime) -> int:
    return int(await conn.fetchval(sql, now))


_DEAD_SESSIONS = [  # (count, delete) per table
    (
        "SELECT count(*) FROM web_sessions WHERE expires_at <= $1",
        "WITH d AS (DELETE FROM web_sessions WHERE expires_at <= $1 RETURNING 1) "
        "SELECT count(*) FROM d",
    ),
    (
        "SELECT count(*) FROM oidc_flows WHERE expires_at <= $1",
        "WITH d AS (DELETE FROM oidc_flows WHERE expires_at <= $1 RETURNING 1) "
        "SELECT count(*) FROM d",
    ),
    (
        "SELECT count(*) FROM web_mail_tokens WHERE expires_at <= $1 OR used_at IS NOT NULL",
        "WITH d AS (DELETE FROM web_mail_tokens WHERE expires_at <= $1 OR used_at IS NOT NULL "
        "RETURNING 1) SELECT count(*) FROM d",
    ),
]


async def _count_l1(conn: asyncpg.Connection, now: datetime) -> int:
    return await _count(conn, "SELECT count(*) FROM l1_messages WHERE expires_at <= $1", now)


async def _count_sessions(conn: asyncpg.Connection, now: datetime) -> int:
    return sum([await _count(conn, sql, now) for sql, _ in _DEAD_SESSIONS])


async def _purge_sessions(conn: asyncpg.Connection, now: datetime) -> int:
    total = 0
    async with conn.transaction():
        for _, delete in _DEAD_SESSIONS:
            total += await _count(conn, delete, now)
    return total


async def _count_tokens(conn: asyncpg.Connection, now: datetime) -> int:
    sql = "SELECT count(*) FROM tokens WHERE revoked_at IS NOT NULL OR expires_at <= $1"
    return await _count(conn, sql, now)


async def _purge_tokens(conn: asyncpg.Connection, now: datetime) -> int:
    sql = (
        "WITH d AS (DELETE FROM tokens WHERE revoked_at IS NOT NULL OR expires_at <= $1 "
        "RETURNING 1) SELECT count(*) FROM d"
    )
    return await _count(conn, sql, now)


_TOMBSTONES = "namespace LIKE 'pool:%' AND deleted_at IS NOT NULL AND deleted_at <= $1"


async def _count_tombstones(conn: asyncpg.Connection, before: datetime) -> int:
    return await _count(conn, f"SELECT count(*) FROM notes WHERE {_TOMBSTONES}", before)  # noqa: S608


async def _purge_tombstones(conn: asyncpg.Connection, before: datetime) -> int:
    sql = f"WITH d AS (DELETE FROM notes WHERE {_TOMBSTONES} RETURNING 1) SELECT count(*) FROM d"  # noqa: S608
    return await _count(conn, sql, before)


def _tombstone_age(settings: Settings) -> float:
    return settings.federation.notes.tombstone_min_age_s


TASKS = {
    task.name: task
    for task in (
        Task("l1", "Expired L1 messages", _count_l1, purge_expired_l1),
        Task(
            "sessions",
            "Expired browser sessions, OIDC sign-ins and mail links",
            _count_sessions,
            _purge_sessions,
        ),
        Task("tokens", "Revoked or expired API tokens", _count_tokens, _purge_tokens),
        Task(
            "tombstones",
            "Deleted shared notes (tombstones) past their minimum age",
            _count_tombstones,
            _purge_tombstones,
            _tombstone_age,
        ),
    )
}

TaskName = Annotated[str, Path(pattern="^[a-z0-9_]{1,32}$")]


def _before(task: Task, settings: Settings, now: datetime) -> datetime:
    return now - timedelta(seconds=task.min_age_s(settings))


async def preview(conn: asyncpg.Connection, settings: Settings, now: datetime) -> dict[str, int]:
    """How many rows each task would delete now."""
    return {
        name: await task.count(conn, _before(task, settings, now)) for name, task in TASKS.items()
    }


@router.get("/admin/cleanup")
async def cleanup_page(request: Request, _: WebAdminDep) -> HTMLResponse:
    """What each purge would delete now, each with its button."""
    state = hub_state(request)
    async with state.db.pool.acquire() as conn:
        counts = await preview(conn, state.settings, datetime.now(UTC))
    context = {"tasks": TASKS.values(), "counts": counts, "done": None, "confirm": None}
    return render(request, "admin/cleanup.html", context)


@router.post("/admin/cleanup/{name}")
async def run_cleanup(
    request: Request,
    name: TaskName,
    _: WebAdminDep,
    __: CsrfChecked,
    confirm: Annotated[str, Form(max_length=3)] = "",
) -> Response:
    """Without ``confirm=yes``: the confirmation step (what will go); with it: the purge."""
    task = TASKS.get(name)
    if task is None:
        raise WebForbidden(f"No cleanup named {name!r}.", 404)
    state, now = hub_state(request), datetime.now(UTC)
    async with state.db.pool.acquire() as conn:
        before = _before(task, state.settings, now)
        done = await task.purge(conn, before) if confirm == "yes" else None
        counts = await preview(conn, state.settings, now)
    context = {
        "tasks": TASKS.values(),
        "counts": counts,
        "done": (task, done) if done is not None else None,
        "confirm": task if done is None else None,
    }
    return render(request, "admin/cleanup.html", context)
