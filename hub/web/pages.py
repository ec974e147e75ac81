"""Public pages: the home page (what the pool is, where to go next, the pool as a molecule)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse

from hub.web.pool import pool_snapshot
from hub.web.session import hub_state
from hub.web.templating import render

router = APIRouter()


@router.get("/")
async def home(request: Request) -> HTMLResponse:
    """The home page: what this pool is, links to try it, sign up and use it, and the pool now."""
    return render(request, "index.html", {"pool": await pool_snapshot(hub_state(request))})
