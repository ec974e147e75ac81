"""The hub's web pages: server-rendered HTML (Jinja2 + htmx) for people, beside the API.

:func:`mount_web` adds the page routers, their error pages and ``/static`` to the app. Every page
router is included with :func:`~hub.web.session.web_user` as a dependency, so each page knows who
is signed in (the nav shows it) without asking for it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


def mount_web(app: FastAPI) -> None:
    """Include the web routers and their error pages, and serve ``/static``."""
    # Imported here: hub.config imports hub.web.settings, and the routers import hub.state,
    # which imports hub.config; importing them at the top of this package would be circular.
    from hub.web import (
        admin,
        admin_cleanup,
        admin_config,
        admin_ledger,
        admin_people,
        chat,
        dashboard,
        dashboard_memory,
        i18n,
        login,
        oidc,
        pages,
        pool,
        signup,
    )
    from hub.web.session import WebForbidden, WebRedirect, web_user
    from hub.web.templating import render

    async def redirect(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, WebRedirect)
        return RedirectResponse(exc.location, status_code=303)

    async def forbidden(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, WebForbidden)
        return render(request, "error.html", {"message": exc.message}, exc.status_code)

    app.add_exception_handler(WebRedirect, redirect)
    app.add_exception_handler(WebForbidden, forbidden)
    routers = (
        pages.router,
        i18n.router,
        pool.router,
        chat.build_router(),
        admin.router,
        admin_config.router,
        admin_people.router,
        admin_cleanup.router,
        admin_ledger.router,
        login.router,
        signup.router,
        oidc.router,
        dashboard.router,
        dashboard_memory.router,
    )
    for router in routers:
        app.include_router(router, dependencies=[Depends(web_user)], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
