"""Key storage and policy: first key, linked tokens, locked tokens, revocation, new generations."""

from __future__ import annotations

import asyncpg
import pytest

from hub import accounts
from memory.crypto import DecryptError, KeyUnwrapError, decrypt_text, encrypt_text, unwrap_data_key
from memory.keys import (
    KeyIssue,
    MemoryLockedError,
    extend_key,
    has_live_wrap,
    has_wrap,
    issue_key,
    link_token,
    load_wraps,
    open_key,
)
from tests.memory.conftest import Member, key_of, new_member, new_token

pytestmark = pytest.mark.anyio


async def test_a_users_first_token_gets_a_key_only_that_token_opens(
    conn: asyncpg.Connection, alice: Member
) -> None:
    key = await key_of(conn, alice)
    assert key.generation == 1
    (wrap,) = await load_wraps(conn, alice.user_id)
    assert wrap.key_version == 1
    bob = await new_member(conn, "bob")
    with pytest.raises(KeyUnwrapError):
        unwrap_data_key(wrap, bob.token.text)


async def test_a_token_issued_from_a_token_opens_the_same_key(
    conn: asyncpg.Connection, alice: Member
) -> None:
    second = await new_token(conn, alice.user_id, wrap=False)
    issue = await extend_key(
        conn, alice.user_id, (alice.token.id, alice.token.text), (second.id, second.text), ("user",)
    )
    assert issue is KeyIssue.LINKED
    first_key, second_key = await key_of(conn, alice), await key_of(conn, alice, second)
    ciphertext = encrypt_text(first_key.data_key, "same key")
    assert decrypt_text(second_key.data_key, ciphertext) == "same key"
    assert first_key.generation == second_key.generation


async def test_an_admin_issued_token_is_locked_while_another_token_holds_the_key(
    conn: asyncpg.Connection, alice: Member
) -> None:
    issued = await accounts.create_token(conn, user_id=alice.user_id, scopes=("user",))
    issue = await issue_key(conn, alice.user_id, issued.record.id, issued.token, ("user",))
    assert issue is KeyIssue.LOCKED
    assert not await has_wrap(conn, alice.user_id, issued.record.id)
    with pytest.raises(MemoryLockedError):
        await open_key(conn, alice.user_id, issued.record.id, issued.token)


async def test_a_locked_token_can_be_linked_by_a_token_that_holds_the_key(
    conn: asyncpg.Connection, alice: Member
) -> None:
    locked = await new_token(conn, alice.user_id)
    key = await key_of(conn, alice)
    await link_token(conn, key, alice.user_id, locked.id, locked.text)
    assert (await key_of(conn, alice, locked)).generation == key.generation


async def test_revoking_a_token_deletes_its_wrap_and_keeps_the_others(
    conn: asyncpg.Connection, alice: Member
) -> None:
    second = await new_token(conn, alice.user_id, wrap=False)
    await extend_key(
        conn, alice.user_id, (alice.token.id, alice.token.text), (second.id, second.text), ("user",)
    )
    ciphertext = encrypt_text((await key_of(conn, alice)).data_key, "kept")
    await accounts.revoke_token(conn, accounts.token_prefix(alice.token.text) or "")
    assert not await has_wrap(conn, alice.user_id, alice.token.id)
    for wrap in await load_wraps(conn, alice.user_id):
        with pytest.raises(KeyUnwrapError):
            unwrap_data_key(wrap, alice.token.text)
    assert decrypt_text((await key_of(conn, alice, second)).data_key, ciphertext) == "kept"


async def test_a_new_token_after_every_wrapped_token_is_revoked_starts_a_new_generation(
    conn: asyncpg.Connection, alice: Member
) -> None:
    old_key = await key_of(conn, alice)
    await conn.execute("INSERT INTO conversations (user_id, id) VALUES ($1, 'c1')", alice.user_id)
    await conn.execute(
        "INSERT INTO conversation_turns (user_id, conversation_id, seq, kind, generation, "
        "ciphertext, tokens) VALUES ($1, 'c1', 1, 'turn', 1, $2, 1)",
        alice.user_id,
        encrypt_text(old_key.data_key, "old memory"),
    )
    await accounts.revoke_token(conn, accounts.token_prefix(alice.token.text) or "")
    assert not await has_live_wrap(conn, alice.user_id)
    issued = await accounts.create_token(conn, user_id=alice.user_id, scopes=("user",))
    issue = await issue_key(conn, alice.user_id, issued.record.id, issued.token, ("user",))
    assert issue is KeyIssue.NEW_KEY_OLD_MEMORY_UNREADABLE
    new_key = await open_key(conn, alice.user_id, issued.record.id, issued.token)
    assert new_key.generation == 2
    old = await conn.fetchval(
        "SELECT ciphertext FROM conversation_turns WHERE user_id = $1", alice.user_id
    )
    with pytest.raises(DecryptError):
        decrypt_text(new_key.data_key, bytes(old))


async def test_a_token_without_a_wrap_gets_a_key_on_first_use_when_none_is_live(
    conn: asyncpg.Connection,
) -> None:
    user = await accounts.create_user(conn, "carol")
    first = await new_token(conn, user.id, wrap=False)
    second = await new_token(conn, user.id, wrap=False)
    key = await open_key(conn, user.id, first.id, first.text)
    assert key.generation == 1
    with pytest.raises(MemoryLockedError):
        await open_key(conn, user.id, second.id, second.text)


async def test_tokens_without_the_user_scope_get_no_wrap(
    conn: asyncpg.Connection, alice: Member
) -> None:
    issued = await accounts.create_token(conn, user_id=alice.user_id, scopes=("worker",))
    issue = await issue_key(conn, alice.user_id, issued.record.id, issued.token, ("worker",))
    assert issue is KeyIssue.NONE
    assert not await has_wrap(conn, alice.user_id, issued.record.id)


async def test_a_wrap_cannot_sit_on_another_users_token(
    conn: asyncpg.Connection, alice: Member
) -> None:
    bob = await new_member(conn, "bob")
    alice_key = await key_of(conn, alice)
    with pytest.raises(ValueError, match="another user"):
        await link_token(conn, alice_key, alice.user_id, bob.token.id, bob.token.text)
    unwrapped = [unwrap_data_key(w, bob.token.text) for w in await load_wraps(conn, bob.user_id)]
    assert len(unwrapped) == 1
    carol = await accounts.create_user(conn, "carol")
    stranger = await new_token(conn, carol.id, wrap=False)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await link_token(conn, alice_key, alice.user_id, stranger.id, stranger.text)
