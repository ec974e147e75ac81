"""The foundation of the pages: home page, static files, vendored htmx, error pages."""

from __future__ import annotations

import hashlib
import re

import httpx
import pytest
from starlette.responses import Response

from hub.web import STATIC_DIR
from hub.web.session import set_session_cookie
from hub.web.settings import WebSettings
from hub.web.templating import environment
from tests.web.conftest import LiveHub, Mailbox, csrf_of, verified_member


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


MEMBER_PAGES = (
    "/dashboard/tools",
    "/dashboard/conversations",
    "/dashboard/facts",
    "/dashboard/notes",
    "/dashboard/memory/export",
    "/dashboard/memory/delete",
)


def test_public_pages_open_to_anyone(live_hub: LiveHub) -> None:
    for path in ("/", "/login", "/signup", "/reset", "/login/admin"):
        page = httpx.get(live_hub.url + path, timeout=10)
        assert page.status_code == 200, path
        assert 'name="csrf_token"' in page.text, path


def test_member_pages_send_anonymous_visitors_to_sign_in(live_hub: LiveHub) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=10) as client:
        for path in ("/dashboard", "/me", *MEMBER_PAGES):
            answer = client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"] == f"/login?next={path}"
        posted = client.post("/dashboard/tokens", data={"csrf_token": csrf_of(client)})
        assert posted.status_code == 303
        assert posted.headers["location"].startswith("/login?next=")


def test_member_and_admin_sessions_reach_their_own_pages(
    live_hub: LiveHub, mailbox: Mailbox
) -> None:
    with verified_member(live_hub, mailbox, "page@example.org", "correct horse battery") as member:
        for path in ("/dashboard", *MEMBER_PAGES):
            assert member.get(path).status_code == 200, path
        assert member.get("/me").headers["location"] == "/dashboard"
        assert 'href="/admin"' not in member.get("/").text
    with httpx.Client(base_url=live_hub.url, timeout=10) as admin:
        admin.post(
            "/login/admin", data={"token": live_hub.admin_token, "csrf_token": csrf_of(admin)}
        )
        assert admin.get("/dashboard").headers["location"] == "/admin"
        assert 'href="/admin"' in admin.get("/").text
        for path in MEMBER_PAGES:
            refused = admin.get(path)
            assert refused.status_code == 403, path
            assert "no dashboard of its own" in refused.text


def test_sign_in_goes_back_only_to_a_page_of_this_site(live_hub: LiveHub, mailbox: Mailbox) -> None:
    with verified_member(live_hub, mailbox, "next@example.org", "correct horse battery") as client:
        for target, expected in (
            ("//evil.example/x", "/dashboard"),
            ("/\t/evil.example", "/dashboard"),
            ("/\\evil.example", "/dashboard"),
            ("https://evil.example", "/dashboard"),
            ("/chat", "/chat"),
        ):
            answer = client.post(
                "/login",
                data={
                    "email": "next@example.org",
                    "password": "correct horse battery",
                    "next": target,
                    "csrf_token": csrf_of(client),
                },
            )
            assert answer.headers["location"] == expected


def test_oidc_sign_in_is_off_until_configured(live_hub: LiveHub) -> None:
    answer = httpx.get(live_hub.url + "/login/oidc", timeout=10)
    assert answer.status_code == 404
    assert "not configured here" in answer.text
    assert "/login/oidc" not in httpx.get(live_hub.url + "/login", timeout=10).text


def test_a_public_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="public_url"):
        WebSettings(public_url="ftp://pool.example.org")


@pytest.mark.parametrize(
    ("public_url", "secure"),
    [("http://127.0.0.1:8420", False), ("https://pool.example.org", True)],
)
def test_the_session_cookie_is_httponly_lax_and_secure_behind_https(
    public_url: str, secure: bool
) -> None:
    response = Response()
    set_session_cookie(response, "secret", WebSettings(public_url=public_url))
    (cookie,) = [
        c for c in response.headers.getlist("set-cookie") if c.startswith("iamine_session=")
    ]
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert ("Secure" in cookie) is secure


def test_the_tools_page_gives_each_clients_configuration_for_the_public_url(
    live_hub: LiveHub, mailbox: Mailbox
) -> None:
    assert httpx.get(live_hub.url + "/dashboard/tools").status_code == 303
    with verified_member(live_hub, mailbox, "tools@example.org", "correct horse battery") as member:
        page = member.get("/dashboard/tools")
    assert page.status_code == 200
    for client in ("opencode", "cursor", "aider", "claude", "openai"):
        assert f'data-client="{client}"' in page.text
    assert "http://127.0.0.1:8420/v1" in page.text
    assert "IAMINE_TOKEN" in page.text
    assert re.search(r"iam_[0-9a-f]{10}_", page.text) is None  # no token in any file
