"""The admin API (``/admin/api``): users and their tokens. Needs an ``admin``-scope token."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from hub import accounts
from hub.deps import AdminPrincipal, State
from hub.routes.tokens import IssuedTokenMemoryOut
from hub.schemas import TokenCreate, TokenOut, UserCreate, UserOut
from memory.keys import issue_key

router = APIRouter(prefix="/admin/api", tags=["admin"])


@router.get("/users")
async def list_users(state: State, _: AdminPrincipal) -> dict[str, object]:
    """List every user of the pool."""
    async with state.db.pool.acquire() as conn:
        users = await accounts.list_users(conn)
    return {"object": "list", "data": [UserOut.of(u) for u in users]}


@router.post("/users", status_code=201)
async def create_user(body: UserCreate, state: State, _: AdminPrincipal) -> UserOut:
    """Create a user."""
    async with state.db.pool.acquire() as conn:
        return UserOut.of(await accounts.create_user(conn, body.name))


@router.post("/users/{name}/disable")
async def disable_user(name: str, state: State, _: AdminPrincipal) -> UserOut:
    """Disable a user; their tokens stop working at once, and their workers' links close."""
    async with state.db.pool.acquire() as conn:
        user = await accounts.disable_user(conn, name)
    state.tokens.forget_user(user.id)
    return UserOut.of(user)


@router.post("/users/{name}/tokens", status_code=201)
async def create_user_token(
    name: str, body: TokenCreate, state: State, _: AdminPrincipal
) -> IssuedTokenMemoryOut:
    """Issue a token for a user; its text is in the response, once.

    The admin holds no user's memory key, so the token gets a new key when no live token of
    the user has one (`memory` says whether older memory became unreadable), and is otherwise
    `locked` until one of the user's tokens links it.
    """
    async with state.db.pool.acquire() as conn, conn.transaction():
        user = await accounts.get_user(conn, name)
        scopes = tuple(body.scopes)
        issued = await accounts.create_token(
            conn,
            user_id=user.id,
            scopes=scopes,
            name=body.name,
            expires_at=body.expires_at(datetime.now(UTC)),
        )
        memory = await issue_key(conn, user.id, issued.record.id, issued.token, scopes)
    return IssuedTokenMemoryOut(
        token=issued.token, memory=memory, **TokenOut.of(issued.record).model_dump()
    )
