"""The pages' languages: both catalogs hold the same messages, every message the pages use is in
them, the reader's choice (cookie, then Accept-Language) and the switch that remembers it."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from babel.messages.pofile import read_po
from playwright.sync_api import Browser, expect
from starlette.requests import Request

from hub.web.admin_cleanup import TASKS
from hub.web.i18n import LANGUAGES, LOCALES_DIR, pick_language, translator
from hub.web.session import local_path
from tests.web.conftest import ARTIFACTS, LiveHub

WEB_DIR = Path(__file__).parents[2] / "hub" / "web"
GETTEXT_CALL = re.compile(r"""\b_\(\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')\s*\)""")


def catalog_ids(lang: str) -> set[str]:
    with (LOCALES_DIR / lang / "LC_MESSAGES" / "messages.po").open("rb") as po:
        return {str(m.id) for m in read_po(po) if m.id}


def used_messages() -> set[str]:
    """Every literal ``_("…")`` in the templates and the web package, and the cleanup labels."""
    found = {task.label for task in TASKS.values()}
    for path in WEB_DIR.rglob("*"):
        if path.suffix in (".html", ".py"):
            for match in GETTEXT_CALL.finditer(path.read_text()):
                found.add(match.group(1) if match.group(1) is not None else match.group(2))
    return found


def test_both_catalogs_have_the_same_messages() -> None:
    english, french = catalog_ids("en"), catalog_ids("fr")
    assert english == french, {"only en": english - french, "only fr": french - english}


def test_every_message_the_pages_use_is_in_both_catalogs() -> None:
    used = used_messages()
    assert len(used) > 100
    for lang in LANGUAGES:
        assert sorted(used - catalog_ids(lang)) == [], f"missing from the {lang} catalog"


def test_every_french_message_is_translated() -> None:
    with (LOCALES_DIR / "fr" / "LC_MESSAGES" / "messages.po").open("rb") as po:
        empty = [str(m.id) for m in read_po(po) if m.id and not m.string]
    assert empty == []


def test_a_message_reads_in_french_and_an_unknown_one_stays_english() -> None:
    assert translator("fr")("Log in") == "Se connecter"
    assert translator("en")("Log in") == "Log in"
    assert translator("fr")("Not in any catalog") == "Not in any catalog"
    assert translator("xx")("Log in") == "Log in"


def request_with(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, "en"),
        ({"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.8"}, "fr"),
        ({"Accept-Language": "de-DE, en;q=0.5, fr;q=0.7"}, "fr"),
        ({"Accept-Language": "fr;q=0, en;q=0.1"}, "en"),
        ({"Accept-Language": "fr;q=abc"}, "en"),
        ({"Accept-Language": "de"}, "en"),
        ({"Accept-Language": "fr", "Cookie": "lang=en"}, "en"),
        ({"Cookie": "lang=fr"}, "fr"),
        ({"Cookie": "lang=klingon", "Accept-Language": "fr"}, "fr"),
    ],
)
def test_the_language_is_the_cookie_then_accept_language_then_english(
    headers: dict[str, str], expected: str
) -> None:
    assert pick_language(request_with(headers)) == expected


def test_the_switch_returns_only_to_a_page_of_this_site() -> None:
    assert local_path("/chat") == "/chat"
    for elsewhere in [
        "https://evil.example/",
        "//evil.example",
        "/\\evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "chat",
    ]:
        assert local_path(elsewhere) == "/"


def test_the_switch_remembers_the_choice_and_refuses_a_post_without_csrf(
    live_hub: LiveHub,
) -> None:
    client = httpx.Client(base_url=live_hub.url, timeout=30)
    page = client.get("/chat")
    assert 'lang="en"' in page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    assert client.post("/lang", data={"lang": "fr", "next": "/chat"}).status_code == 403
    switched = client.post(
        "/lang", data={"csrf_token": token.group(1), "lang": "fr", "next": "/chat"}
    )
    assert switched.status_code == 303
    assert switched.headers["location"] == "/chat"
    again = client.get("/chat")
    assert 'lang="fr"' in again.text
    assert "Essayer le pool" in again.text
    assert "pool communautaire" in again.text


def test_the_fr_en_switch_in_chromium_translates_and_is_remembered(
    browser: Browser, live_hub: LiveHub
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(live_hub.url + "/chat")
    expect(page.get_by_role("heading", level=1)).to_have_text("Try the pool")
    page.get_by_role("button", name="FR", exact=True).click()
    expect(page).to_have_url(live_hub.url + "/chat")
    expect(page.get_by_role("heading", level=1)).to_have_text("Essayer le pool")
    page.goto(live_hub.url + "/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Un pool d'IA coopératif")
    expect(page.locator("html")).to_have_attribute("lang", "fr")
    page.screenshot(path=ARTIFACTS / "home-fr.png", full_page=True)
    page.get_by_role("button", name="EN", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("A cooperative AI pool")
    context.close()
