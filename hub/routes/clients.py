"""Setup of agent clients: ``GET /v1/opencode-md`` (a Markdown guide) and
``GET /v1/client-config/{client}`` (one client's files as JSON), for the models served now.

The hub has no public-URL setting, so the base URL written into the configurations is the one
the caller reached the hub by (behind a proxy, that is the proxy's, from the ``Host`` header).
Thin over ``hub/client/configs.py``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from hub.client.configs import BUILDERS, client_config, guide_markdown
from hub.deps import State, UserPrincipal
from hub.errors import NotFoundError

router = APIRouter(prefix="/v1", tags=["clients"])


def base_url(request: Request) -> str:
    """The hub's root URL as this caller reaches it, without a trailing slash."""
    return str(request.base_url).rstrip("/")


@router.get(
    "/opencode-md",
    response_class=Response,
    responses={200: {"content": {"text/markdown": {}}}},
)
async def opencode_md(request: Request, state: State, _: UserPrincipal) -> Response:
    """A Markdown guide for agent clients: base URL, models served now, every client's setup."""
    text = guide_markdown(base_url(request), state.workers.models())
    return Response(text, media_type="text/markdown; charset=utf-8")


@router.get("/client-config/{client}")
async def read_client_config(
    client: str, request: Request, state: State, _: UserPrincipal
) -> dict[str, Any]:
    """One client's configuration files for this hub (what ``iamine connect`` writes)."""
    config = client_config(client, base_url(request), state.workers.models())
    if config is None:
        raise NotFoundError(
            f"No configuration for client {client[:64]!r}. Known clients: {', '.join(BUILDERS)}.",
            param="client",
        )
    return config.as_dict()
