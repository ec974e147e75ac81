"""Revocation reaches open links: a worker whose token dies is cut off, its job moves elsewhere,
and an MCP session of a dead token can do nothing more, whichever process revoked the token."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg
import httpx
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from websockets.asyncio.client import ClientConnection

from hub import accounts
from hub.revocation import Leases
from inference import identity
from tests.hub.conftest import LiveHub
from tests.hub.raw_worker import answer, chat, raw_worker, receive

pytestmark = pytest.mark.anyio

# The hub re-reads live tokens every 0.5 s (revocation_check_s): one second, with room for a
# loaded machine. Far below the 30 s token cache and the 3 s heartbeat timeout of the live hub.
CLOSE_WITHIN_S = 2.5
MCP_VERSION = "2025-11-25"


@dataclasses.dataclass
class Member:
    """A user of the live hub with a worker token, and a user token that may mint worker tokens."""

    name: str
    worker_token: str
    user_token: str


async def _member(hub: LiveHub) -> Member:
    name = f"m-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(hub.database_url)
    try:
        user = await accounts.create_user(conn, name)
        worker = await accounts.create_token(conn, user_id=user.id, scopes=("worker",))
        assert worker.record.worker_id is not None
        # Vetted, so that users' chats reach it (the default minimum for chats is 1).
        await identity.set_trust(conn, worker.record.worker_id, identity.ESTABLISHED, "test")
        caller = await accounts.create_token(conn, user_id=user.id, scopes=("user", "worker"))
    finally:
        await conn.close()
    return Member(name, worker.token, caller.token)


async def _in_another_process(hub: LiveHub, action: str, arg: str) -> None:
    """What the CLI does: its own connection, nothing pushed to the hub."""
    conn = await asyncpg.connect(hub.database_url)
    try:
        if action == "disable":
            await accounts.disable_user(conn, arg)
        else:
            await accounts.revoke_token(conn, arg)
    finally:
        await conn.close()


async def test_a_lease_ends_with_its_token_or_its_user_and_never_with_another() -> None:
    leases = Leases()
    alice, bob = uuid.uuid4(), uuid.uuid4()
    laptop, phone, bobs = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ended: dict[str, str] = {}

    def ending(name: str) -> Callable[[str], None]:
        return lambda why: ended.__setitem__(name, why)

    with (
        leases.hold(laptop, alice, ending("laptop")),
        leases.hold(phone, alice, ending("phone")),
        leases.hold(bobs, bob, ending("bob")),
    ):
        assert leases.end_tokens({laptop: "token_expired"}) == 1
        assert leases.end_user(alice) == 1
        assert leases.token_ids() == {bobs}
    assert ended == {"laptop": "token_expired", "phone": "user_disabled"}
    assert len(leases) == 0


async def test_waiting_on_a_lease_returns_why_the_token_died() -> None:
    leases = Leases()
    token, user = uuid.uuid4(), uuid.uuid4()
    reasons: list[str] = []

    async def wait() -> None:
        reasons.append(await leases.wait(token, user))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            leases.end_tokens({token: "token_revoked"})
    assert reasons == ["token_revoked"]


async def _revoke_through_the_api(hub: LiveHub, member: Member, token: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.delete(
            f"{hub.url}/v1/tokens/{accounts.token_prefix(token)}",
            headers={"Authorization": f"Bearer {member.user_token}"},
        )
    assert response.status_code == 200, response.text


async def _assert_cut_off(ws: ClientConnection) -> None:
    with anyio.fail_after(CLOSE_WITHIN_S):
        error = await receive(ws, "error")
        await ws.wait_closed()
    assert error["code"] == "invalid_token"
    assert ws.close_code == 1008


@asynccontextmanager
async def _asking(hub: LiveHub, model: str) -> AsyncIterator[dict[str, httpx.Response]]:
    """A chat for ``model`` in flight while the block runs; its response once the block ends."""
    result: dict[str, httpx.Response] = {}

    async def ask() -> None:
        result["response"] = await anyio.to_thread.run_sync(chat, hub, model)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ask)
        yield result


async def _revoked_worker_hands_its_job_over(
    live_hub: LiveHub, member: Member, model: str, revoke: Any
) -> None:
    async with (
        raw_worker(live_hub, model, name="doomed", token=member.worker_token) as doomed,
        _asking(live_hub, model) as result,
    ):
        job = await receive(doomed, "job")
        async with raw_worker(live_hub, model, name="rescuer") as rescuer:
            await revoke()
            await _assert_cut_off(doomed)
            retry = await receive(rescuer, "job")
            assert retry["job_id"] != job["job_id"]
            await answer(rescuer, retry, "rescued")
    response = result["response"]
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "rescued"


async def test_revoking_a_workers_token_through_the_api_cuts_it_off_and_its_job_fails_over(
    live_hub: LiveHub,
) -> None:
    member = await _member(live_hub)

    async def revoke() -> None:
        await _revoke_through_the_api(live_hub, member, member.worker_token)

    await _revoked_worker_hands_its_job_over(live_hub, member, "revoked-api-model", revoke)


async def test_disabling_a_workers_user_from_another_process_cuts_it_off_and_its_job_fails_over(
    live_hub: LiveHub,
) -> None:
    member = await _member(live_hub)

    async def disable() -> None:
        await _in_another_process(live_hub, "disable", member.name)

    await _revoked_worker_hands_its_job_over(live_hub, member, "disabled-cli-model", disable)


async def test_revoking_a_workers_token_from_another_process_cuts_it_off(
    live_hub: LiveHub,
) -> None:
    member = await _member(live_hub)
    async with raw_worker(live_hub, "revoked-cli-model", token=member.worker_token) as ws:
        prefix = accounts.token_prefix(member.worker_token) or ""
        await _in_another_process(live_hub, "revoke", prefix)
        await _assert_cut_off(ws)


async def test_revoking_a_token_cuts_off_a_worker_on_a_token_minted_from_it(
    live_hub: LiveHub,
) -> None:
    member = await _member(live_hub)
    async with httpx.AsyncClient() as http:
        minted = await http.post(
            f"{live_hub.url}/v1/tokens",
            json={"scopes": ["worker"], "name": "child"},
            headers={"Authorization": f"Bearer {member.user_token}"},
        )
    assert minted.status_code == 201, minted.text
    child = minted.json()["token"]
    async with raw_worker(live_hub, "child-token-model", token=child) as ws:
        await _revoke_through_the_api(live_hub, member, member.user_token)
        await _assert_cut_off(ws)


async def _mcp_post(
    http: httpx.AsyncClient, hub: LiveHub, token: str, body: dict[str, Any], session: str = ""
) -> httpx.Response:
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MCP_VERSION,
    }
    if session:
        headers["Mcp-Session-Id"] = session
    return await http.post(f"{hub.url}/mcp", json=body, headers=headers)


async def _open_mcp_session(http: httpx.AsyncClient, hub: LiveHub, token: str) -> str:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": MCP_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "revocation-test", "version": "1"},
        },
    }
    response = await _mcp_post(http, hub, token, init)
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await _mcp_post(http, hub, token, initialized, session)).status_code == 202
    return session


async def test_an_mcp_sessions_open_stream_is_cut_when_its_token_is_revoked_elsewhere(
    live_hub: LiveHub,
) -> None:
    member = await _member(live_hub)
    tools_list = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    async with httpx.AsyncClient(timeout=10) as http:
        session = await _open_mcp_session(http, live_hub, member.user_token)
        headers = {
            "Authorization": f"Bearer {member.user_token}",
            "Accept": "text/event-stream",
            "MCP-Protocol-Version": MCP_VERSION,
            "Mcp-Session-Id": session,
        }
        async with http.stream("GET", f"{live_hub.url}/mcp", headers=headers) as stream:
            assert stream.status_code == 200
            await _in_another_process(
                live_hub, "revoke", accounts.token_prefix(member.user_token) or ""
            )
            with anyio.fail_after(CLOSE_WITHIN_S), contextlib.suppress(httpx.RemoteProtocolError):
                async for _ in stream.aiter_raw():
                    pass
        refused = await _mcp_post(http, live_hub, member.user_token, tools_list, session)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "token_revoked"


async def test_an_mcp_session_answers_only_the_token_that_opened_it(live_hub: LiveHub) -> None:
    member = await _member(live_hub)
    tools_list = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    async with httpx.AsyncClient(timeout=10) as http:
        session = await _open_mcp_session(http, live_hub, member.user_token)
        other = await _mcp_post(http, live_hub, live_hub.user_token, tools_list, session)
        own = await _mcp_post(http, live_hub, member.user_token, tools_list, session)
    assert other.status_code == 404
    assert own.status_code == 200


async def test_the_mcp_client_of_a_revoked_token_can_do_nothing_more(live_hub: LiveHub) -> None:
    member = await _member(live_hub)
    headers = {"Authorization": f"Bearer {member.user_token}"}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(f"{live_hub.url}/mcp", http_client=http)) as client,
    ):
        assert (await client.list_tools()).tools
        await _revoke_through_the_api(live_hub, member, member.user_token)
        # The SDK reports the hub's 401 as a generic MCP error; the 401 itself is tested above.
        with anyio.fail_after(10), pytest.raises(MCPError):
            await client.list_tools()
