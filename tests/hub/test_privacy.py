"""The zero-knowledge promise: the database alone never yields a user's conversation text.

L1 is plaintext by design (short TTL, can be turned off): the dump test asserts it is the only
place any text appears, and that after the purge it appears nowhere.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hub.accounts import token_prefix
from memory.crypto import DecryptError, KeyUnwrapError, KeyWrap, decrypt_json, unwrap_data_key
from memory.l1 import purge_expired_l1
from tests.hub.test_errors import assert_openai_error
from tests.memory.hub_driver import (
    bearer,
    chat_exchange,
    fetch,
    hub_state,
    new_user,
    now,
    portal,
    second_token,
)

TEXT_TYPES = ("text", "character varying", "json", "jsonb", "ARRAY", "USER-DEFINED", "bytea")

CONVERSATIONS = {
    "alice": {
        "holiday": [
            ("We land in Reykjavik on the ninth", "Enjoy the northern lights"),
            ("Book the Blue Lagoon for Tuesday", "Done for Tuesday"),
        ],
        "health": [("My blood type is AB negative", "Noted, AB negative")],
    },
    "bob": {"work": [("Quarterly revenue fell to 41 million", "That is a drop")]},
}


def _texts() -> list[str]:
    return [
        text for convs in CONVERSATIONS.values() for ex in convs.values() for e in ex for text in e
    ]


def _dump(client: TestClient) -> dict[str, list[Any]]:
    """Every text, json, array and bytea value of every table, by ``table.column``."""
    columns = fetch(
        client,
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND data_type = ANY($1::text[])",
        list(TEXT_TYPES),
    )
    dump: dict[str, list[Any]] = {}
    for c in columns:
        cast = "" if c["data_type"] == "bytea" else "::text"
        sql = f'SELECT "{c["column_name"]}"{cast} AS v FROM "{c["table_name"]}"'  # noqa: S608
        dump[f"{c['table_name']}.{c['column_name']}"] = [r["v"] for r in fetch(client, sql)]
    return dump


def _places(dump: dict[str, list[Any]], text: str) -> set[str]:
    """The ``table.column`` names whose values contain ``text`` (as UTF-8 inside bytea)."""
    needle = text.encode()
    return {
        place
        for place, values in dump.items()
        for v in values
        if v is not None and (needle in v if isinstance(v, bytes) else text in v)
    }


@pytest.fixture
def members(client: TestClient, admin_token: str) -> dict[str, str]:
    """Alice and Bob, memory on, after the conversations above went through the chat hook."""
    tokens = {name: new_user(client, admin_token, name) for name in CONVERSATIONS}
    for name, conversations in CONVERSATIONS.items():
        for conversation_id, exchanges in conversations.items():
            for question, answer in exchanges:
                chat_exchange(client, tokens[name], conversation_id, question, answer)
    return tokens


def test_no_table_but_l1_holds_any_turns_text_and_after_the_purge_none_does(
    client: TestClient, members: dict[str, str]
) -> None:
    dump = _dump(client)
    assert "conversation_turns.ciphertext" in dump and "l1_messages.message" in dump
    for text in _texts():
        assert _places(dump, text) == {"l1_messages.message"}, text
    state = hub_state(client)
    later = now() + timedelta(seconds=state.settings.memory.l1_ttl_s + 1)

    async def purge() -> int:
        async with state.db.pool.acquire() as conn:
            return await purge_expired_l1(conn, later)

    assert portal(client).call(purge) == len(_texts())
    dump = _dump(client)
    for text in _texts():
        assert _places(dump, text) == set(), text
    conversation = client.get("/v1/conversations/holiday", headers=bearer(members["alice"]))
    assert conversation.json()["turns"][1]["messages"][0]["content"] == _texts()[2]


def test_the_admin_token_cannot_read_a_conversation(
    client: TestClient, admin_token: str, members: dict[str, str]
) -> None:
    for path in ("/v1/conversations/holiday", "/v1/conversations", "/v1/memory/export"):
        response = client.get(path, headers=bearer(admin_token))
        assert response.status_code == 403, path
        assert_openai_error(response.json(), "insufficient_scope")


def test_a_user_gets_404_for_another_users_conversation_id(
    client: TestClient, members: dict[str, str]
) -> None:
    alice, bob = members["alice"], members["bob"]
    for method in ("GET", "DELETE"):
        response = client.request(method, "/v1/conversations/work", headers=bearer(alice))
        assert response.status_code == 404
        assert_openai_error(response.json(), "not_found", "conversation_id")
    ids = [c["id"] for c in client.get("/v1/conversations", headers=bearer(alice)).json()["data"]]
    assert "work" not in ids
    assert client.get("/v1/conversations/work", headers=bearer(bob)).json()["turn_count"] == 1


def _wraps(client: TestClient) -> list[KeyWrap]:
    rows = fetch(
        client, "SELECT salt, wrapped, key_version, kdf, format_version FROM memory_key_wraps"
    )
    return [
        KeyWrap(r["salt"], r["wrapped"], r["key_version"], r["kdf"], r["format_version"])
        for r in rows
    ]


def test_after_delete_memory_nothing_left_in_the_database_decrypts_the_old_rows(
    client: TestClient, admin_token: str, members: dict[str, str]
) -> None:
    alice = members["alice"]
    laptop = second_token(client, alice)
    old_rows = fetch(
        client,
        "SELECT ciphertext FROM conversation_turns t JOIN users u ON u.id = t.user_id "
        "WHERE u.name = 'alice'",
    )
    report = client.delete("/v1/memory", headers=bearer(alice)).json()
    assert (report["wraps"], report["turns"]) == (2, 3)
    export = client.get("/v1/memory/export", headers=bearer(alice)).json()
    assert (export["conversations"], export["l1_messages"]) == ([], [])
    # Export started a new key for this token; the shredded one is gone for every token.
    response = client.get("/v1/memory/export", headers=bearer(laptop))
    assert_openai_error(response.json(), "memory_locked")
    known = [alice, laptop, members["bob"], admin_token]
    keys = []
    for wrap in _wraps(client):
        for token in known:
            try:
                keys.append(unwrap_data_key(wrap, token))
            except KeyUnwrapError:
                continue
    assert len(keys) == 2  # alice's new key and bob's key
    for row in old_rows:
        for key in keys:
            with pytest.raises(DecryptError):
                decrypt_json(key, row["ciphertext"])


def test_a_revoked_token_can_no_longer_decrypt_and_another_token_still_can(
    client: TestClient, members: dict[str, str]
) -> None:
    alice = members["alice"]
    # The laptop's token is minted from alice's, so revoking alice's would end it too
    # (tests/hub/test_token_lineage.py): here the laptop's is the one revoked.
    laptop = second_token(client, alice)
    ciphertext = fetch(
        client,
        "SELECT ciphertext FROM conversation_turns WHERE conversation_id = 'health' LIMIT 1",
    )
    revoked = client.delete(f"/v1/tokens/{token_prefix(laptop)}", headers=bearer(alice))
    assert revoked.status_code == 200
    assert client.get("/v1/conversations/health", headers=bearer(laptop)).status_code == 401
    for wrap in _wraps(client):
        with pytest.raises(KeyUnwrapError):
            unwrap_data_key(wrap, laptop)
    readable = [unwrap_data_key(w, alice) for w in _wraps(client) if _opens(w, alice)]
    assert len(readable) == 1
    assert decrypt_json(readable[0], ciphertext[0]["ciphertext"])["messages"]
    turns = client.get("/v1/conversations/health", headers=bearer(alice)).json()["turns"]
    assert turns[0]["messages"][0]["content"] == "My blood type is AB negative"


def _opens(wrap: KeyWrap, token: str) -> bool:
    try:
        unwrap_data_key(wrap, token)
    except KeyUnwrapError:
        return False
    return True
