"""Chats across hub replicas: three replicas, one NATS server, one PostgreSQL, workers on B only.

Replicas A and C run in threads of this process; B is an ``iamine serve`` process, so that it can
be killed with SIGKILL. The workers are scripted over raw WebSockets (``ScriptedWorkers``): each
answers ``max_tokens`` tokens `` w0 w1 …`` at a steady pace (a failed-over continuation picks up
where its assistant prefix ends, so a complete answer is always the same text) or, offered tools,
one tool call. They reach the replicas through a TCP balancer the test points at B, then at C,
as a load balancer would move their WebSockets when B dies. Chats go to A and C with the
official ``openai`` client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import openai
import pytest
import uvicorn
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCall,
)
from typer.testing import CliRunner
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from hub import replicas as replica_registry
from hub.bus import BusSettings
from hub.cli import app
from hub.config import JobsSettings, ServerSettings, Settings
from hub.replica_view import CapacityView
from inference.settings import InferenceSettings
from memory.settings import MemorySettings
from tests.conftest import TEMPLATE_DB, database_uri, query_rows, run_sql
from tests.hub.conftest import (
    free_port,
    register_test_worker,
    serve_in_thread,
    wait_until,
)
from tests.hub.test_scale_out import NatsServer

MODEL = "stub-model"
TOKEN_DELAY_S = 0.05
WORKERS = ("w-one", "w-two", "w-three")
SLOTS = 4
LOOKUP: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look something up.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}
BUS = {
    "heartbeat_s": 0.5,
    "replica_stale_s": 3.0,
    "handoff_silence_s": 2.0,
}


def expected_text(tokens: int) -> str:
    """The whole answer of a scripted worker to a job of ``tokens`` max tokens."""
    return "".join(f" w{i}" for i in range(tokens))


class Balancer:
    """A TCP forwarder in front of one replica; :meth:`point` moves new connections elsewhere."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()

    def point(self, target: int) -> None:
        """Send new connections to ``target`` (open ones stay where they are)."""
        self.target = target

    async def serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await source.read(65_536):
            sink.write(chunk)
            await sink.drain()
    sink.close()


@dataclass
class ScriptedWorkers:
    """Workers that reconnect through the balancer forever, in an event loop thread of theirs."""

    balancer: Balancer
    tokens: dict[str, str]
    jobs_seen: list[dict[str, Any]] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)

            async def main() -> None:
                server = await self.balancer.serve()
                for name, token in self.tokens.items():
                    asyncio.get_running_loop().create_task(self._work(name, token))
                ready.set()
                async with server:
                    await server.serve_forever()

            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                self._loop.run_until_complete(main())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        for task in asyncio.all_tasks(self._loop):
            self._loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(timeout=10)

    async def _work(self, name: str, token: str) -> None:
        url = f"ws://127.0.0.1:{self.balancer.port}/v1/workers/ws"
        while True:
            with contextlib.suppress(OSError, WebSocketException, TimeoutError):
                async with connect(url, open_timeout=5) as ws:
                    await self._session(ws, name, token)
            await asyncio.sleep(0.2)

    async def _session(self, ws: ClientConnection, name: str, token: str) -> None:
        hello = {
            "type": "hello",
            "protocol": 1,
            "token": token,
            "worker_name": name,
            "models": [{"id": MODEL, "context_size": 4096, "supports_tools": True}],
            "hardware": "cpu",
            "slots": SLOTS,
            "version": "test",
        }
        await ws.send(json.dumps(hello))
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
        running: dict[str, asyncio.Task[None]] = {}
        beats = asyncio.get_running_loop().create_task(
            _heartbeats(ws, welcome["heartbeat_interval_s"] / 2)
        )
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if frame["type"] == "job":
                    self.jobs_seen.append(frame)
                    task = asyncio.get_running_loop().create_task(_answer(ws, frame))
                    running[frame["job_id"]] = task
                elif frame["type"] == "cancel" and frame["job_id"] in running:
                    running.pop(frame["job_id"]).cancel()
        finally:
            beats.cancel()
            for task in running.values():
                task.cancel()


async def _heartbeats(ws: ClientConnection, interval_s: float) -> None:
    with contextlib.suppress(WebSocketException):
        while True:
            await asyncio.sleep(interval_s)
            await ws.send(json.dumps({"type": "heartbeat", "ts": time.time()}))


async def _answer(ws: ClientConnection, job: dict[str, Any]) -> None:
    job_id = job["job_id"]
    with contextlib.suppress(WebSocketException):
        if job.get("tools"):
            call = {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q": "tides"}'},
            }
            await ws.send(
                json.dumps({"type": "chunk", "job_id": job_id, "delta": {"tool_calls": [call]}})
            )
            await _done(ws, job, "tool_calls", 1)
            return
        tokens = job["params"].get("max_tokens") or 8
        start = len((job.get("assistant_prefix") or "").split())
        for index in range(start, start + tokens):
            delta = {"content": f" w{index}"}
            await ws.send(json.dumps({"type": "chunk", "job_id": job_id, "delta": delta}))
            await asyncio.sleep(TOKEN_DELAY_S)
        await _done(ws, job, "stop", tokens)


async def _done(ws: ClientConnection, job: dict[str, Any], finish: str, tokens: int) -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens}
    done = {
        "type": "done",
        "job_id": job["job_id"],
        "finish_reason": finish,
        "model": job["model"],
        "usage": usage,
    }
    await ws.send(json.dumps(done))


@dataclass
class Replicas:
    """A and C (threads), B (a process), the NATS server, the balancer and the workers."""

    urls: dict[str, str]
    ports: dict[str, int]
    b_process: subprocess.Popen[bytes]
    b_log: Path
    nats: NatsServer
    balancer: Balancer
    workers: ScriptedWorkers
    database_url: str
    admin_token: str
    user_token: str = ""

    def client(self, replica: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.urls[replica] + "/v1", api_key=self.user_token, max_retries=0
        )

    def admin(self, replica: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method,
            self.urls[replica] + path,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=30,
            **kwargs,
        )

    def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return query_rows(self.database_url, sql, *args)


def _settings(data_dir: Path, database_url: str, nats_url: str, port: int) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        server=ServerSettings(port=port),
        inference=InferenceSettings(local_worker=False, heartbeat_interval_s=1),
        memory=MemorySettings(facts_extraction=False),
        jobs=JobsSettings(checker_interval_s=0, red_interval_s=0, settlement_interval_s=0),
        bus=BusSettings(nats_url=nats_url, **BUS),
    )


def _start_b(data_dir: Path, database_url: str, nats_url: str, port: int, log: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IAMINE_")} | {
        "IAMINE_DATABASE_URL": database_url,
        "IAMINE_DATA_DIR": str(data_dir),
        "IAMINE_SERVER__PORT": str(port),
        "IAMINE_SERVER__LOG_LEVEL": "warning",
        "IAMINE_INFERENCE__LOCAL_WORKER": "false",
        "IAMINE_INFERENCE__HEARTBEAT_INTERVAL_S": "1",
        "IAMINE_MEMORY__FACTS_EXTRACTION": "false",
        "IAMINE_JOBS__CHECKER_INTERVAL_S": "0",
        "IAMINE_JOBS__RED_INTERVAL_S": "0",
        "IAMINE_JOBS__SETTLEMENT_INTERVAL_S": "0",
        "IAMINE_BUS__NATS_URL": nats_url,
        **{f"IAMINE_BUS__{key.upper()}": str(value) for key, value in BUS.items()},
    }
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hub", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _register(database_url: str, name: str) -> str:
    work = register_test_worker(database_url, name, "cpu", SLOTS, 2)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


@pytest.fixture(scope="module")
def replicas(pg_admin_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    nats_server = NatsServer(tmp_path_factory.mktemp("nats"))
    nats_server.start()
    name = f"replicas_{uuid.uuid4().hex[:12]}"
    run_sql(pg_admin_uri, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    database_url = database_uri(pg_admin_uri, name)
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []
    ports = {replica: free_port() for replica in "ABC"}
    b_log = tmp_path_factory.mktemp("b") / "replica-b.log"
    b_process = None
    workers = None
    try:
        a_settings = _settings(
            tmp_path_factory.mktemp("a"), database_url, nats_server.url, ports["A"]
        )
        servers.append(serve_in_thread(a_settings, ports["A"]))
        admin_token = (a_settings.data_dir / "admin-token").read_text().strip()
        c_settings = _settings(
            tmp_path_factory.mktemp("c"), database_url, nats_server.url, ports["C"]
        )
        servers.append(serve_in_thread(c_settings, ports["C"]))
        b_data = tmp_path_factory.mktemp("b-data")
        b_process = _start_b(b_data, database_url, nats_server.url, ports["B"], b_log)
        urls = {replica: f"http://127.0.0.1:{port}" for replica, port in ports.items()}
        wait_until(lambda: _ready(urls["B"]), 60, "replica B to start")
        balancer = Balancer(ports["B"])
        tokens = {worker: _register(database_url, worker) for worker in WORKERS}
        workers = ScriptedWorkers(balancer, tokens)
        pool = Replicas(
            urls, ports, b_process, b_log, nats_server, balancer, workers, database_url, admin_token
        )
        _prepare(pool)
        workers.start()
        yield pool
    finally:
        if workers is not None:
            workers.stop()
        if b_process is not None and b_process.poll() is None:
            b_process.terminate()
            b_process.wait(timeout=30)
        for server, thread in servers:
            server.should_exit = True
            thread.join(timeout=30)
        nats_server.stop()
        run_sql(pg_admin_uri, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _prepare(pool: Replicas) -> None:
    """A user. No catalog: a replica without the model's workers knows it from the others'."""
    assert pool.admin("A", "POST", "/admin/api/users", json={"name": "uma"}).status_code == 201
    issued = pool.admin("A", "POST", "/admin/api/users/uma/tokens", json={"name": "t"})
    assert issued.status_code == 201, issued.text
    pool.user_token = issued.json()["token"]


def _free_slots_seen(pool: Replicas, replica: str) -> bool:
    """Whether ``replica`` can hand a chat to the workers (a JSON chat goes through)."""
    try:
        answer = pool.client(replica).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "ping"}], max_tokens=2
        )
    except openai.APIError:
        return False
    return answer.choices[0].message.content == expected_text(2)


def _stream_text(client: openai.OpenAI, tokens: int, into: list[str]) -> str:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "count"}],
        max_tokens=tokens,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            into.append(chunk.choices[0].delta.content)
    return "".join(into)


def test_chats_sent_to_replicas_without_workers_are_served_by_another_replicas_workers(
    replicas: Replicas,
) -> None:
    wait_until(lambda: _free_slots_seen(replicas, "A"), 60, "A to serve a chat through B")
    for replica in "AC":
        client = replicas.client(replica)
        listed = {model.id: model for model in client.models.list()}
        assert MODEL in listed  # from the other replicas' workers: A and C have none
        assert (listed[MODEL].model_extra or {})["workers"] >= 1
        assert client.models.retrieve(MODEL).id == MODEL
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6
        )
        assert raw.headers["x-iamine-route"] == "replica"
        assert raw.parse().choices[0].message.content == expected_text(6)
        assert _stream_text(client, 12, []) == expected_text(12)
        called = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "tides?"}], tools=[LOOKUP]
        )
        choice = called.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls is not None
        call = choice.message.tool_calls[0]
        assert isinstance(call, ChatCompletionMessageFunctionToolCall)
        assert call.function.name == "lookup"


def test_the_replica_registry_holds_every_replica_and_the_workers_sessions(
    replicas: Replicas,
) -> None:
    wait_until(
        lambda: len(replicas.rows("SELECT id FROM hub_replicas")) == 3, 20, "three replica rows"
    )
    address = f"127.0.0.1:{replicas.ports['B']}"

    def sessions_on_b() -> list[str]:
        rows = replicas.rows(
            "SELECT s.name FROM worker_sessions s JOIN hub_replicas r ON r.id = s.replica_id "
            "WHERE r.address = $1 ORDER BY s.name",
            address,
        )
        return [row["name"] for row in rows]

    wait_until(lambda: sessions_on_b() == sorted(WORKERS), 20, "B's worker sessions")
    env = {"IAMINE_DATABASE_URL": replicas.database_url, "COLUMNS": "400"}
    listed = CliRunner().invoke(app, ["bus", "replicas"], env=env)
    assert listed.exit_code == 0, listed.output
    b_line = next(line for line in listed.output.splitlines() if address in line)
    assert all(worker in b_line for worker in WORKERS), listed.output
    assert sum(f"127.0.0.1:{port}" in listed.output for port in replicas.ports.values()) == 3


def _replica_id(pool: Replicas, replica: str) -> str:
    rows = pool.rows(
        "SELECT id FROM hub_replicas WHERE address = $1", f"127.0.0.1:{pool.ports[replica]}"
    )
    replica_id: str = rows[0]["id"]
    return replica_id


async def _publish_garbage(nats_url: str, subject: str) -> None:
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        await js.publish(subject, b"{not json at all", stream="iamine_jobs")
        forged = {"origin": "f" * 32, "job": {"job_id": "x"}, "worker": "w"}
        await js.publish(subject, json.dumps(forged).encode(), stream="iamine_jobs")
    finally:
        await client.close()


def test_a_garbled_or_forged_hand_off_is_refused_and_logged_not_crashed_on(
    replicas: Replicas,
) -> None:
    b_id = _replica_id(replicas, "B")
    asyncio.run(_publish_garbage(replicas.nats.url, f"iamine.jobs.{b_id}"))
    wait_until(
        lambda: replicas.b_log.read_text().count("replica_job_refused") >= 2,
        20,
        "B to log both refusals",
    )
    answer = replicas.client("A").chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "still there?"}], max_tokens=4
    )
    assert answer.choices[0].message.content == expected_text(4)


async def _publish_core(nats_url: str, subject: str, payloads: list[bytes]) -> None:
    client = await nats.connect(nats_url)
    try:
        for payload in payloads:
            await client.publish(subject, payload)
        await client.flush()
    finally:
        await client.close()


def test_garbage_on_a_live_chats_answer_subject_is_dropped_and_the_answer_is_whole(
    replicas: Replicas, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 40,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {replicas.user_token}"}
    url = replicas.urls["A"] + "/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as response:
        assert response.headers["x-iamine-route"] == "replica"
        job_id = response.headers["x-iamine-job-id"]
        other = {"type": "chunk", "job_id": "another-job", "delta": {"content": " forged"}}
        garbage = [
            b"\xff not json",
            json.dumps({"kind": "frame", "seq": 1, "frame": other}).encode(),
            json.dumps({"kind": "shout"}).encode(),
        ]
        asyncio.run(_publish_core(replicas.nats.url, f"iamine.back.{job_id}", garbage))
        text = "".join(
            choice["delta"].get("content") or ""
            for line in response.iter_lines()
            if line.startswith("data:") and line != "data: [DONE]"
            for choice in json.loads(line[5:])["choices"]
        )
    assert text == expected_text(40)
    refused = [e for e in captured_logs if e["event"] == "replica_frame_refused"]
    assert len(refused) == 3, refused


def test_killing_the_replica_that_holds_the_workers_mid_stream_loses_no_client_stream(
    replicas: Replicas,
) -> None:
    tokens = 60  # three seconds of answer: B dies in the middle of every stream
    received: list[list[str]] = [[] for _ in range(4)]
    with ThreadPoolExecutor(len(received)) as pool:
        streams = [
            pool.submit(_stream_text, replicas.client(replica), tokens, into)
            for replica, into in zip("ACAC", received, strict=True)
        ]
        wait_until(lambda: all(len(into) >= 5 for into in received), 30, "every stream to begin")
        replicas.balancer.point(replicas.ports["C"])
        os.kill(replicas.b_process.pid, signal.SIGKILL)
        replicas.b_process.wait(timeout=10)
        texts = [stream.result(timeout=90) for stream in streams]
    assert texts == [expected_text(tokens)] * len(received)
    resumed = [job for job in replicas.workers.jobs_seen if job.get("assistant_prefix")]
    assert len(resumed) >= len(received)  # each stream was resumed, not restarted
    # B's rows leave the registry once its heartbeat is stale; the workers are C's now.
    address = f"127.0.0.1:{replicas.ports['B']}"
    wait_until(
        lambda: not replicas.rows("SELECT id FROM hub_replicas WHERE address = $1", address),
        30,
        "the dead replica's row to be cleaned",
    )
    assert _replica_id(replicas, "C") in {
        row["replica_id"] for row in replicas.rows("SELECT replica_id FROM worker_sessions")
    }


def test_after_a_nats_restart_hand_offs_flow_again_and_a_live_stream_completes(
    replicas: Replicas,
) -> None:
    replicas.balancer.point(replicas.ports["C"])  # B is gone: the workers are C's
    wait_until(lambda: _free_slots_seen(replicas, "A"), 60, "A to serve a chat through C")
    received: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(_stream_text, replicas.client("A"), 60, received)
        wait_until(lambda: len(received) >= 5, 30, "the stream to begin")
        replicas.nats.stop()
        replicas.nats.start()
        assert stream.result(timeout=90) == expected_text(60)
    # The consumers were re-created: new hand-offs go through (the pull subscription works).
    wait_until(lambda: _free_slots_seen(replicas, "A"), 60, "A to hand chats to C again")


def test_the_capacity_view_offers_live_capable_workers_and_forgets_silent_replicas() -> None:
    now = [0.0]
    view = CapacityView("a" * 32, stale_s=3.0, clock=lambda: now[0])

    def worker(worker_id: str, free: int, trust: int = 2) -> dict[str, Any]:
        return {
            "id": worker_id,
            "name": worker_id,
            "hardware": "cpu",
            "slots": 4,
            "free": free,
            "trust": trust,
            "models": [{"id": MODEL, "context_size": 2048, "supports_tools": False}],
        }

    view.apply({"replica": "b" * 32, "workers": [worker("x", 1)]})
    view.apply({"replica": "c" * 32, "workers": [worker("y", 3), worker("z", 4, trust=0)]})
    view.apply({"replica": "not an id", "workers": []})  # refused, logged

    def offered(model: str = MODEL, tools: bool = False, trust: int = 1) -> list[str]:
        found = view.candidates(
            model, needs_tools=tools, needs_context=0, min_trust=trust, avoid=frozenset({"q"})
        )
        return sorted(choice.id for choice in found)

    assert offered() == ["x", "y"]
    assert offered(trust=0) == ["x", "y", "z"]  # the untrusted worker only for a job that takes it
    assert offered(tools=True) == [] and offered("other") == []
    (x,) = view.candidates(
        MODEL, needs_tools=False, needs_context=0, min_trust=1, avoid=frozenset({"y"})
    )
    view.take(x, 10)  # its last free slot: not offered again until b says otherwise
    assert offered() == ["y"]
    assert view.serves(MODEL) and not view.serves("other")  # busy workers still serve it
    (summary,) = view.models()
    assert (summary.id, summary.workers, summary.context_size) == (MODEL, 3, 2048)
    view.apply({"replica": "b" * 32, "workers": [], "gone": ["x"]})
    assert view.serves(MODEL)  # y and z on c
    now[0] = 10.0
    assert view.live() == [] and offered(trust=0) == []
    assert not view.serves(MODEL)


@pytest.mark.anyio
async def test_a_stale_replica_is_ignored_then_cleaned_and_rewrites_its_sessions(
    conn: asyncpg.Connection,
) -> None:
    live_id, stale_id = "1" * 32, "2" * 32
    rows: dict[str, replica_registry.SessionRow] = {"w1": ("w1", (MODEL,), 4, 3)}
    for replica in (live_id, stale_id):
        assert await replica_registry.beat(conn, replica, f"host-{replica[0]}:8420")
        await replica_registry.record_sessions(conn, replica, {}, [])
    assert not await replica_registry.beat(conn, live_id, "host-1:8420")  # a renewal
    await replica_registry.record_sessions(conn, stale_id, rows, [])
    await conn.execute(
        "UPDATE hub_replicas SET heartbeat = now() - interval '1 minute' WHERE id = $1", stale_id
    )
    live = await replica_registry.live_replicas(conn, stale_s=5)
    assert [r.id for r in live] == [live_id]
    assert await replica_registry.sessions(conn, stale_s=5) == []  # the stale one's are ignored
    assert await replica_registry.forget_dead(conn, stale_s=5) == [stale_id]
    assert await conn.fetchval("SELECT count(*) FROM worker_sessions") == 0  # cascaded
    # The stale replica was only slow: its next beat finds its row gone and says so.
    assert await replica_registry.beat(conn, stale_id, "host-2:8420")
    await replica_registry.record_sessions(conn, stale_id, rows, [])
    sessions = await replica_registry.sessions(conn, stale_s=5)
    assert [(s.worker_id, s.replica_id, s.free_slots) for s in sessions] == [("w1", stale_id, 3)]
    await replica_registry.record_sessions(conn, stale_id, {}, ["w1"])
    assert await replica_registry.sessions(conn, stale_s=5) == []
