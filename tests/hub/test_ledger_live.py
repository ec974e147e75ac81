"""The ledger under load and under a crash, on a real ``python -m hub serve`` process.

- 1,000 chats from a bounded-concurrency client through fake workers with several slots each
  (over the real WebSocket): every chat is answered, exactly 1,000 jobs are posted, and
  ``iamine ledger verify`` (the CLI, as a subprocess) exits 0.
- kill -9 of the hub while it posts: no transfer is partial (verify is clean on the dead hub's
  books); after a restart the holds of the chats it lost expire (the user's next hold records
  their expiry), every hold ends resolved exactly once, and verify is clean again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from economy.verify import verify
from hub import accounts
from tests.hub.conftest import _drop, _prepare, register_test_worker, wait_until
from tests.hub.raw_worker import hello, receive
from tests.hub.test_restart import REPO, HubProcess

pytestmark = pytest.mark.anyio
MODEL = "ledger-load-model"
CHATS = 1_000
CONCURRENCY = 50
WORKERS = 4
SLOTS = 16
PAYERS = 10


@pytest.fixture
def hub(pg_admin_uri: str, tmp_path: Path, embedding_model_dir: Path) -> Iterator[HubProcess]:
    """A hub process on a fresh database (its users and workers are the test's)."""
    name = f"ledger_{uuid.uuid4().hex[:12]}"
    url, _, _ = asyncio.run(_prepare(pg_admin_uri, name))
    process = HubProcess(url, tmp_path / "data", embedding_model_dir, tmp_path / "hub.log")
    try:
        process.start()
        yield process
    finally:
        process.stop()
        asyncio.run(_drop(pg_admin_uri, name))


async def payers(hub: HubProcess, count: int) -> list[str]:
    """User tokens of ``count`` new users."""
    conn = await asyncpg.connect(hub.database_url)
    try:
        tokens = []
        for n in range(count):
            user = await accounts.create_user(conn, f"payer{n}")
            issued = await accounts.create_token(conn, user_id=user.id, scopes=("user",))
            tokens.append(issued.token)
        return tokens
    finally:
        await conn.close()


async def worker_tokens(hub: HubProcess) -> list[str]:
    return [
        await register_test_worker(hub.database_url, f"load{n}", "cpu", SLOTS, 2)
        for n in range(WORKERS)
    ]


async def serve(hub: HubProcess, token: str, name: str) -> None:
    """A fake worker: answers each job at once with one chunk and its usage, until the link ends."""
    ws_url = hub.url.replace("http://", "ws://") + "/v1/workers/ws"
    with contextlib.suppress(ConnectionClosed, OSError):
        async with connect(ws_url) as ws:
            await ws.send(json.dumps(hello(token, MODEL, SLOTS, name)))
            welcome = await receive(ws, "welcome")
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(heartbeats, ws, welcome["heartbeat_interval_s"] / 2)
                async for message in ws:
                    frame = json.loads(message)
                    if frame["type"] == "job":
                        await answer(ws, frame["job_id"])
                tasks.cancel_scope.cancel()


async def heartbeats(ws: Any, interval_s: float) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await anyio.sleep(interval_s)
            await ws.send(json.dumps({"type": "heartbeat", "ts": time.time()}))


async def answer(ws: Any, job_id: str) -> None:
    chunk = {"type": "chunk", "job_id": job_id, "delta": {"content": "ok"}}
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    done = {"type": "done", "job_id": job_id, "finish_reason": "stop", "model": MODEL}
    await ws.send(json.dumps(chunk))
    await ws.send(json.dumps(done | {"usage": usage}))


async def chat(http: httpx.AsyncClient, token: str, stream: bool) -> str:
    """One chat; the answer's text ('' when the hub did not answer)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    headers = {"Authorization": f"Bearer {token}"}
    if not stream:
        response = await http.post("/v1/chat/completions", json=body, headers=headers)
        if response.status_code != 200:
            return ""
        text: str = response.json()["choices"][0]["message"]["content"]
        return text
    parts = []
    async with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as reply:
        async for line in reply.aiter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                parts.append(choices[0]["delta"].get("content") or "" if choices else "")
    return "".join(parts)


async def count(hub: HubProcess, sql: str) -> int:
    conn = await asyncpg.connect(hub.database_url)
    try:
        found: int = await conn.fetchval(sql)
        return found
    finally:
        await conn.close()


def wait_for_count(hub: HubProcess, sql: str, wanted: int, what: str) -> None:
    wait_until(lambda: asyncio.run(count(hub, sql)) == wanted, 120, what)


def ledger_verify(hub: HubProcess) -> subprocess.CompletedProcess[str]:
    """``iamine ledger verify`` on the hub's database, as an operator would run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IAMINE_")} | {
        "IAMINE_DATABASE_URL": hub.database_url,
        "IAMINE_DATA_DIR": str(hub.data_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "hub", "ledger", "verify"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_a_thousand_concurrent_chats_are_each_posted_once_and_the_books_verify(
    hub: HubProcess,
) -> None:
    tokens, workers = await payers(hub, PAYERS), await worker_tokens(hub)
    answers: list[str] = []
    limit = anyio.Semaphore(CONCURRENCY)

    async def one(n: int, http: httpx.AsyncClient) -> None:
        async with limit:
            answers.append(await chat(http, tokens[n % PAYERS], stream=n % 4 == 0))

    async with anyio.create_task_group() as fleet:
        for n, token in enumerate(workers):
            fleet.start_soon(serve, hub, token, f"load{n}")
        wait_for_models = await anyio.to_thread.run_sync(models_listed, hub, tokens[0])
        assert wait_for_models
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with (
            httpx.AsyncClient(base_url=hub.url, timeout=120, limits=limits) as http,
            anyio.create_task_group() as clients,
        ):
            for n in range(CHATS):
                clients.start_soon(one, n, http)
        fleet.cancel_scope.cancel()
    assert answers == ["ok"] * CHATS
    posts = "SELECT count(*) FROM ledger_transfers WHERE kind = 'post'"
    await anyio.to_thread.run_sync(wait_for_count, hub, posts, CHATS, "every chat to be posted")
    assert await count(hub, "SELECT count(*) FROM ledger_transfers WHERE kind = 'hold'") == CHATS
    assert await count(hub, "SELECT count(*) FROM ledger_transfers WHERE kind = 'void'") == 0
    assert await count(hub, "SELECT count(DISTINCT job_id) FROM ledger_transfers") == CHATS
    checked = await anyio.to_thread.run_sync(ledger_verify, hub)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{CHATS} jobs charged" in checked.stdout
    assert "ledger verified" in checked.stdout


def models_listed(hub: HubProcess, token: str, workers: int = WORKERS) -> bool:
    """Wait until ``workers`` fake workers serve the model."""
    headers = {"Authorization": f"Bearer {token}"}

    def listed() -> bool:
        data = httpx.get(f"{hub.url}/v1/models", headers=headers, timeout=5).json()["data"]
        return any(m["id"] == MODEL and m["workers"] == workers for m in data)

    wait_until(listed, 60, "the fake workers to join")
    return True


async def test_a_hub_killed_mid_posting_leaves_no_partial_transfer_and_its_lost_holds_expire(
    hub: HubProcess,
) -> None:
    admin = {"Authorization": f"Bearer {(hub.data_dir / 'admin-token').read_text().strip()}"}
    async with httpx.AsyncClient(base_url=hub.url, timeout=30) as http:
        ttl = {"ledger": {"hold_ttl_s": 2}}
        put = await http.put("/admin/api/pool-config", json=ttl, headers=admin)
    assert put.status_code == 200, put.text
    tokens, workers = await payers(hub, 2), await worker_tokens(hub)
    answered = 0
    enough = anyio.Event()

    async def keep_asking(token: str, http: httpx.AsyncClient) -> None:
        nonlocal answered
        with contextlib.suppress(httpx.TransportError):
            while True:
                if await chat(http, token, stream=False) == "ok":
                    answered += 1
                    if answered >= 200:
                        enough.set()

    async with anyio.create_task_group() as fleet:
        for n, token in enumerate(workers):
            fleet.start_soon(serve, hub, token, f"load{n}")
        await anyio.to_thread.run_sync(models_listed, hub, tokens[0])
        async with (
            httpx.AsyncClient(base_url=hub.url, timeout=30) as http,
            anyio.create_task_group() as clients,
        ):
            for n in range(20):
                clients.start_soon(keep_asking, tokens[n % 2], http)
            with anyio.fail_after(120):
                await enough.wait()
            hub.kill()  # chats in flight, posts queued: the hub is mid-posting
        fleet.cancel_scope.cancel()
    conn = await asyncpg.connect(hub.database_url)
    try:
        report = await verify(conn)
    finally:
        await conn.close()
    assert report.ok, report.problems  # the crash cut no transfer in half
    lost = await count(
        hub,
        "SELECT count(*) FROM ledger_transfers h WHERE h.kind = 'hold' AND NOT EXISTS "
        "(SELECT 1 FROM ledger_transfers r WHERE r.pending_id = h.id)",
    )
    await anyio.to_thread.run_sync(hub.start)
    open_and_live = "SELECT count(*) FROM ledger_open_holds WHERE expires_at > now()"
    await anyio.to_thread.run_sync(wait_for_count, hub, open_and_live, 0, "the holds' TTL")
    async with anyio.create_task_group() as fleet:
        fleet.start_soon(serve, hub, workers[0], "load0")
        async with httpx.AsyncClient(base_url=hub.url, timeout=30) as http:
            await anyio.to_thread.run_sync(models_listed, hub, tokens[0], 1)
            for token in tokens:  # each user's next hold records the expiry of their lost ones
                assert await chat(http, token, stream=False) == "ok"
        fleet.cancel_scope.cancel()
    await anyio.to_thread.run_sync(
        wait_for_count, hub, "SELECT count(*) FROM ledger_open_holds", 0, "every hold resolved"
    )
    expired = await count(hub, "SELECT count(*) FROM ledger_transfers WHERE kind = 'expire'")
    assert expired == lost
    unresolved = (
        "SELECT count(*) FROM ledger_transfers h WHERE h.kind = 'hold' AND "
        "(SELECT count(*) FROM ledger_transfers r WHERE r.pending_id = h.id) <> 1"
    )
    assert await count(hub, unresolved) == 0
    checked = await anyio.to_thread.run_sync(ledger_verify, hub)
    assert checked.returncode == 0, checked.stdout + checked.stderr
