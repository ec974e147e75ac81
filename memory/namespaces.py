"""Shared note namespaces (``pool:<name>``, ``fed:<name>``): who makes them, reads and writes them.

The model (docs/memory.md, "Shared namespaces"):

- The pool admin creates a shared namespace, or a user the admin allowed to
  (:func:`grant_creation`); a note never creates one. A user who creates one owns it and is
  subscribed to it; the admin may name an owning user for one they create.
- A user reads a shared namespace only while subscribed to it. The admin subscribes users; a user
  subscribes themself only to an *open* namespace. Listings, searches, reads by id and the chat's
  recall all check the subscription in SQL (:data:`READABLE_NOTE`), never by a client filter.
- A subscriber writes per the namespace's rule: ``members`` (every subscriber) or ``owner`` (only
  its owning user). A note's author or the namespace's owner may delete a note; the admin deletes
  a whole namespace, its notes with it.

Namespace names are not secret: a write to, or a filter on, a namespace that does not exist says
so (:class:`NamespaceNotFound`), one the caller is not subscribed to is :class:`NamespaceForbidden`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

import asyncpg

from memory.errors import InvalidNamespace, NamespaceExists, NamespaceForbidden, NamespaceNotFound

SHARED_NAME = r"[a-z0-9][a-z0-9._-]{0,62}"
SHARED_PATTERN = rf"^(pool|fed):{SHARED_NAME}$"
_SHARED = re.compile(SHARED_PATTERN)

# The notes a user may read (alias ``n``, the user is ``$1``): their private ones, and those of
# the shared namespaces they are subscribed to. The subscription list is computed once per query.
READABLE_NOTE = (
    "(n.owner_id = $1 OR (n.owner_id IS NULL AND n.namespace = ANY (ARRAY("
    "SELECT m.namespace FROM namespace_subscriptions m WHERE m.user_id = $1))))"
)


class WriteRule(StrEnum):
    """Who among a shared namespace's subscribers may write to it."""

    MEMBERS = "members"
    OWNER = "owner"


@dataclass(frozen=True)
class Namespace:
    """A shared namespace, as seen by one user (``owned``, ``subscribed``) or by the admin."""

    name: str
    write_rule: WriteRule
    open: bool
    owner: str | None
    created_by_admin: bool
    notes: int
    owned: bool = False
    subscribed: bool = False
    subscribers: tuple[str, ...] = ()


_SELECT = """
SELECT s.namespace, s.write_rule, s.open, s.created_by_admin, s.owner_id, u.name AS owner,
    (SELECT count(*) FROM notes n WHERE n.namespace = s.namespace AND n.deleted_at IS NULL)
        AS notes,
    EXISTS (SELECT 1 FROM namespace_subscriptions m
            WHERE m.namespace = s.namespace AND m.user_id = $1) AS subscribed,
    ARRAY(SELECT mu.name FROM namespace_subscriptions m JOIN users mu ON mu.id = m.user_id
          WHERE m.namespace = s.namespace ORDER BY mu.name) AS subscribers
FROM note_namespaces s LEFT JOIN users u ON u.id = s.owner_id
"""


def _namespace(row: asyncpg.Record, viewer: UUID | None) -> Namespace:
    return Namespace(
        name=row["namespace"],
        write_rule=WriteRule(row["write_rule"]),
        open=row["open"],
        owner=row["owner"],
        created_by_admin=row["created_by_admin"],
        notes=row["notes"],
        owned=viewer is not None and row["owner_id"] == viewer,
        subscribed=row["subscribed"],
        subscribers=tuple(row["subscribers"]) if viewer is None else (),
    )


def check_shared_name(name: str) -> str:
    """The name of a shared namespace, or :class:`InvalidNamespace`."""
    if _SHARED.match(name) is None:
        raise InvalidNamespace(
            "A shared namespace is pool:<name> or fed:<name>; a name is 1-63 lower-case letters, "
            "digits and . _ -.",
            param="name",
        )
    return name


def _not_found(name: str, param: str = "name") -> NamespaceNotFound:
    return NamespaceNotFound(
        f"No shared namespace {name}. The pool admin creates shared namespaces (`iamine "
        "namespaces create`), or a user the admin allowed to (POST /v1/memory/namespaces).",
        param=param,
    )


async def get_namespace(
    conn: asyncpg.Connection, name: str, viewer: UUID | None = None
) -> Namespace:
    """One shared namespace (as ``viewer`` sees it; None: the admin's view with subscribers)."""
    row = await conn.fetchrow(f"{_SELECT} WHERE s.namespace = $2", viewer, name)
    if row is None:
        raise _not_found(name)
    return _namespace(row, viewer)


async def list_namespaces(conn: asyncpg.Connection, user_id: UUID) -> list[Namespace]:
    """The shared namespaces a user can see: those they are subscribed to, and the open ones."""
    rows = await conn.fetch(
        f"SELECT * FROM ({_SELECT}) v WHERE v.subscribed OR v.open ORDER BY v.namespace",  # noqa: S608
        user_id,
    )
    return [_namespace(r, user_id) for r in rows]


async def all_namespaces(conn: asyncpg.Connection) -> list[Namespace]:
    """Every shared namespace with its subscribers (the admin's view)."""
    rows = await conn.fetch(f"{_SELECT} ORDER BY s.namespace", None)
    return [_namespace(r, None) for r in rows]


async def create_namespace(
    conn: asyncpg.Connection,
    name: str,
    *,
    write_rule: WriteRule = WriteRule.MEMBERS,
    open: bool = False,
    owner_id: UUID | None = None,
    by_admin: bool = True,
) -> Namespace:
    """Create a shared namespace (the admin's act, unless ``by_admin`` is False); its owning
    user, if any, is subscribed to it. :class:`NamespaceExists` if the name is taken."""
    check_shared_name(name)
    async with conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO note_namespaces (namespace, owner_id, write_rule, open, "
                "created_by_admin) VALUES ($1, $2, $3, $4, $5)",
                name,
                owner_id,
                write_rule.value,
                open,
                by_admin,
            )
        except asyncpg.UniqueViolationError:
            raise NamespaceExists(f"The namespace {name} already exists.", param="name") from None
        if owner_id is not None:
            await _add_subscription(conn, name, owner_id, by_admin=by_admin)
    return await get_namespace(conn, name, owner_id)


async def create_own_namespace(
    conn: asyncpg.Connection,
    user_id: UUID,
    name: str,
    *,
    write_rule: WriteRule = WriteRule.MEMBERS,
    open: bool = False,
) -> Namespace:
    """A user creates a shared namespace they own; only with the admin's grant."""
    check_shared_name(name)
    if not await may_create(conn, user_id):
        raise NamespaceForbidden(
            "Only the pool admin creates shared namespaces, or a user the admin allowed to "
            "(`iamine namespaces grant <user>`).",
            param="name",
        )
    return await create_namespace(
        conn, name, write_rule=write_rule, open=open, owner_id=user_id, by_admin=False
    )


async def may_create(conn: asyncpg.Connection, user_id: UUID) -> bool:
    """Whether the admin allowed this user to create shared namespaces."""
    found = await conn.fetchval("SELECT 1 FROM namespace_creators WHERE user_id = $1", user_id)
    return found is not None


async def grant_creation(conn: asyncpg.Connection, user_id: UUID) -> None:
    """Allow a user to create shared namespaces (idempotent)."""
    await conn.execute(
        "INSERT INTO namespace_creators (user_id) VALUES ($1) ON CONFLICT DO NOTHING", user_id
    )


async def revoke_creation(conn: asyncpg.Connection, user_id: UUID) -> bool:
    """Withdraw that grant (namespaces the user made stay); False if they had none."""
    status: str = await conn.execute("DELETE FROM namespace_creators WHERE user_id = $1", user_id)
    return status != "DELETE 0"


async def subscribe(conn: asyncpg.Connection, name: str, user_id: UUID, *, by_admin: bool) -> None:
    """Subscribe a user to a shared namespace: the admin may subscribe anyone anywhere, a user
    themself only to an open namespace (idempotent)."""
    async with conn.transaction():
        is_open = await conn.fetchval(
            "SELECT open FROM note_namespaces WHERE namespace = $1 FOR SHARE", name
        )
        if is_open is None:
            raise _not_found(name)
        if not (by_admin or is_open):
            raise NamespaceForbidden(
                f"{name} is not open: only the pool admin subscribes users to it.", param="name"
            )
        await _add_subscription(conn, name, user_id, by_admin=by_admin)


async def _add_subscription(
    conn: asyncpg.Connection, name: str, user_id: UUID, *, by_admin: bool
) -> None:
    await conn.execute(
        "INSERT INTO namespace_subscriptions (namespace, user_id, by_admin) "
        "VALUES ($1, $2, $3) ON CONFLICT (namespace, user_id) DO NOTHING",
        name,
        user_id,
        by_admin,
    )


async def unsubscribe(conn: asyncpg.Connection, name: str, user_id: UUID) -> bool:
    """End a user's subscription; False if there was none. The user's notes there stay."""
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM note_namespaces WHERE namespace = $1", name) is None:
            raise _not_found(name)
        status: str = await conn.execute(
            "DELETE FROM namespace_subscriptions WHERE namespace = $1 AND user_id = $2",
            name,
            user_id,
        )
    return status != "DELETE 0"


async def update_namespace(
    conn: asyncpg.Connection,
    name: str,
    *,
    write_rule: WriteRule | None = None,
    open: bool | None = None,
) -> Namespace:
    """The admin changes a namespace's write rule or openness (None: unchanged)."""
    found = await conn.fetchval(
        "UPDATE note_namespaces SET write_rule = coalesce($2, write_rule), "
        "open = coalesce($3, open) WHERE namespace = $1 RETURNING 1",
        name,
        None if write_rule is None else write_rule.value,
        open,
    )
    if found is None:
        raise _not_found(name)
    return await get_namespace(conn, name)


async def set_write_rule(
    conn: asyncpg.Connection, user_id: UUID, name: str, rule: WriteRule
) -> Namespace:
    """The namespace's owning user sets its write rule."""
    owner = await conn.fetchrow(
        "SELECT owner_id FROM note_namespaces WHERE namespace = $1", check_shared_name(name)
    )
    if owner is None:
        raise _not_found(name)
    if owner["owner_id"] != user_id:
        raise NamespaceForbidden(f"Only the owner of {name} may change its write rule.")
    await conn.execute(
        "UPDATE note_namespaces SET write_rule = $2 WHERE namespace = $1", name, rule.value
    )
    return await get_namespace(conn, name, user_id)


async def delete_namespace(conn: asyncpg.Connection, name: str) -> int:
    """Delete a shared namespace, its subscriptions and every note in it; return the notes."""
    async with conn.transaction():
        # Deleting the row first waits for notes being written there (they lock it FOR SHARE).
        gone = await conn.fetchval(
            "DELETE FROM note_namespaces WHERE namespace = $1 RETURNING 1", name
        )
        if gone is None:
            raise _not_found(name)
        count = await conn.fetchval(
            "WITH d AS (DELETE FROM notes WHERE namespace = $1 AND owner_id IS NULL "
            "AND deleted_at IS NULL RETURNING 1) SELECT count(*) FROM d",
            name,
        )
        await conn.execute("DELETE FROM notes WHERE namespace = $1 AND owner_id IS NULL", name)
    return int(count)


async def check_write(conn: asyncpg.Connection, user_id: UUID, name: str) -> None:
    """Refuse a note in a shared namespace that does not exist, that the user is not subscribed
    to, or whose rule is ``owner`` and whose owner they are not. Call it in the note's
    transaction: it holds the namespace's row until the note is in."""
    row = await conn.fetchrow(
        "SELECT s.write_rule, s.owner_id, EXISTS (SELECT 1 FROM namespace_subscriptions m "
        "WHERE m.namespace = s.namespace AND m.user_id = $2) AS subscribed "
        "FROM note_namespaces s WHERE s.namespace = $1 FOR SHARE OF s",
        name,
        user_id,
    )
    if row is None:
        raise _not_found(name, "namespace")
    if not row["subscribed"]:
        raise NamespaceForbidden(
            f"You are not subscribed to {name}: the pool admin subscribes users (or subscribe "
            f"yourself, if it is open: PUT /v1/memory/namespaces/{name}/subscription).",
            param="namespace",
        )
    if row["write_rule"] == WriteRule.OWNER and row["owner_id"] != user_id:
        raise NamespaceForbidden(f"Only the owner of {name} may write to it.", param="namespace")


async def check_readable(conn: asyncpg.Connection, user_id: UUID, names: Sequence[str]) -> None:
    """Refuse a filter naming a shared namespace that does not exist or that the user is not
    subscribed to (``names`` are canonical: another user's ``user:`` one was refused before)."""
    wanted = sorted({n for n in names if _SHARED.match(n)})
    if not wanted:
        return
    rows = await conn.fetch(
        "SELECT s.namespace, EXISTS (SELECT 1 FROM namespace_subscriptions m "
        "WHERE m.namespace = s.namespace AND m.user_id = $2) AS subscribed "
        "FROM note_namespaces s WHERE s.namespace = ANY ($1)",
        wanted,
        user_id,
    )
    subscribed = {r["namespace"]: r["subscribed"] for r in rows}
    for name in wanted:
        if name not in subscribed:
            raise _not_found(name, "namespace")
        if not subscribed[name]:
            raise NamespaceForbidden(f"You are not subscribed to {name}.", param="namespace")
