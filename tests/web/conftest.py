"""Web page fixtures: a live hub (tests/hub/conftest.py's), a local SMTP server, headless Chromium.

A module that needs other hub settings overrides ``hub_overrides`` as the hub tests do; the
default here points the hub's mail at the module's :class:`Mailbox`.
"""

from __future__ import annotations

import email
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from playwright.sync_api import Browser, sync_playwright

from hub.web.settings import WebSettings
from tests.hub.conftest import LiveHub, free_port, live_hub

__all__ = ["LiveHub", "live_hub"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
LINK = re.compile(r"https?://\S+")
TOKEN_TEXT = re.compile(r"iam_[0-9a-f]{10}_[A-Za-z0-9_-]{43}")


@dataclass
class Mailbox:
    """Mails received by the test's SMTP server (aiosmtpd, on loopback)."""

    port: int
    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """aiosmtpd's hook: keep the mail."""
        assert isinstance(envelope.content, bytes)
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def wait_for(self, to: str, count: int = 1, timeout_s: float = 15) -> Message:
        """The ``count``-th mail to ``to`` (the hub sends from its own thread: a bounded poll)."""
        deadline = time.monotonic() + timeout_s
        while True:
            mine = [m for m in self.messages if m["To"] == to]
            if len(mine) >= count:
                return mine[count - 1]
            if time.monotonic() >= deadline:
                raise AssertionError(f"no mail number {count} to {to} after {timeout_s} s")
            time.sleep(0.05)


def mail_link(message: Message) -> str:
    """The link of a hub mail as path and query (the live hub's port is not the public URL's)."""
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    found = LINK.search(body.decode())
    assert found, body
    parts = urlsplit(found[0])
    return f"{parts.path}?{parts.query}"


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    """A local SMTP server for the module; its mails land in the returned mailbox."""
    box = Mailbox(free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def web_settings(mailbox: Mailbox, **fields: Any) -> WebSettings:
    """Web settings that mail to the test's SMTP server (no TLS on loopback)."""
    return WebSettings(smtp_host="127.0.0.1", smtp_port=mailbox.port, smtp_starttls=False, **fields)


@pytest.fixture(scope="module")
def hub_overrides(mailbox: Mailbox) -> dict[str, Any]:
    """The live hub mails to the module's mailbox."""
    return {"web": web_settings(mailbox)}


def csrf_of(client: httpx.Client, path: str = "/login") -> str:
    """Load a page so the client holds a CSRF cookie, and return the token forms post."""
    client.get(path)
    token = client.cookies.get("iamine_csrf")
    assert token
    return token


@pytest.fixture(scope="module")
def browser(live_hub: LiveHub) -> Iterator[Browser]:
    """Debian's headless Chromium driven by Playwright (no browser download), for the module.

    Playwright's sync API runs an event loop on the test thread while it lives, so no
    ``asyncio.run`` may happen meanwhile: the fixture starts after the module's live hub (whose
    set-up and tear-down use ``asyncio.run``) and stops before it; a browser test must not call
    ``asyncio.run`` itself.
    """
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup-browser (installs Debian chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def sign_up(client: httpx.Client, mailbox: Mailbox, address: str, password: str) -> str:
    """Sign up ``address`` and return the path of the verification link mailed to it."""
    before = len([m for m in mailbox.messages if m["To"] == address])
    answer = client.post(
        "/signup",
        data={"email": address, "password": password, "csrf_token": csrf_of(client, "/signup")},
    )
    assert answer.status_code == 201, answer.text
    return mail_link(mailbox.wait_for(address, before + 1))


def log_in(client: httpx.Client, address: str, password: str) -> httpx.Response:
    """Sign in with email and password (the answer is not followed)."""
    return client.post(
        "/login",
        data={"email": address, "password": password, "csrf_token": csrf_of(client)},
    )


@contextmanager
def verified_member(
    hub: LiveHub, mailbox: Mailbox, address: str, password: str
) -> Iterator[httpx.Client]:
    """A client signed in as a new, verified member."""
    with httpx.Client(base_url=hub.url, timeout=30) as client:
        assert client.get(sign_up(client, mailbox, address, password)).status_code == 200
        assert log_in(client, address, password).status_code == 303
        yield client


def mint(client: httpx.Client, name: str = "laptop") -> tuple[str, str]:
    """Create a token on the dashboard; return its text and its memory status."""
    page = client.post(
        "/dashboard/tokens",
        data={"name": name, "expires_in_days": "30", "csrf_token": csrf_of(client, "/dashboard")},
    )
    assert page.status_code == 201, page.text
    token = TOKEN_TEXT.search(page.text)
    memory = re.search(r"data-memory>([a-z_]+)<", page.text)
    assert token and memory
    return token[0], memory[1]
