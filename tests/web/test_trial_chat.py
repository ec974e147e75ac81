"""The trial chat (/chat): visitors on the trial model within quotas, answers from the real
bundled model (whole for a form, streamed for the page's script), CSRF, and bad input."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from playwright.sync_api import Browser, expect

from hub import accounts
from hub.web.chat_quota import Limits, TrialQuota, TrialQuotaExceeded
from hub.web.session import SESSION_COOKIE, open_session
from hub.web.settings import TrialSettings, WebSettings
from tests.hub.conftest import real_worker
from tests.web.conftest import ARTIFACTS, LiveHub

__all__ = ["real_worker"]

PER_BROWSER = 3


@pytest.fixture(scope="module")
def hub_overrides() -> dict[str, Any]:
    trial = TrialSettings(messages_per_browser=PER_BROWSER, messages_per_ip=100, max_tokens=12)
    return {"web": WebSettings(trial=trial)}


def visitor(hub: LiveHub) -> tuple[httpx.Client, str]:
    """A browser that opened /chat: its cookies (CSRF, trial) and the page's CSRF token."""
    client = httpx.Client(base_url=hub.url, timeout=120)
    page = client.get("/chat")
    assert page.status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    return client, token.group(1)


def sse_events(text: str) -> list[tuple[str, dict[str, str]]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        kind = re.search(r"^event: ?(.*)$", block, re.M)
        data = re.search(r"^data: ?(.*)$", block, re.M)
        if kind and data:
            events.append((kind.group(1), orjson.loads(data.group(1))))
    return events


def test_the_page_speaks_of_a_community_pool_not_a_free_service(live_hub: LiveHub) -> None:
    client, _ = visitor(live_hub)
    page = client.get("/chat")
    assert "community pool" in page.text
    assert "free" not in page.text.lower()
    assert 'href="/signup"' in page.text
    assert "smollm2-135m-instruct" in page.text
    assert client.cookies.get("iamine_trial")


def test_a_post_without_the_csrf_token_is_refused(live_hub: LiveHub) -> None:
    client, _ = visitor(live_hub)
    refused = client.post("/chat", data={"message": "hello"})
    assert refused.status_code == 403
    assert "security token" in refused.text
    stream = client.post("/chat/stream", json={"messages": [{"role": "user", "content": "hi"}]})
    assert stream.status_code == 403


def test_a_visitor_gets_the_whole_answer_without_javascript(
    live_hub: LiveHub, real_worker: None
) -> None:
    client, csrf = visitor(live_hub)
    page = client.post("/chat", data={"csrf_token": csrf, "message": "Say hello."})
    assert page.status_code == 200, page.text
    answers = re.findall(
        r'<div class="msg assistant"><strong>[^<]*</strong><p>(.*?)</p>', page.text, re.S
    )
    assert answers and answers[0].strip()


def test_the_stream_sends_the_answer_in_pieces_then_done(
    live_hub: LiveHub, real_worker: None
) -> None:
    client, csrf = visitor(live_hub)
    reply = client.post(
        "/chat/stream",
        json={"messages": [{"role": "user", "content": "Count to three."}]},
        headers={"X-CSRF-Token": csrf},
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = sse_events(reply.text)
    texts = [data["text"] for kind, data in events if kind == "text"]
    assert texts and "".join(texts).strip()
    assert events[-1][0] == "done"


def test_a_browser_past_its_quota_is_refused_with_a_clear_message(
    live_hub: LiveHub, real_worker: None
) -> None:
    client, csrf = visitor(live_hub)
    for _ in range(PER_BROWSER):
        assert client.post("/chat", data={"csrf_token": csrf, "message": "Hi."}).status_code == 200
    refused = client.post("/chat", data={"csrf_token": csrf, "message": "Hi."})
    assert refused.status_code == 429
    assert f"allows {PER_BROWSER} messages per" in refused.text
    assert "sign up" in refused.text
    streamed = client.post(
        "/chat/stream",
        json={"messages": [{"role": "user", "content": "Hi."}]},
        headers={"X-CSRF-Token": csrf},
    )
    assert streamed.status_code == 429
    assert streamed.json()["error"]["code"] == "trial_quota_exceeded"


def test_bad_transcripts_are_refused_with_what_is_wrong(live_hub: LiveHub) -> None:
    client, csrf = visitor(live_hub)
    headers = {"X-CSRF-Token": csrf}
    cases = [
        ({"messages": []}, "1 to 20 messages"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "Message 1 must be the user's"),
        ({"messages": [{"role": "user", "content": "x" * 3000}]}, "1 to 2000 characters"),
        ({"messages": [{"role": "user", "content": "hi"}], "model": "other"}, "cannot chat"),
    ]
    for body, expected in cases:
        refused = client.post("/chat/stream", json=body, headers=headers)
        assert refused.status_code == 400, body
        assert expected in refused.json()["error"]["message"]
    not_json = client.post("/chat/stream", content=b"{", headers=headers)
    assert not_json.status_code == 400
    empty_form = client.post("/chat", data={"csrf_token": csrf, "message": "  "})
    assert empty_form.status_code == 400
    assert "1 to 2000 characters" in empty_form.text


async def _member_session(database_url: str, name: str, verified: bool) -> str:
    """A user with a web account (verified or not) and a browser session of theirs."""
    conn = await asyncpg.connect(database_url)
    try:
        user = await accounts.create_user(conn, name)
        await conn.execute(
            "INSERT INTO web_accounts (user_id, email, email_verified_at) VALUES ($1, $2, $3)",
            user.id,
            f"{name}@example.org",
            datetime.now(UTC) if verified else None,
        )
        secret, _ = await open_session(conn, method="password", ttl_s=3600, user_id=user.id)
        return secret
    finally:
        await conn.close()


def member(hub: LiveHub, name: str, verified: bool) -> tuple[httpx.Client, str]:
    """A browser signed in as a member, and its page's CSRF token."""
    work = _member_session(hub.database_url, name, verified)
    with ThreadPoolExecutor(1) as thread:  # no event loop of this thread is touched
        secret = thread.submit(asyncio.run, work).result()
    client = httpx.Client(base_url=hub.url, timeout=120, cookies={SESSION_COOKIE: secret})
    client.get("/chat")
    return client, client.cookies["iamine_csrf"]  # the token forms post is the CSRF cookie


def test_an_unverified_member_cannot_chat(live_hub: LiveHub) -> None:
    client, csrf = member(live_hub, "unverified-ann", verified=False)
    page = client.get("/chat")
    assert "Verify your email address first" in page.text
    assert "data-chat-form" not in page.text
    refused = client.post(
        "/chat/stream",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"X-CSRF-Token": csrf},
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "email_unverified"


def test_a_verified_member_chats_with_their_account_without_the_trial_quota(
    live_hub: LiveHub, real_worker: None
) -> None:
    client, csrf = member(live_hub, "verified-ben", verified=True)
    page = client.get("/chat")
    assert "You chat with your account" in page.text
    assert 'value="smollm2-135m-instruct"' in page.text
    for _ in range(PER_BROWSER + 1):
        answered = client.post("/chat", data={"csrf_token": csrf, "message": "Hi."})
        assert answered.status_code == 200, answered.text


def test_the_quota_counts_per_address_and_per_browser_and_frees_with_time() -> None:
    now = [0.0]
    quota = TrialQuota(clock=lambda: now[0])
    limits = Limits(per_ip=3, per_cookie=2, window_s=60)
    quota.take("10.0.0.1", "a", limits)
    quota.take("10.0.0.1", "a", limits)
    with pytest.raises(TrialQuotaExceeded) as browser:
        quota.take("10.0.0.1", "a", limits)
    assert "from one browser" in browser.value.message
    quota.take("10.0.0.1", "b", limits)
    with pytest.raises(TrialQuotaExceeded) as address:
        quota.take("10.0.0.1", "c", limits)
    assert "from one address" in address.value.message
    assert address.value.retry_after_s == 61
    now[0] = 61.0
    quota.take("10.0.0.1", "a", limits)


def test_the_quota_forgets_the_longest_idle_keys_past_its_bound() -> None:
    quota = TrialQuota(max_keys=4, clock=lambda: 0.0)
    limits = Limits(per_ip=1, per_cookie=1, window_s=60)
    for i in range(3):
        quota.take(f"10.0.0.{i}", None, limits)
    quota.take("10.0.0.9", "x", limits)
    quota.take("10.0.0.0", None, limits)  # forgotten: counts again from zero


def test_a_visitor_sees_the_answer_stream_in_on_the_page_in_chromium(
    browser: Browser, live_hub: LiveHub, real_worker: None
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
    page = context.new_page()
    page.goto(live_hub.url + "/chat")
    page.screenshot(path=ARTIFACTS / "chat.png", full_page=True)
    page.get_by_label("Your message").fill("Name a colour.")
    with page.expect_response("**/chat/stream") as streamed:
        page.get_by_role("button", name="Send").click()
    assert streamed.value.headers["content-type"].startswith("text/event-stream")
    answer = page.locator(".msg.assistant").last
    expect(answer).to_have_attribute("data-done", "true", timeout=60_000)
    assert answer.locator("p").inner_text().strip() not in ("", "…")
    expect(page.locator("[data-chat-error]")).to_have_text("")
    expect(page.locator(".msg.user")).to_have_text(re.compile("Name a colour."))
    page.screenshot(path=ARTIFACTS / "chat-answer.png", full_page=True)
    context.close()
