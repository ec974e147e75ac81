"""The dashboard beyond tokens: memory switch, conversations, deleting all, chat preferences."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import asyncpg
import httpx

from memory.conversations import record_exchange
from memory.keys import open_key
from memory.l2 import append_turn
from tests.web.conftest import LiveHub, Mailbox, csrf_of, mint, verified_member

PASSWORD = "correct horse battery"


async def _store_turn(database_url: str, token: str, conversation_id: str, text: str) -> None:
    """Store one exchange the way the chat path does, under the key the token opens."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT id, user_id FROM tokens WHERE prefix = $1", token.split("_")[1]
        )
        key = await open_key(conn, row["user_id"], row["id"], token, provision=False)
        now = datetime.now(UTC)
        await record_exchange(conn, row["user_id"], conversation_id, now)
        messages = [{"role": "user", "content": text}, {"role": "assistant", "content": "Noted."}]
        await append_turn(conn, key, row["user_id"], conversation_id, messages, now=now)
    finally:
        await conn.close()


async def _drop_session_wraps(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DELETE FROM web_key_wraps WHERE session_id IS NOT NULL")
    finally:
        await conn.close()


def test_a_conversation_stored_by_a_token_reads_in_the_browser_and_can_be_deleted(
    live_hub: LiveHub, mailbox: Mailbox
) -> None:
    with verified_member(live_hub, mailbox, "nia@example.org", PASSWORD) as client:
        token, _ = mint(client)
        asyncio.run(_store_turn(live_hub.database_url, token, "conv-web-1", "My cat is Tom."))
        listed = client.get("/dashboard/conversations")
        assert 'data-conversation="conv-web-1"' in listed.text
        page = client.get("/dashboard/conversations/conv-web-1")
        assert page.status_code == 200
        assert "My cat is Tom." in page.text
        assert client.get("/dashboard/conversations/nope").status_code == 404
        assert client.get("/dashboard/conversations/bad id!").status_code == 400
        deleted = client.post(
            "/dashboard/conversations/conv-web-1/delete", data={"csrf_token": csrf_of(client)}
        )
        assert deleted.status_code == 303
        assert "No conversations yet." in client.get("/dashboard/conversations").text


def test_deleting_all_memory_needs_the_typed_word_then_shreds_the_key(
    live_hub: LiveHub, mailbox: Mailbox
) -> None:
    with verified_member(live_hub, mailbox, "ola@example.org", PASSWORD) as client:
        token, _ = mint(client)
        asyncio.run(_store_turn(live_hub.database_url, token, "conv-web-2", "A secret."))
        form = client.get("/dashboard/memory/delete")
        assert 'data-count="conversations">1<' in form.text
        refused = client.post(
            "/dashboard/memory/delete", data={"confirm": "yes", "csrf_token": csrf_of(client)}
        )
        assert refused.status_code == 400
        assert "nothing was deleted" in refused.text
        done = client.post(
            "/dashboard/memory/delete", data={"confirm": "delete", "csrf_token": csrf_of(client)}
        )
        assert done.status_code == 303
        assert "No conversations yet." in client.get("/dashboard/conversations").text
    settings = httpx.get(
        live_hub.url + "/v1/conversations",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert settings.json()["data"] == []


def test_the_memory_switch_turns_memory_on_only_with_the_key_in_hand(
    live_hub: LiveHub, mailbox: Mailbox
) -> None:
    with verified_member(live_hub, mailbox, "mo@example.org", PASSWORD) as client:
        token, _ = mint(client)
        switched = client.post(
            "/dashboard/memory",
            data={"enabled": "true", "csrf_token": csrf_of(client, "/dashboard")},
        )
        assert switched.status_code == 303
        settings = httpx.get(
            live_hub.url + "/v1/memory/settings",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert settings.json() == {"enabled": True, "compaction": False}
        asyncio.run(_drop_session_wraps(live_hub.database_url))
        refused = client.post(
            "/dashboard/memory", data={"enabled": "true", "csrf_token": csrf_of(client)}
        )
        assert refused.status_code == 403
        assert "This session cannot open your memory" in refused.text
        off = client.post("/dashboard/memory", data={"csrf_token": csrf_of(client)})
        assert off.status_code == 303
        assert 'name="enabled" value="true" >' in client.get("/dashboard").text


def test_chat_preferences_saved_on_the_dashboard_are_the_apis(
    live_hub: LiveHub, mailbox: Mailbox
) -> None:
    with verified_member(live_hub, mailbox, "pia@example.org", PASSWORD) as client:
        token, _ = mint(client)
        saved = client.post(
            "/dashboard/preferences",
            data={"min_trust": "2", "auto_review": "true", "csrf_token": csrf_of(client)},
        )
        assert saved.status_code == 303
        bad = client.post(
            "/dashboard/preferences", data={"min_trust": "9", "csrf_token": csrf_of(client)}
        )
        assert bad.status_code == 400
        assert "a level from 0 to 3" in bad.text
    answer = httpx.get(
        live_hub.url + "/v1/preferences", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.json() == {
        "auto_review": True,
        "min_trust": 2,
        "federation_chat": False,
        "federation_memory": False,
    }


def test_facts_are_listed_searched_and_deleted_on_the_dashboard(
    live_hub: LiveHub, mailbox: Mailbox
) -> None:
    with verified_member(live_hub, mailbox, "quin@example.org", PASSWORD) as client:
        token, _ = mint(client)
        headers = {"Authorization": f"Bearer {token}"}
        for text in ("My sister lives in Lyon.", "I am allergic to peanuts."):
            stored = httpx.post(
                live_hub.url + "/v1/memory/facts", json={"text": text}, headers=headers, timeout=60
            )
            assert stored.status_code == 201, stored.text
        listed = client.get("/dashboard/facts")
        assert "My sister lives in Lyon." in listed.text
        assert "I am allergic to peanuts." in listed.text
        found = client.get("/dashboard/facts", params={"q": "Which food must I avoid?"})
        rows = found.text.split("<tbody>")[1]
        assert rows.index("peanuts") < rows.index("Lyon")
        fact_id = stored.json()["id"]
        deleted = client.post(
            f"/dashboard/facts/{fact_id}/delete", data={"csrf_token": csrf_of(client)}
        )
        assert deleted.status_code == 303
        assert "peanuts" not in client.get("/dashboard/facts").text
        missing = client.post(
            f"/dashboard/facts/{fact_id}/delete", data={"csrf_token": csrf_of(client)}
        )
        assert missing.status_code == 404


def test_the_dashboard_shows_the_balance_the_api_reports(
    live_hub: LiveHub, mailbox: Mailbox
) -> None:
    with verified_member(live_hub, mailbox, "ray@example.org", PASSWORD) as client:
        token, _ = mint(client)
        shown = re.search(r"data-balance>(-?\d+\.\d{6})<", client.get("/dashboard").text)
    account = httpx.get(
        live_hub.url + "/v1/account", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert shown is not None
    assert shown[1] == account.json()["balance_iamine"]


def _without_time(document: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in document.items() if k != "exported_at"}


def test_the_dashboard_export_is_the_apis_export(live_hub: LiveHub, mailbox: Mailbox) -> None:
    with verified_member(live_hub, mailbox, "sam@example.org", PASSWORD) as client:
        token, _ = mint(client)
        asyncio.run(_store_turn(live_hub.database_url, token, "conv-web-3", "Export me."))
        exported = client.get("/dashboard/memory/export")
        assert exported.headers["content-type"] == "application/json"
        asyncio.run(_drop_session_wraps(live_hub.database_url))
        refused = client.get("/dashboard/memory/export")
        assert refused.status_code == 403
        assert "cannot export it" in refused.text
    api = httpx.get(
        live_hub.url + "/v1/memory/export",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert _without_time(exported.json()) == _without_time(api.json())
    assert "Export me." in exported.text


def test_notes_are_listed_searched_and_deleted_on_the_dashboard(
    live_hub: LiveHub, mailbox: Mailbox
) -> None:
    with verified_member(live_hub, mailbox, "tia@example.org", PASSWORD) as client:
        token, _ = mint(client)
        headers = {"Authorization": f"Bearer {token}"}
        ids = []
        for title, body in (
            ("Deploy", "The staging server restarts every night at 3 am."),
            ("Recipe", "Pancakes need two eggs and milk."),
        ):
            stored = httpx.post(
                live_hub.url + "/v1/memory/notes",
                json={"title": title, "body": body},
                headers=headers,
                timeout=60,
            )
            assert stored.status_code == 201, stored.text
            ids.append(stored.json()["id"])
        listed = client.get("/dashboard/notes")
        assert "The staging server restarts" in listed.text
        assert "Pancakes need two eggs" in listed.text
        found = client.get("/dashboard/notes", params={"q": "pancakes eggs"}).text
        assert found.index(f'data-note="{ids[1]}"') < found.index(f'data-note="{ids[0]}"')
        deleted = client.post(
            f"/dashboard/notes/{ids[1]}/delete", data={"csrf_token": csrf_of(client)}
        )
        assert deleted.status_code == 303
        assert "Pancakes" not in client.get("/dashboard/notes").text
        again = client.post(
            f"/dashboard/notes/{ids[1]}/delete", data={"csrf_token": csrf_of(client)}
        )
        assert again.status_code == 404
