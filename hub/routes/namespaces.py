"""Shared note namespaces: the admin's routes (``/admin/api/namespaces``, creators) and the
user's (``/v1/memory/namespaces``). The model is in ``memory/namespaces.py`` and docs/memory.md.

The admin creates, opens, deletes namespaces and subscribes users; a user sees the namespaces
they are subscribed to and the open ones, subscribes themself to an open one, and creates one
only with the admin's grant. A note never creates a namespace.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import ConfigDict, Field, Strict

from hub import accounts
from hub.deps import AdminPrincipal, Semantic, State, UserCallerDep
from hub.schemas import StrictBody
from memory import namespaces
from memory.namespaces import SHARED_PATTERN, Namespace, WriteRule, check_shared_name

user_router = APIRouter(prefix="/v1/memory", tags=["memory"])
admin_router = APIRouter(prefix="/admin/api", tags=["admin"])
router = APIRouter()

NAME_FIELD = Field(pattern=SHARED_PATTERN, description="`pool:<name>` or `fed:<name>`.")
RULE_FIELD = Field(
    None,
    description="`members` (every subscriber writes) or `owner` (only its owner); default: "
    "`IAMINE_MEMORY__NOTES_DEFAULT_WRITE_RULE`.",
)
OPEN_FIELD = Field(False, description="Any user may subscribe themself.")
# Strict bodies refuse a JSON string for an enum in pydantic's Python mode; the value is checked.
Rule = Annotated[WriteRule, Strict(False)]


class NamespaceCreate(StrictBody):
    """A shared namespace to create."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = NAME_FIELD
    write_rule: Rule | None = RULE_FIELD
    open: bool = OPEN_FIELD


class AdminNamespaceCreate(NamespaceCreate):
    """A shared namespace the admin creates, optionally owned by a user."""

    owner: str | None = Field(
        None, description="User who owns it (changes its rule, deletes any note in it)."
    )


class NamespaceUpdate(StrictBody):
    """What the admin changes of a namespace (absent: unchanged)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    write_rule: Rule | None = None
    open: bool | None = None


class WriteRuleBody(StrictBody):
    """A shared namespace's write rule."""

    model_config = ConfigDict(strict=True, extra="forbid")

    write_rule: Rule = Field(description="`members` (every subscriber) or `owner` (only you).")


def namespace_body(namespace: Namespace) -> dict[str, Any]:
    """A shared namespace as a user sees it."""
    return {
        "object": "memory.namespace",
        "name": namespace.name,
        "write_rule": namespace.write_rule.value,
        "open": namespace.open,
        "owned": namespace.owned,
        "subscribed": namespace.subscribed,
        "notes": namespace.notes,
    }


def admin_namespace_body(namespace: Namespace) -> dict[str, Any]:
    """A shared namespace as the admin sees it: owner and subscribers by user name."""
    return {
        "object": "memory.namespace",
        "name": namespace.name,
        "write_rule": namespace.write_rule.value,
        "open": namespace.open,
        "owner": namespace.owner,
        "created_by_admin": namespace.created_by_admin,
        "notes": namespace.notes,
        "subscribers": list(namespace.subscribers),
    }


def subscription_body(name: str, user: str | None, subscribed: bool) -> dict[str, Any]:
    """Whether a user is now subscribed to a namespace."""
    return {
        "object": "memory.namespace.subscription",
        "namespace": name,
        "user": user,
        "subscribed": subscribed,
    }


# --- the admin's routes ---------------------------------------------------------------------


@admin_router.get("/namespaces")
async def admin_list_namespaces(state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Every shared namespace: rule, openness, owner, note count and subscribers."""
    async with state.db.pool.acquire() as conn:
        found = await namespaces.all_namespaces(conn)
    return {"object": "list", "data": [admin_namespace_body(n) for n in found]}


@admin_router.post("/namespaces", status_code=201)
async def admin_create_namespace(
    body: AdminNamespaceCreate, state: State, _: AdminPrincipal
) -> dict[str, Any]:
    """Create a shared namespace (409 `namespace_exists` if the name is taken); its owner, if
    named, is subscribed. Nobody else reads it until subscribed."""
    rule = body.write_rule or WriteRule(state.settings.memory.notes_default_write_rule)
    async with state.db.pool.acquire() as conn:
        owner = None if body.owner is None else (await accounts.get_user(conn, body.owner)).id
        made = await namespaces.create_namespace(
            conn, body.name, write_rule=rule, open=body.open, owner_id=owner
        )
        made = await namespaces.get_namespace(conn, made.name)
    return admin_namespace_body(made)


@admin_router.patch("/namespaces/{name}")
async def admin_update_namespace(
    name: str, body: NamespaceUpdate, state: State, _: AdminPrincipal
) -> dict[str, Any]:
    """Change a namespace's write rule or openness."""
    async with state.db.pool.acquire() as conn:
        found = await namespaces.update_namespace(
            conn, check_shared_name(name), write_rule=body.write_rule, open=body.open
        )
    return admin_namespace_body(found)


@admin_router.delete("/namespaces/{name}")
async def admin_delete_namespace(name: str, state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Delete a shared namespace with every note in it and its subscriptions."""
    async with state.db.pool.acquire() as conn:
        count = await namespaces.delete_namespace(conn, check_shared_name(name))
    return {"object": "memory.namespace.deleted", "name": name, "deleted": True, "notes": count}


@admin_router.put("/namespaces/{name}/subscribers/{user}")
async def admin_subscribe(name: str, user: str, state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Subscribe a user to a shared namespace: their chats and searches then read it."""
    async with state.db.pool.acquire() as conn:
        member = await accounts.get_user(conn, user)
        await namespaces.subscribe(conn, check_shared_name(name), member.id, by_admin=True)
    return subscription_body(name, member.name, True)


@admin_router.delete("/namespaces/{name}/subscribers/{user}")
async def admin_unsubscribe(
    name: str, user: str, state: State, _: AdminPrincipal
) -> dict[str, Any]:
    """Unsubscribe a user; the notes they wrote there stay."""
    async with state.db.pool.acquire() as conn:
        member = await accounts.get_user(conn, user)
        await namespaces.unsubscribe(conn, check_shared_name(name), member.id)
    return subscription_body(name, member.name, False)


@admin_router.put("/namespace-creators/{user}")
async def admin_grant_creation(user: str, state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Allow a user to create shared namespaces (which they then own)."""
    async with state.db.pool.acquire() as conn:
        member = await accounts.get_user(conn, user)
        await namespaces.grant_creation(conn, member.id)
    return {"object": "memory.namespace.creator", "user": member.name, "may_create": True}


@admin_router.delete("/namespace-creators/{user}")
async def admin_revoke_creation(user: str, state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Withdraw that permission; namespaces the user made stay."""
    async with state.db.pool.acquire() as conn:
        member = await accounts.get_user(conn, user)
        await namespaces.revoke_creation(conn, member.id)
    return {"object": "memory.namespace.creator", "user": member.name, "may_create": False}


# --- the user's routes ----------------------------------------------------------------------


@user_router.get("/namespaces")
async def list_namespaces(semantic: Semantic, caller: UserCallerDep) -> dict[str, Any]:
    """The shared namespaces you are subscribed to, and the open ones you may join."""
    async with semantic.pool.acquire() as conn:
        found = await namespaces.list_namespaces(conn, caller.user_id)
    return {"object": "list", "data": [namespace_body(n) for n in found]}


@user_router.post("/namespaces", status_code=201)
async def create_namespace(
    body: NamespaceCreate, semantic: Semantic, caller: UserCallerDep
) -> dict[str, Any]:
    """Create a shared namespace you own; only if the admin allowed you (403 otherwise)."""
    rule = body.write_rule or WriteRule(semantic.settings.notes_default_write_rule)
    async with semantic.pool.acquire() as conn:
        made = await namespaces.create_own_namespace(
            conn, caller.user_id, body.name, write_rule=rule, open=body.open
        )
    return namespace_body(made)


@user_router.put("/namespaces/{name}")
async def put_namespace(
    name: str, body: WriteRuleBody, semantic: Semantic, caller: UserCallerDep
) -> dict[str, Any]:
    """Set the write rule of a shared namespace you own."""
    async with semantic.pool.acquire() as conn:
        found = await namespaces.set_write_rule(conn, caller.user_id, name, body.write_rule)
    return namespace_body(found)


@user_router.put("/namespaces/{name}/subscription")
async def subscribe(name: str, semantic: Semantic, caller: UserCallerDep) -> dict[str, Any]:
    """Subscribe yourself to an open shared namespace (403 if it is not open)."""
    async with semantic.pool.acquire() as conn:
        await namespaces.subscribe(conn, check_shared_name(name), caller.user_id, by_admin=False)
    return subscription_body(name, caller.principal.user_name, True)


@user_router.delete("/namespaces/{name}/subscription")
async def unsubscribe(name: str, semantic: Semantic, caller: UserCallerDep) -> dict[str, Any]:
    """Leave a shared namespace: your chats and searches stop reading it."""
    async with semantic.pool.acquire() as conn:
        await namespaces.unsubscribe(conn, check_shared_name(name), caller.user_id)
    return subscription_body(name, caller.principal.user_name, False)


router.include_router(admin_router)
router.include_router(user_router)
