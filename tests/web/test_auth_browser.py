"""The sign-up flow in headless Chromium: sign up, mail, follow the link, log in, create a token.

Screenshots of each page land in ``tests/web/artifacts/``, with the flow's time in
``signup-timing.txt`` (a figure for the record, not an assertion).
"""

from __future__ import annotations

import re
import time

from playwright.sync_api import Browser, expect

from tests.web.conftest import ARTIFACTS, LiveHub, Mailbox, mail_link

PASSWORD = "correct horse battery"


def test_sign_up_then_verify_then_log_in_then_create_a_token_in_chromium(
    browser: Browser, live_hub: LiveHub, mailbox: Mailbox
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
    page = context.new_page()
    started = time.monotonic()

    page.goto(live_hub.url + "/signup")
    page.screenshot(path=ARTIFACTS / "signup.png", full_page=True)
    page.get_by_label("Email").fill("ivy@example.org")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Check your mail")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "signup-mail-sent.png", full_page=True)

    page.goto(live_hub.url + mail_link(mailbox.wait_for("ivy@example.org")))
    expect(page.get_by_role("heading", name="Address confirmed")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "verified.png", full_page=True)

    page.goto(live_hub.url + "/login")
    page.screenshot(path=ARTIFACTS / "login.png", full_page=True)
    page.get_by_label("Email").fill("ivy@example.org")
    page.get_by_label("Password").fill(PASSWORD)
    page.locator("main").get_by_role("button", name="Log in").click()
    expect(page).to_have_url(live_hub.url + "/dashboard")
    page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)

    page.get_by_label("Name", exact=True).fill("phone")
    page.get_by_role("button", name="Create a token").click()
    token = page.locator("[data-token]")
    expect(token).to_have_text(re.compile(r"^iam_[0-9a-f]{10}_"))
    expect(page.locator("[data-memory]")).to_have_text("linked")
    elapsed = time.monotonic() - started
    page.screenshot(path=ARTIFACTS / "dashboard-token.png", full_page=True)
    (ARTIFACTS / "signup-timing.txt").write_text(
        f"sign up -> mail -> verify -> log in -> token: {elapsed:.2f} s\n"
    )
    expect(page.locator("tr[data-prefix]")).to_have_count(1)
    for path, shot, heading in (
        ("/dashboard/tools", "tools.png", "Use the pool from your tools"),
        ("/dashboard/conversations", "conversations.png", "Your conversations"),
        ("/dashboard/memory/delete", "memory-delete.png", "Delete all your memory"),
    ):
        page.goto(live_hub.url + path)
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
        page.screenshot(path=ARTIFACTS / shot, full_page=True)
    context.close()


def test_the_public_sign_in_pages_render_in_chromium(browser: Browser, live_hub: LiveHub) -> None:
    page = browser.new_page()
    for path, shot, heading in (
        ("/reset", "reset.png", "Reset your password"),
        ("/login/admin", "login-admin.png", "Admin log in"),
    ):
        page.goto(live_hub.url + path)
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
        page.screenshot(path=ARTIFACTS / shot, full_page=True)
    page.close()


def test_pages_are_usable_with_the_keyboard_alone(browser: Browser, live_hub: LiveHub) -> None:
    page = browser.new_page()
    page.goto(live_hub.url + "/login")
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.get_by_label("Email").focus()
    page.keyboard.type("nobody@example.org")
    page.keyboard.press("Tab")
    page.keyboard.type("wrong password!")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    page.screenshot(path=ARTIFACTS / "login-refused.png", full_page=True)
    page.close()
