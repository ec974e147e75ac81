"""Page rendering: one Jinja2 environment (autoescaped) over ``hub/web/templates/``.

:func:`render` gives every template the same context besides its own: the signed-in ``user``
(or None), the ``csrf_token`` its forms post back, the reader's ``lang`` and ``_`` (gettext).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from hub.web.i18n import pick_language, translator
from hub.web.session import csrf_token, set_csrf_cookie

TEMPLATES_DIR = Path(__file__).parent / "templates"

environment = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    """Render ``template`` with ``context`` and the common context into an HTML response."""
    lang = pick_language(request)
    common = {
        "request": request,
        "user": getattr(request.state, "web_user", None),
        "csrf_token": csrf_token(request),
        "lang": lang,
        "_": translator(lang),
    }
    html = environment.get_template(template).render(common | context)
    response = HTMLResponse(html, status_code=status_code)
    set_csrf_cookie(request, response)
    return response
