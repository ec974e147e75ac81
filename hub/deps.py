"""FastAPI dependencies as ``Annotated`` aliases: the hub state, the caller, and scope checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from hub.auth import Principal, parse_bearer
from hub.errors import AuthenticationError
from hub.state import HubState


def get_state(request: Request) -> HubState:
    """The running hub's state, as yielded by the lifespan."""
    state: HubState = request.state.hub
    return state


State = Annotated[HubState, Depends(get_state)]


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
