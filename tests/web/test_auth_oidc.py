"""OpenID Connect sign-in against a local issuer (oidc-provider-mock, started by the module)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from oidc_provider_mock import User, run_server_in_thread

from hub.web.settings import OidcSettings
from tests.web.conftest import LiveHub, Mailbox, csrf_of, sign_up, web_settings

USERS = [
    User(sub="sub-new", claims={"email": "new@example.org", "email_verified": True}),
    User(sub="sub-unverified", claims={"email": "unverified@example.org", "email_verified": False}),
    User(sub="sub-taken", claims={"email": "taken@example.org", "email_verified": True}),
    User(sub="sub-link", claims={"email": "other@example.org", "email_verified": True}),
]


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    """A local OIDC issuer over plain HTTP (Authlib allows it only with this variable)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
        with run_server_in_thread(user_claims=USERS, require_nonce=True) as server:
            yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def hub_overrides(mailbox: Mailbox, issuer: str) -> dict[str, Any]:
    """The live hub signs in with the local issuer."""
    oidc = OidcSettings(
        issuer=issuer, client_id="iamine-test", client_secret="s3cret", display_name="MockID"
    )
    return {"web": web_settings(mailbox, oidc=oidc)}


def via_issuer(client: httpx.Client, start: httpx.Response, subject: str) -> httpx.Response:
    """Follow a sign-in started at the hub: the issuer authorises ``subject``, back to the hub."""
    assert start.status_code == 303, start.text
    authorize = start.headers["location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["redirect_uri"] == ["http://127.0.0.1:8420/login/oidc/callback"]
    assert query["code_challenge_method"] == ["S256"]
    assert query["nonce"]
    answer = httpx.post(authorize, data={"sub": subject}, timeout=10)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["location"])
    return client.get(f"{back.path}?{back.query}")


def test_a_new_verified_identity_makes_an_account_and_signs_in(
    live_hub: LiveHub, issuer: str
) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30) as client:
        assert "Log in with MockID" in client.get("/login").text
        done = via_issuer(client, client.get("/login/oidc?next=/dashboard"), "sub-new")
        assert done.status_code == 303
        assert done.headers["location"] == "/dashboard"
        page = client.get("/dashboard")
        assert "new@example.org" in page.text
        assert "Confirm your address" not in page.text
        client.cookies.clear()
        again = via_issuer(client, client.get("/login/oidc"), "sub-new")
        assert again.status_code == 303
        assert "new@example.org" in client.get("/dashboard").text


def test_an_identity_without_a_verified_email_is_refused(live_hub: LiveHub, issuer: str) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30) as client:
        refused = via_issuer(client, client.get("/login/oidc"), "sub-unverified")
        assert refused.status_code == 403
        assert "did not confirm this identity" in refused.text
        assert "iamine_session" not in client.cookies


def test_an_identity_never_merges_silently_into_an_account_with_its_email(
    live_hub: LiveHub, mailbox: Mailbox, issuer: str
) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30) as client:
        sign_up(client, mailbox, "taken@example.org", "correct horse battery")
        refused = via_issuer(client, client.get("/login/oidc"), "sub-taken")
        assert refused.status_code == 409
        assert "Log in to it with its password, then link" in refused.text
        assert "iamine_session" not in client.cookies


def test_a_signed_in_member_links_an_identity_and_then_signs_in_with_it(
    live_hub: LiveHub, mailbox: Mailbox, issuer: str
) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30) as client:
        client.get(sign_up(client, mailbox, "linker@example.org", "correct horse battery"))
        client.post(
            "/login",
            data={
                "email": "linker@example.org",
                "password": "correct horse battery",
                "csrf_token": csrf_of(client),
            },
        )
        start = client.post(
            "/dashboard/oidc/link", data={"csrf_token": csrf_of(client, "/dashboard")}
        )
        linked = via_issuer(client, start, "sub-link")
        assert linked.headers["location"] == "/dashboard"
        client.cookies.clear()
        via_issuer(client, client.get("/login/oidc"), "sub-link")
        assert "linker@example.org" in client.get("/dashboard").text


def test_a_callback_from_another_browser_is_refused(live_hub: LiveHub, issuer: str) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30) as victim:
        start = victim.get("/login/oidc")
        answer = httpx.post(start.headers["location"], data={"sub": "sub-new"}, timeout=10)
        back = urlsplit(answer.headers["location"])
    with httpx.Client(base_url=live_hub.url, timeout=30) as attacker:
        refused = attacker.get(f"{back.path}?{back.query}")
        assert refused.status_code == 400
        assert "did not start in this browser" in refused.text
