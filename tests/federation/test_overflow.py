"""Overflow between two live hubs: pool A has no worker for a model, pool B has one.

A chat to A (the official ``openai`` client, streamed and JSON) is forwarded to B and answered
by B's worker (a test worker over a raw WebSocket, answering every job by hand), with the
``X-Iamine-Route: peer`` and ``X-Iamine-Peer`` headers; both ledgers book it and reconcile.
Refusals go as raw signed requests. The peer's offer is put in A's capability book the way
gossip would (gossip itself is tested elsewhere and is off here, so the book holds what the
test says).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import orjson
import pytest
import uvicorn
from openai import Stream
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from economy.verify import verify
from federation.identity import PoolIdentity, key_file, load_identity
from federation.settings import FederationSettings
from hub import accounts
from hub.app import create_app
from hub.config import JobsSettings, Settings
from hub.state import HubState
from inference.pool_config import PoolConfig, save_pool_config
from inference.settings import InferenceSettings
from memory.settings import MemorySettings
from tests.conftest import TEMPLATE_DB, database_uri, query_rows
from tests.federation.conftest import admit_identity, new_identity, send, signed_request
from tests.hub.conftest import free_port, register_test_worker, wait_until

MODEL = "peer-model"
ANSWER = ["Hello", " from", " pool", " B", "."]
DIE = "please die mid-answer"
HOLD = "take your time"


class _Capture:
    """The app, remembering the hub's state from the first request (to fill its book)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: HubState | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.state is None:
            self.state = scope["state"]["hub"]
        await self.app(scope, receive, send)


@dataclass
class Pool:
    """A live hub with federation on, its user alice and its admin token."""

    url: str
    database_url: str
    data_dir: Path
    user_token: str
    admin_token: str
    app: _Capture

    @property
    def identity(self) -> PoolIdentity:
        """The pool's key."""
        return load_identity(key_file(self.data_dir))

    @property
    def state(self) -> HubState:
        """The running hub's state."""
        httpx.get(self.url + "/health", timeout=10)
        assert self.app.state is not None
        return self.app.state

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request to the admin API."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def client(self, token: str | None = None) -> openai.OpenAI:
        """The official OpenAI client, as alice (or the token given)."""
        return openai.OpenAI(base_url=self.url + "/v1", api_key=token or self.user_token)

    def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Rows of a query on this hub's database."""
        return query_rows(self.database_url, sql, *args)


async def _prepare(admin_uri: str, name: str) -> tuple[str, str]:
    admin = await asyncpg.connect(admin_uri)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    finally:
        await admin.close()
    url = database_uri(admin_uri, name)
    conn = await asyncpg.connect(url)
    try:
        user = await accounts.create_user(conn, "alice")
        token = await accounts.create_token(conn, user_id=user.id, scopes=("user",))
        await save_pool_config(conn, PoolConfig(queue_wait_s=0.5))
    finally:
        await conn.close()
    return url, token.token


def _start(
    admin_uri: str, data_dir: Path, databases: list[str]
) -> tuple[Pool, tuple[uvicorn.Server, threading.Thread]]:
    name = f"ovf_{uuid.uuid4().hex[:12]}"
    database_url, user_token = asyncio.run(_prepare(admin_uri, name))
    databases.append(name)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        inference=InferenceSettings(local_worker=False, heartbeat_interval_s=1),
        memory=MemorySettings(facts_extraction=False),
        jobs=JobsSettings(enabled=False),
        federation=FederationSettings(enabled=True, public_url=url),
    )
    app = _Capture(create_app(settings))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 60, "a hub to start")
    assert thread.is_alive(), "a hub failed to start"
    admin_token = (data_dir / "admin-token").read_text().strip()
    return Pool(url, database_url, data_dir, user_token, admin_token, app), (server, thread)


class HandWorker:
    """B's worker for ``MODEL``: answers every job with ``ANSWER``, one chunk a word.

    A job whose last message is ``DIE`` gets one chunk, then the link drops and the worker stays
    away until :meth:`revive`: B has no other worker to finish the answer. A job whose last
    message is ``HOLD`` is never answered (it keeps the worker's only slot busy).
    """

    def __init__(self, pool: Pool, token: str, slots: int = 4) -> None:
        self.pool = pool
        self.token = token
        self.slots = slots
        self.jobs: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._alive = threading.Event()
        self._alive.set()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HandWorker:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def revive(self) -> None:
        """Let the worker connect again after it dropped a job."""
        self._alive.set()

    def _run(self) -> None:
        ws_url = self.pool.url.replace("http://", "ws://") + "/v1/workers/ws"
        while not self._stop.is_set():
            if not self._alive.wait(timeout=0.3):
                continue
            try:
                with connect(ws_url) as ws:
                    self._serve(ws)
            except (ConnectionClosed, OSError):
                continue

    def _serve(self, ws: ClientConnection) -> None:
        hello = {
            "type": "hello",
            "protocol": 1,
            "token": self.token,
            "worker_name": "hand",
            "models": [{"id": MODEL, "context_size": 4096, "supports_tools": False}],
            "hardware": "gpu",
            "slots": self.slots,
            "version": "test",
        }
        ws.send(json.dumps(hello))
        while not self._stop.is_set():
            try:
                frame = json.loads(ws.recv(timeout=0.3))
            except TimeoutError:
                ws.send(json.dumps({"type": "heartbeat", "ts": 0.0}))
                continue
            if frame["type"] == "job":
                self.jobs.append(frame)
                if frame["messages"][-1]["content"] == HOLD:
                    continue
                if frame["messages"][-1]["content"] == DIE:
                    self._chunk(ws, frame, ANSWER[0])
                    self._alive.clear()
                    return
                for word in ANSWER:
                    self._chunk(ws, frame, word)
                usage = {"prompt_tokens": 7, "completion_tokens": len(ANSWER), "total_tokens": 12}
                done = {"type": "done", "job_id": frame["job_id"], "finish_reason": "stop"}
                ws.send(json.dumps({**done, "model": frame["model"], "usage": usage}))

    @staticmethod
    def _chunk(ws: ClientConnection, job: dict[str, Any], text: str) -> None:
        ws.send(json.dumps({"type": "chunk", "job_id": job["job_id"], "delta": {"content": text}}))


@dataclass
class Pools:
    """Pool A (no worker), pool B (the hand worker), peered both ways."""

    a: Pool
    b: Pool
    worker: HandWorker

    def offer(self, at: Pool, of: Pool, models: tuple[str, ...] = (MODEL,)) -> None:
        """Put ``of``'s offers of ``models`` in ``at``'s capability book, as gossip would."""
        federation = at.state.federation
        assert federation is not None
        offers = [{"model": model, "free_slots": 4, "price_per_1k": 2000} for model in models]
        capabilities = {"models": offers}
        federation.capabilities.update(of.identity.pool_id, of.url, capabilities, datetime.now(UTC))


@pytest.fixture(scope="module")
def pools(pg_admin_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pools]:
    """A and B on loopback, peered, B's worker connected, A's book offering B's model."""
    databases: list[str] = []
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []
    try:
        a, running = _start(pg_admin_uri, tmp_path_factory.mktemp("ovf_a"), databases)
        servers.append(running)
        b, running = _start(pg_admin_uri, tmp_path_factory.mktemp("ovf_b"), databases)
        servers.append(running)
        minted = b.admin("POST", "/admin/api/federation/invites", json={}).json()
        joined = a.admin(
            "POST",
            "/admin/api/federation/peers",
            json={"url": b.url, "fingerprint": minted["pool_id"], "invite": minted["invite"]},
        )
        assert joined.status_code == 201, joined.text
        token = asyncio.run(register_test_worker(b.database_url, "hand", "gpu", 4, 2))
        with HandWorker(b, token) as worker:
            wait_until(lambda: b.state.workers.serves(MODEL), 30, "B's worker")
            found = Pools(a, b, worker)
            found.offer(a, b)
            yield found
    finally:
        for server, thread in servers:
            server.should_exit = True
            thread.join(timeout=30)
        for name in databases:
            asyncio.run(_drop(pg_admin_uri, name))


async def _drop(admin_uri: str, name: str) -> None:
    conn = await asyncpg.connect(admin_uri)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


def _messages(text: str = "hi") -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def test_a_streamed_chat_to_a_pool_without_the_model_is_served_by_the_peer(pools: Pools) -> None:
    raw = pools.a.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=_messages(), stream=True
    )
    assert raw.headers["x-iamine-route"] == "peer"
    assert raw.headers["x-iamine-peer"] == pools.b.identity.pool_id
    received: list[str] = []
    _drain(raw.parse(), received)
    assert "".join(received) == "".join(ANSWER)
    federation = pools.a.state.federation
    assert federation is not None
    speed = federation.capabilities.offers(MODEL)[0].tokens_per_s
    assert speed is not None and speed > 0


def _drain(stream: Stream[ChatCompletionChunk], received: list[str]) -> None:
    for chunk in stream:
        if chunk.choices:
            received.append(chunk.choices[0].delta.content or "")


def test_a_chat_that_would_wait_long_for_a_busy_local_worker_goes_to_the_peer(
    pools: Pools,
) -> None:
    token = asyncio.run(register_test_worker(pools.a.database_url, "a-hand", "gpu", 1, 2))
    with HandWorker(pools.a, token, slots=1):
        wait_until(lambda: pools.a.state.workers.serves(MODEL), 30, "A's own worker")
        body = {"model": MODEL, "messages": _messages(HOLD), "stream": True}
        headers = {"Authorization": f"Bearer {pools.a.user_token}"}
        url = pools.a.url + "/v1/chat/completions"
        with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as held:
            assert held.headers["x-iamine-route"] == "direct"  # A's worker has it, never answers
            raw = pools.a.client().chat.completions.with_raw_response.create(
                model=MODEL, messages=_messages()
            )
            assert raw.headers["x-iamine-route"] == "peer"
            assert raw.parse().choices[0].message.content == "".join(ANSWER)
    wait_until(lambda: not pools.a.state.workers.serves(MODEL), 30, "A's worker to leave")


def test_an_unreachable_peer_is_skipped_for_the_next_best_and_then_backed_off(
    pools: Pools,
) -> None:
    ghost = new_identity()
    admit_identity(pools.a.database_url, ghost)
    federation = pools.a.state.federation
    assert federation is not None
    cheap = {"models": [{"model": MODEL, "free_slots": 9, "price_per_1k": 1}]}
    federation.capabilities.update(ghost.pool_id, "http://127.0.0.1:9", cheap, datetime.now(UTC))
    federation.capabilities.measured(ghost.pool_id, MODEL, 1e6)  # it ranks first
    try:
        best = federation.capabilities.best(MODEL)
        assert best is not None and best.pool_id == ghost.pool_id
        for _ in range(2):  # the second chat does not even try the backed-off peer
            raw = pools.a.client().chat.completions.with_raw_response.create(
                model=MODEL, messages=_messages()
            )
            assert raw.headers["x-iamine-peer"] == pools.b.identity.pool_id
        failures = pools.a.rows(
            "SELECT consecutive_failures FROM peers WHERE pool_id = $1", ghost.pool_id
        )
        assert failures[0]["consecutive_failures"] == 1
    finally:
        federation.capabilities.forget(ghost.pool_id)


def test_a_model_only_a_peer_offers_is_listed_and_retrieved(pools: Pools) -> None:
    pools.offer(pools.a, pools.b, (MODEL, "peer-only-model"))
    try:
        client = pools.a.client()
        listed = {model.id: model for model in client.models.list()}
        assert listed["peer-only-model"].owned_by == "iamine-peer"
        assert client.models.retrieve("peer-only-model").id == "peer-only-model"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("nowhere-model")
    finally:
        pools.offer(pools.a, pools.b)


def test_a_json_chat_is_served_by_the_peer_with_its_usage(pools: Pools) -> None:
    raw = pools.a.client().chat.completions.with_raw_response.create(
        model=MODEL,
        messages=_messages(),
    )
    assert raw.headers["x-iamine-route"] == "peer"
    assert raw.headers["x-iamine-peer"] == pools.b.identity.pool_id
    completion = raw.parse()
    assert completion.choices[0].message.content == "".join(ANSWER)
    assert completion.usage is not None and completion.usage.completion_tokens == len(ANSWER)


def _reconciled(pools: Pools, jobs: int = 1) -> dict[str, Any]:
    path = f"/admin/api/federation/peers/{pools.b.identity.pool_id}/reconcile"
    report: dict[str, Any] = {}

    def balanced() -> bool:
        nonlocal report
        response = pools.a.admin("GET", path)
        assert response.status_code == 200, response.text
        report = response.json()
        return bool(report["balanced"]) and report["payable"]["jobs"] >= jobs

    wait_until(balanced, 30, "both ledgers to book the forwarded chats")
    return report


def test_both_ledgers_book_the_forwarded_chats_and_reconcile(pools: Pools) -> None:
    pools.a.client().chat.completions.create(model=MODEL, messages=_messages())
    a_id, b_id = pools.a.identity.pool_id, pools.b.identity.pool_id
    seen: dict[str, Any] = {}

    def booked_alike() -> bool:
        # Each ledger books off the request path (in groups): the module's earlier forwarded
        # chats may land between one reading and the next, so all three are read together.
        seen["payable"] = _reconciled(pools)["payable"]
        seen["owed"] = pools.a.rows(
            "SELECT credits_posted FROM ledger_accounts WHERE kind = 'peer_pool' AND ref = $1",
            b_id,
        )[0]["credits_posted"]
        seen["charged"] = pools.b.rows(
            "SELECT debits_posted FROM ledger_accounts WHERE kind = 'peer_pool' AND ref = $1",
            a_id,
        )[0]["debits_posted"]
        return bool(seen["owed"] == seen["charged"] == seen["payable"]["ours"])

    wait_until(booked_alike, 30, "both ledgers and the reconciliation to agree")
    payable = seen["payable"]
    assert payable["ours"] == payable["theirs"] > 0
    for pool in (pools.a, pools.b):

        async def check(url: str = pool.database_url) -> list[str]:
            conn = await asyncpg.connect(url)
            try:
                return list((await verify(conn)).problems)
            finally:
                await conn.close()

        assert asyncio.run(check()) == []


def test_a_user_who_turned_federation_chat_off_is_never_forwarded(pools: Pools) -> None:
    async def make_bob() -> str:
        conn = await asyncpg.connect(pools.a.database_url)
        try:
            bob = await accounts.create_user(conn, f"bob{uuid.uuid4().hex[:6]}")
            return (await accounts.create_token(conn, user_id=bob.id, scopes=("user",))).token
        finally:
            await conn.close()

    token = asyncio.run(make_bob())
    headers = {"Authorization": f"Bearer {token}"}
    put = httpx.put(
        pools.a.url + "/v1/preferences",
        json={"auto_review": False, "federation_chat": False},
        headers=headers,
    )
    assert put.status_code == 200, put.text
    assert put.json()["federation_memory"] is False
    before = len(pools.worker.jobs)
    raw = pools.a.client(token).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=_messages(),
    )
    assert raw.headers["x-iamine-route"] == "degraded"
    assert "x-iamine-peer" not in raw.headers
    assert len(pools.worker.jobs) == before


def test_a_forwarded_chat_carries_no_recalled_memory_or_identity_by_default(
    pools: Pools,
) -> None:
    before = len(pools.worker.jobs)
    pools.a.client().chat.completions.create(
        model=MODEL,
        messages=_messages("what do you know of me?"),
        user="alice-at-a",
    )
    job = pools.worker.jobs[before]
    assert job["messages"] == _messages("what do you know of me?")


def _forward(
    pools: Pools,
    identity: PoolIdentity,
    *,
    model: str = MODEL,
    visited: list[str] | None = None,
    hops: int = 1,
) -> tuple[bytes, httpx.Response]:
    body = orjson.dumps(
        {
            "model": model,
            "messages": _messages(),
            "stream": False,
            "hops": hops,
            "visited": visited if visited is not None else [identity.pool_id],
            "iamine_job": uuid.uuid4().hex,
        }
    )
    request = signed_request(identity, "POST", pools.b.url + "/v1/federation/forward", body)
    return body, send(request, body)


def _error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_a_signed_json_forward_gets_a_signed_completion_with_its_receipt(pools: Pools) -> None:
    _, response = _forward(pools, pools.a.identity)
    assert response.status_code == 200, response.text
    assert "signature" in response.headers
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "".join(ANSWER)
    assert body["iamine_receipt"]["to"] == pools.a.identity.pool_id


def test_a_forward_that_loops_or_passed_the_hop_limit_is_refused(pools: Pools) -> None:
    a, b = pools.a.identity.pool_id, pools.b.identity.pool_id
    _error(_forward(pools, pools.a.identity, visited=[b, a])[1], 409, "forward_loop")
    _error(_forward(pools, pools.a.identity, hops=2)[1], 409, "hop_limit_exceeded")


def test_a_forward_for_a_model_the_peer_does_not_serve_is_refused(pools: Pools) -> None:
    _error(_forward(pools, pools.a.identity, model="not-here")[1], 404, "model_not_found")


def test_a_forged_or_replayed_forward_is_refused(pools: Pools) -> None:
    _error(_forward(pools, new_identity())[1], 401, "unknown_peer")
    body, accepted = _forward(pools, pools.a.identity)
    assert accepted.status_code == 200
    again = signed_request(pools.a.identity, "POST", pools.b.url + "/v1/federation/forward", body)
    first = send(again, body)
    assert first.status_code == 200
    _error(send(again, body), 401, "replayed_request")


def test_pools_without_workers_answer_degraded_without_ping_pong(pools: Pools) -> None:
    pools.offer(pools.a, pools.b, (MODEL, "ghost-model"))
    pools.offer(pools.b, pools.a, ("ghost-model",))
    raw = pools.a.client().chat.completions.with_raw_response.create(
        model="ghost-model",
        messages=_messages(),
    )
    assert raw.headers["x-iamine-route"] == "degraded"
    assert raw.parse().choices[0].message.content.startswith("[iamine: degraded answer]")  # type: ignore[union-attr]
    forwarded = pools.b.rows(
        "SELECT count(*) AS n FROM ledger_transfers WHERE request->>'payee_peer' IS NOT NULL"
    )
    assert forwarded[0]["n"] == 0


def test_a_sub_agent_stage_runs_on_a_peer(pools: Pools) -> None:
    response = httpx.post(
        pools.a.url + "/v1/agents/run",
        json={"role": "scout", "input": "look around", "model": MODEL},
        headers={"Authorization": f"Bearer {pools.a.user_token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-iamine-route"] == "peer"
    assert response.headers["x-iamine-peer"] == pools.b.identity.pool_id
    assert response.json()["choices"][0]["message"]["content"] == "".join(ANSWER)


def _resolutions(pool: Pool, job: str) -> list[str]:
    sql = "SELECT kind FROM ledger_transfers WHERE job_id = $1 AND kind IN ('post', 'void')"
    return [row["kind"] for row in pool.rows(sql, job)]


def _resolved(pool: Pool, job: str) -> bool:
    return _resolutions(pool, job) != []


def test_every_stage_of_a_pipeline_may_run_on_a_peer(pools: Pools) -> None:
    response = httpx.post(
        pools.a.url + "/v1/agents/pipeline",
        json={"roles": ["scout", "reviewer"], "input": "look around", "model": MODEL},
        headers={"Authorization": f"Bearer {pools.a.user_token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    stages = response.json()["iamine_stages"]
    assert [stage["route"] for stage in stages] == ["peer", "peer"]
    assert [stage["worker"] for stage in stages] == [pools.b.identity.pool_id] * 2
    assert stages[-1]["content"] == "".join(ANSWER)


def test_a_peer_failing_mid_stream_ends_the_client_s_stream_with_an_error(pools: Pools) -> None:
    received: list[str] = []
    raw = pools.a.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=_messages(DIE), stream=True
    )
    assert raw.headers["x-iamine-route"] == "peer"
    with pytest.raises(openai.APIError, match="peer"):
        _drain(raw.parse(), received)
    assert "".join(received) == ANSWER[0]
    job = raw.headers["x-iamine-job-id"]
    for pool in (pools.a, pools.b):  # charged on neither side: both holds are voided
        wait_until(partial(_resolved, pool, job), 30, "the failed chat's void")
        assert _resolutions(pool, job) == ["void"]
    pools.worker.revive()
    wait_until(lambda: pools.b.state.workers.serves(MODEL), 30, "B's worker to come back")
