"""FastAPI dependencies as ``Annotated`` aliases: the hub state, the caller, and scope checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request

from hub.auth import Principal, parse_bearer
from hub.errors import AuthenticationError, HubError, PermissionDeniedError
from hub.semantic import SemanticMemory
from hub.state import HubState


async def get_state(request: Request) -> HubState:
    """The running hub's state, as yielded by the lifespan.

    ``async`` on purpose: FastAPI runs a sync dependency in its thread pool, a thread hop per
    request for an attribute read.
    """
    state: HubState = request.state.hub
    return state


State = Annotated[HubState, Depends(get_state)]


def get_semantic(state: State) -> SemanticMemory:
    """The running hub's semantic memory (facts, notes, recall)."""
    if state.semantic is None:
        raise HubError("Semantic memory is not running in this hub.")
    return state.semantic


Semantic = Annotated[SemanticMemory, Depends(get_semantic)]


async def current_principal(request: Request, state: State) -> Principal:
    """Resolve the bearer token to a principal, or 401 in the OpenAI error shape."""
    try:
        token = parse_bearer(request.headers.get("authorization"))
        return await state.tokens.resolve(token)
    except AuthenticationError as exc:
        state.metrics.auth_failures.labels(exc.code).inc()
        raise


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def current_user(principal: CurrentPrincipal) -> Principal:
    """A principal acting for a user: a token with the ``user`` scope."""
    principal.require("user")
    return principal


async def current_admin(principal: CurrentPrincipal) -> Principal:
    """A principal with the ``admin`` scope."""
    principal.require("admin")
    return principal


UserPrincipal = Annotated[Principal, Depends(current_user)]
AdminPrincipal = Annotated[Principal, Depends(current_admin)]


@dataclass(frozen=True)
class UserCaller:
    """A user's principal with the raw token text, which unwraps the user's memory key.

    The text lives as long as the request; it is never stored, logged or shown in ``repr``.
    """

    principal: Principal
    token: str = field(repr=False)

    @property
    def user_id(self) -> UUID:
        """The caller's user (a ``user``-scope token always has one)."""
        if self.principal.user_id is None:
            raise PermissionDeniedError("This token acts for no user.")
        return self.principal.user_id

    @property
    def token_id(self) -> UUID:
        """The id of the caller's token."""
        return self.principal.token_id


def bearer_token(request: Request) -> str:
    """The raw bearer token of this request (resolve it with :func:`current_principal` first)."""
    return parse_bearer(request.headers.get("authorization"))


async def current_user_caller(request: Request, principal: UserPrincipal) -> UserCaller:
    """A ``user``-scope principal together with its token text, for memory routes."""
    return UserCaller(principal, bearer_token(request))


UserCallerDep = Annotated[UserCaller, Depends(current_user_caller)]
