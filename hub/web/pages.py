"""Public pages: the home page (what the pool is, where to go next)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse

from hub.web.templating import render

router = APIRouter()


@router.get("/")
async def home(request: Request) -> HTMLResponse:
    """The home page: what this pool is, and links to try it, sign up and use it."""
    return render(request, "index.html", {})
