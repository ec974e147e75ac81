"""A user's own tokens: list, issue another, revoke (``/v1/tokens``)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import Field

from hub import accounts
from hub.deps import State, UserCallerDep, UserPrincipal
from hub.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from hub.schemas import IssuedTokenOut, TokenCreate, TokenOut
from inference import identity
from memory.keys import KeyIssue, extend_key

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


class IssuedTokenMemoryOut(IssuedTokenOut):
    """A freshly issued token and what it can do with its user's (encrypted) memory."""

    memory: KeyIssue = Field(
        description=(
            "`linked`: opens the same memory as the issuing token; `new_key`: the user's first "
            "memory key; `new_key_old_memory_unreadable`: a fresh key, older memory is lost; "
            "`locked`: no memory access until linked; `none`: not a user-scope token."
        )
    )


@router.get("")
async def list_own_tokens(state: State, principal: UserPrincipal) -> dict[str, object]:
    """List the caller's tokens (revoked ones included), newest first."""
    async with state.db.pool.acquire() as conn:
        records = await accounts.list_tokens(conn, user_id=principal.user_id)
    return {"object": "list", "data": [TokenOut.of(r) for r in records]}


@router.post("", status_code=201)
async def create_own_token(
    body: TokenCreate, state: State, caller: UserCallerDep
) -> IssuedTokenMemoryOut:
    """Issue another token for the caller, with at most the caller's scopes and lifetime.

    The new token is the caller's child: it expires no later than the caller's token (a longer
    or absent `expires_in_s` is capped; the response's `expires_at` says when), and revoking or
    expiring the caller's token ends it too. The caller's memory key is wrapped for the new
    token, so both open the same memory.
    """
    scopes = tuple(body.scopes)
    if not set(scopes) <= caller.principal.scopes:
        raise PermissionDeniedError("A token can only grant scopes its issuer holds.")
    async with state.db.pool.acquire() as conn, conn.transaction():
        worker_id = None
        if body.worker is not None:
            if "worker" not in scopes:
                raise InvalidRequestError(
                    "Only a token with the worker scope names a worker.", param="worker"
                )
            record = await identity.find_worker(conn, body.worker)
            if record is None or record.owner_id != caller.user_id:
                raise NotFoundError(f"You have no worker named {body.worker!r}.", param="worker")
            worker_id = record.id
        issued = await accounts.create_token(
            conn,
            user_id=caller.user_id,
            scopes=scopes,
            name=body.name,
            expires_at=body.expires_at(datetime.now(UTC)),
            parent_id=caller.token_id,
            worker_id=worker_id,
        )
        memory = await extend_key(
            conn,
            caller.user_id,
            (caller.token_id, caller.token),
            (issued.record.id, issued.token),
            scopes,
        )
    return IssuedTokenMemoryOut(
        token=issued.token, memory=memory, **TokenOut.of(issued.record).model_dump()
    )


@router.delete("/{prefix}")
async def revoke_own_token(prefix: str, state: State, principal: UserPrincipal) -> TokenOut:
    """Revoke one of the caller's tokens by its prefix; it stops working at once.

    Tokens minted from it are revoked with it, transitively, and the worker links and MCP streams
    open on any of them are closed. Its wrap of the memory key is deleted with it (a database
    trigger), so the revoked token opens nothing in the database any more; the user's other
    tokens keep their access.
    """
    async with state.db.pool.acquire() as conn, conn.transaction():
        record = await accounts.revoke_token(conn, prefix, user_id=principal.user_id)
        lineage = await accounts.token_lineage(conn, record.id)
    for token_id in lineage:
        state.tokens.forget(token_id)
    return TokenOut.of(record)
