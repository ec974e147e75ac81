"""Sign-up, verification mail, password sign-in, reset, admin-token sign-in, dashboard tokens."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx

from memory.crypto import KeyUnwrapError, KeyWrap, decrypt_text, encrypt_text, unwrap_data_key
from memory.keys import open_key
from tests.web.conftest import (
    LiveHub,
    Mailbox,
    csrf_of,
    log_in,
    mail_link,
    mint,
    sign_up,
    verified_member,
)

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a new long password"


def test_sign_up_mail_link_verifies_the_address_then_the_member_mints_a_working_token(
    live_hub: LiveHub, mailbox: Mailbox
) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30) as client:
        link = sign_up(client, mailbox, "ada@example.org", PASSWORD)
        assert link.startswith("/verify?token=")
        assert log_in(client, "ada@example.org", PASSWORD).headers["location"] == "/dashboard"
        dashboard = client.get("/dashboard")
        assert "Confirm your address" in dashboard.text
        refused = client.post(
            "/dashboard/tokens", data={"csrf_token": csrf_of(client, "/dashboard")}
        )
        assert refused.status_code == 403
        assert "Confirm your email address first" in refused.text

        assert "Address confirmed" in client.get(link).text
        assert client.get(link).status_code == 400  # a link works once
        token, memory = mint(client)
        assert memory == "linked"

    listed = httpx.get(
        live_hub.url + "/v1/tokens", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert listed.status_code == 200
    assert [t["name"] for t in listed.json()["data"]] == ["laptop"]


async def _same_key(database_url: str, user: str, tokens: list[str]) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        user_id = await conn.fetchval("SELECT id FROM users WHERE name = $1", user)
        keys = []
        for token in tokens:
            token_id = await conn.fetchval(
                "SELECT id FROM tokens WHERE prefix = $1", token.split("_")[1]
            )
            keys.append(await open_key(conn, user_id, token_id, token, provision=False))
    finally:
        await conn.close()
    sealed = encrypt_text(keys[0].data_key, "a secret")
    return all(decrypt_text(k.data_key, sealed) == "a secret" for k in keys[1:])


def test_tokens_minted_in_two_sessions_open_the_same_memory(
    live_hub: LiveHub, mailbox: Mailbox
) -> None:
    with verified_member(live_hub, mailbox, "bob@example.org", PASSWORD) as client:
        first, _ = mint(client, "first")
        client.post("/logout", data={"csrf_token": csrf_of(client, "/")})
        assert log_in(client, "bob@example.org", PASSWORD).status_code == 303
        second, memory = mint(client, "second")
    assert memory == "linked"
    assert asyncio.run(_same_key(live_hub.database_url, "bob", [first, second]))


def test_revoking_a_token_on_the_dashboard_stops_it(live_hub: LiveHub, mailbox: Mailbox) -> None:
    with verified_member(live_hub, mailbox, "cy@example.org", PASSWORD) as client:
        token, _ = mint(client)
        prefix = token.split("_")[1]
        revoked = client.post(
            f"/dashboard/tokens/{prefix}/revoke",
            data={"csrf_token": csrf_of(client, "/dashboard")},
        )
        assert revoked.status_code == 303
        assert "revoked" in client.get("/dashboard").text
        other = client.post(
            "/dashboard/tokens/0123456789/revoke", data={"csrf_token": csrf_of(client)}
        )
        assert other.status_code == 404
    answer = httpx.get(
        live_hub.url + "/v1/tokens", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 401


def test_a_post_without_the_csrf_token_is_refused(live_hub: LiveHub, mailbox: Mailbox) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30) as client:
        csrf_of(client)
        answer = client.post("/login", data={"email": "x@example.org", "password": PASSWORD})
        assert answer.status_code == 403
        assert "security token is missing or out of date" in answer.text
    with verified_member(live_hub, mailbox, "dee@example.org", PASSWORD) as client:
        forged = client.post(
            "/dashboard/tokens", data={"name": "x"}, headers={"X-CSRF-Token": "forged"}
        )
        assert forged.status_code == 403
        assert "No tokens yet" in client.get("/dashboard").text


def test_bad_sign_up_input_gets_a_clear_error(live_hub: LiveHub, mailbox: Mailbox) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30) as client:
        token = csrf_of(client, "/signup")

        def post(**data: str) -> httpx.Response:
            return client.post("/signup", data={"csrf_token": token} | data)

        bad_email = post(email="not-an-address", password=PASSWORD)
        assert bad_email.status_code == 400
        assert "Enter a valid email address." in bad_email.text
        short = post(email="eve@example.org", password="short")
        assert short.status_code == 400
        assert "This password is too short." in short.text
        assert "At least 10 characters." in short.text
        bad_name = post(email="eve@example.org", password=PASSWORD, name="-nope")
        assert bad_name.status_code == 400
        assert "User names are 1-64 characters" in bad_name.text
        sign_up(client, mailbox, "eve@example.org", PASSWORD)
        again = post(email="EVE@example.org", password=PASSWORD)
        assert again.status_code == 409
        assert "exists already" in again.text


def test_a_wrong_password_is_refused(live_hub: LiveHub, mailbox: Mailbox) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30) as client:
        sign_up(client, mailbox, "fay@example.org", PASSWORD)
        wrong = log_in(client, "fay@example.org", "not the password")
        assert wrong.status_code == 401
        assert "Wrong email or password." in wrong.text
        unknown = log_in(client, "nobody@example.org", PASSWORD)
        assert unknown.status_code == 401
        assert "iamine_session" not in client.cookies


def test_a_reset_link_sets_a_new_password_and_ends_the_sessions(
    live_hub: LiveHub, mailbox: Mailbox
) -> None:
    with verified_member(live_hub, mailbox, "gus@example.org", PASSWORD) as client:
        old_session = client.cookies["iamine_session"]
        with httpx.Client(base_url=live_hub.url, timeout=30) as other:
            asked = other.post(
                "/reset", data={"email": "gus@example.org", "csrf_token": csrf_of(other, "/reset")}
            )
            assert "If this address has an account" in asked.text
            link = mail_link(mailbox.wait_for("gus@example.org", 2))
            assert link.startswith("/reset/confirm?token=")
            form = other.get(link)
            assert 'name="token"' in form.text
            token = link.split("token=")[1]
            done = other.post(
                "/reset/confirm",
                data={
                    "token": token,
                    "password": "a new long password",
                    "csrf_token": csrf_of(other),
                },
            )
            assert "Your new password is set." in done.text
            reused = other.post(
                "/reset/confirm",
                data={"token": token, "password": PASSWORD, "csrf_token": csrf_of(other)},
            )
            assert reused.status_code == 400
        ended = httpx.get(live_hub.url + "/dashboard", cookies={"iamine_session": old_session})
        assert ended.status_code == 303
        assert log_in(client, "gus@example.org", PASSWORD).status_code == 401
        assert log_in(client, "gus@example.org", NEW_PASSWORD).status_code == 303


def test_the_admin_token_signs_in_to_an_admin_session(live_hub: LiveHub) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30) as client:
        wrong = client.post(
            "/login/admin", data={"token": live_hub.user_token, "csrf_token": csrf_of(client)}
        )
        assert wrong.status_code == 401
        assert "not a live admin token" in wrong.text
        signed = client.post(
            "/login/admin", data={"token": live_hub.admin_token, "csrf_token": csrf_of(client)}
        )
        assert signed.status_code == 303
        assert signed.headers["location"] == "/admin"
        assert 'href="/admin"' in client.get("/").text
        assert client.get("/dashboard").headers["location"] == "/admin"


def test_logging_out_ends_the_session(live_hub: LiveHub, mailbox: Mailbox) -> None:
    with verified_member(live_hub, mailbox, "hal@example.org", PASSWORD) as client:
        session = client.cookies["iamine_session"]
        out = client.post("/logout", data={"csrf_token": csrf_of(client, "/")})
        assert out.status_code == 303
        stale = httpx.get(live_hub.url + "/dashboard", cookies={"iamine_session": session})
        assert stale.status_code == 303
        assert stale.headers["location"] == "/login?next=/dashboard"


WEB_TABLES = {
    "web_accounts": "SELECT * FROM web_accounts",
    "web_sessions": "SELECT * FROM web_sessions",
    "web_key_wraps": "SELECT * FROM web_key_wraps",
    "web_mail_tokens": "SELECT * FROM web_mail_tokens",
}


async def _web_rows(database_url: str) -> dict[str, list[asyncpg.Record]]:
    conn = await asyncpg.connect(database_url)
    try:
        return {table: await conn.fetch(query) for table, query in WEB_TABLES.items()}
    finally:
        await conn.close()


def _opens(wrap: KeyWrap, secret: str) -> bool:
    try:
        unwrap_data_key(wrap, secret)
    except KeyUnwrapError:
        return False
    return True


def test_the_database_holds_no_password_cookie_or_usable_key(
    live_hub: LiveHub, mailbox: Mailbox
) -> None:
    with verified_member(live_hub, mailbox, "ivo@example.org", PASSWORD) as client:
        cookie = client.cookies["iamine_session"]
        mint(client)
    rows = asyncio.run(_web_rows(live_hub.database_url))
    stored = [
        value.hex() if isinstance(value, bytes) else str(value)
        for table in rows.values()
        for row in table
        for value in row.values()
    ]
    assert not [v for v in stored if PASSWORD in v or cookie in v]
    assert all(a["password_hash"].startswith("$argon2id$") for a in rows["web_accounts"])
    ivo = next(a["user_id"] for a in rows["web_accounts"] if a["email"] == "ivo@example.org")
    wraps = [
        KeyWrap(
            bytes(w["salt"]), bytes(w["wrapped"]), w["key_version"], w["kdf"], w["format_version"]
        )
        for w in rows["web_key_wraps"]
        if w["user_id"] == ivo
    ]
    assert len(wraps) == 2  # the password's and the session's
    # Whatever the database holds opens no wrap; the browser's cookie opens the session's.
    assert not [v for v in stored if len(v) >= 32 and any(_opens(w, v) for w in wraps)]
    assert any(_opens(wrap, cookie) for wrap in wraps)


def test_mails_to_one_account_are_spaced_out(live_hub: LiveHub, mailbox: Mailbox) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30) as client:
        sign_up(client, mailbox, "kim@example.org", PASSWORD)
        log_in(client, "kim@example.org", PASSWORD)
        again = client.post("/verify/resend", data={"csrf_token": csrf_of(client, "/dashboard")})
        assert again.status_code == 429
        assert "We sent you a link moments ago" in again.text
        for _ in range(2):
            asked = client.post(
                "/reset", data={"email": "kim@example.org", "csrf_token": csrf_of(client)}
            )
            assert "If this address has an account" in asked.text
    # SMTP delivery is done when the page answers: these are all the mails there will be.
    assert [m["Subject"] for m in mailbox.messages if m["To"] == "kim@example.org"] == [
        "Confirm your address for the iamine pool",
        "Choose a new password for the iamine pool",
    ]


def test_a_taken_user_name_is_refused_on_sign_up(live_hub: LiveHub, mailbox: Mailbox) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30) as client:
        taken = client.post(
            "/signup",
            data={
                "email": "lou@example.org",
                "password": PASSWORD,
                "name": "alice",
                "csrf_token": csrf_of(client, "/signup"),
            },
        )
        assert taken.status_code == 409
        assert "This user name is taken" in taken.text


def test_sign_in_refusals_read_in_the_readers_language(live_hub: LiveHub) -> None:
    with httpx.Client(base_url=live_hub.url, timeout=30, cookies={"lang": "fr"}) as client:
        wrong = log_in(client, "nobody@example.org", PASSWORD)
        assert "Adresse e-mail ou mot de passe incorrect." in wrong.text
        forged = client.post("/login", data={"email": "x@example.org", "csrf_token": "forged"})
        assert forged.status_code == 403
        assert "Ce formulaire a été refusé" in forged.text


def test_signing_in_again_ends_the_previous_session(live_hub: LiveHub, mailbox: Mailbox) -> None:
    with verified_member(live_hub, mailbox, "uma@example.org", PASSWORD) as client:
        first = client.cookies["iamine_session"]
        assert log_in(client, "uma@example.org", PASSWORD).status_code == 303
        assert client.cookies["iamine_session"] != first
        assert client.get("/dashboard").status_code == 200
    stale = httpx.get(live_hub.url + "/dashboard", cookies={"iamine_session": first})
    assert stale.status_code == 303
