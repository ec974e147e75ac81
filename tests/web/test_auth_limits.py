"""Sign-in rate limits: per account, then per client address (all tests here come from loopback)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.web.conftest import LiveHub, Mailbox, log_in, sign_up, web_settings

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def hub_overrides(mailbox: Mailbox) -> dict[str, Any]:
    """Small limits, so that a test reaches them in a few tries."""
    return {"web": web_settings(mailbox, login_max_failures_account=3, login_max_failures_ip=5)}


def test_failed_sign_ins_are_limited_per_account_then_per_address(
    live_hub: LiveHub, mailbox: Mailbox
) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30) as client:
        sign_up(client, mailbox, "ann@example.org", PASSWORD)
        sign_up(client, mailbox, "ben@example.org", PASSWORD)
        for _ in range(3):
            assert log_in(client, "ann@example.org", "wrong password").status_code == 401
        locked = log_in(client, "ANN@example.org", PASSWORD)
        assert locked.status_code == 429
        assert "Too many failed sign-ins" in locked.text
        assert log_in(client, "ben@example.org", PASSWORD).status_code == 303

        for _ in range(2):
            assert log_in(client, "ben@example.org", "wrong password").status_code == 401
        assert log_in(client, "ben@example.org", PASSWORD).status_code == 429
        admin = client.post(
            "/login/admin",
            data={"token": live_hub.admin_token, "csrf_token": client.cookies["iamine_csrf"]},
        )
        assert admin.status_code == 429
