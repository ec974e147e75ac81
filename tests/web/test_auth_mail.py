"""When the mail server cannot be reached: the account exists, the page says what to do."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hub.web.settings import WebSettings
from tests.hub.conftest import free_port
from tests.web.conftest import LiveHub, csrf_of, log_in

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def hub_overrides() -> dict[str, Any]:
    """Mail goes to a loopback port nobody listens on."""
    return {
        "web": WebSettings(
            smtp_host="127.0.0.1", smtp_port=free_port(), smtp_starttls=False, smtp_timeout_s=5
        )
    }


def test_sign_up_with_the_mail_server_down_says_so_and_the_link_can_be_sent_again(
    live_hub: LiveHub,
) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30) as client:
        created = client.post(
            "/signup",
            data={
                "email": "jo@example.org",
                "password": PASSWORD,
                "csrf_token": csrf_of(client, "/signup"),
            },
        )
        assert created.status_code == 201
        assert "the mail server refused the verification mail" in created.text
        assert log_in(client, "jo@example.org", PASSWORD).status_code == 303
        again = client.post("/verify/resend", data={"csrf_token": csrf_of(client, "/dashboard")})
        assert again.status_code == 502
        assert "The mail server refused the mail; try again later." in again.text
