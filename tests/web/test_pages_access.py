"""The foundation of the pages: home page, static files, vendored htmx, error pages."""

from __future__ import annotations

import hashlib
import re

import httpx

from hub.web import STATIC_DIR
from hub.web.templating import environment
from tests.web.conftest import LiveHub


def test_vendored_htmx_matches_the_recorded_sha256() -> None:
    recorded = (STATIC_DIR / "VENDORED.md").read_text()
    digest = hashlib.sha256((STATIC_DIR / "htmx.min.js").read_bytes()).hexdigest()
    assert re.search(rf"\| `htmx.min.js` \|.*\| `{digest}` \|", recorded)


def test_home_page_is_served_with_htmx_and_the_stylesheet(live_hub: LiveHub) -> None:
    page = httpx.get(live_hub.url + "/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/htmx.min.js"' in page.text
    assert 'href="/login"' in page.text
    assert page.cookies.get("iamine_csrf")
    script = httpx.get(live_hub.url + "/static/htmx.min.js", timeout=10)
    assert script.content == (STATIC_DIR / "htmx.min.js").read_bytes()
    assert httpx.get(live_hub.url + "/static/site.css", timeout=10).status_code == 200


def test_templates_are_autoescaped() -> None:
    assert environment.from_string("{{ text }}").render(text="<script>") == "&lt;script&gt;"
    assert environment.get_template("base.html").environment.autoescape
