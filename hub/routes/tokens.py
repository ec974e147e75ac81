"""A user's own tokens: list, issue another, revoke (``/v1/tokens``)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from hub import accounts
from hub.deps import State, UserPrincipal
from hub.errors import PermissionDeniedError
from hub.schemas import IssuedTokenOut, TokenCreate, TokenOut

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


@router.get("")
async def list_own_tokens(state: State, principal: UserPrincipal) -> dict[str, object]:
    """List the caller's tokens (revoked ones included), newest first."""
    async with state.db.pool.acquire() as conn:
        records = await accounts.list_tokens(conn, user_id=principal.user_id)
    return {"object": "list", "data": [TokenOut.of(r) for r in records]}


@router.post("", status_code=201)
async def create_own_token(
    body: TokenCreate, state: State, principal: UserPrincipal
) -> IssuedTokenOut:
    """Issue another token for the caller, with at most the caller's scopes."""
    scopes = tuple(body.scopes)
    if not set(scopes) <= principal.scopes:
        raise PermissionDeniedError("A token can only grant scopes its issuer holds.")
    async with state.db.pool.acquire() as conn:
        issued = await accounts.create_token(
            conn,
            user_id=principal.user_id,
            scopes=scopes,
            name=body.name,
            expires_at=body.expires_at(datetime.now(UTC)),
        )
    return IssuedTokenOut(token=issued.token, **TokenOut.of(issued.record).model_dump())


@router.delete("/{prefix}")
async def revoke_own_token(prefix: str, state: State, principal: UserPrincipal) -> TokenOut:
    """Revoke one of the caller's tokens by its prefix; it stops working at once."""
    async with state.db.pool.acquire() as conn:
        record = await accounts.revoke_token(conn, prefix, user_id=principal.user_id)
    state.tokens.forget(record.id)
    return TokenOut.of(record)
