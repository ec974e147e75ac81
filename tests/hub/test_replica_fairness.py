"""Fairness across hub replicas, and a replica's id across restarts, on a real three-replica pool.

Replicas A, B and C run in threads of this process on one PostgreSQL and one ``nats-server``;
scripted workers (``tests/hub/test_replica_dispatch.py``) link one worker to A and two to B,
each through a TCP balancer; C has none. All three workers are alike (one class, one pace), so
the pool's deficit router gives each a third of the work wherever a chat arrives.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import orjson
import pytest
import uvicorn
from fastapi.testclient import TestClient

from hub.app import create_app
from hub.errors import HubError
from hub.replica_serve import Back, HandOff
from hub.replicas import REPLICA_ID_FILE
from inference.protocol import Job, SamplingParams
from tests.conftest import TEMPLATE_DB, database_uri, query_rows, run_sql
from tests.hub.conftest import free_port, serve_in_thread, wait_until
from tests.hub.test_replica_dispatch import (
    MODEL,
    Balancer,
    ScriptedWorkers,
    _register,
    _settings,
    expected_text,
)
from tests.hub.test_scale_out import NatsServer

ON_A, ON_B = ("w-a",), ("w-b1", "w-b2")


@dataclass
class Pool:
    """The three replicas (threads), their settings, the workers and the user's token."""

    servers: dict[str, tuple[uvicorn.Server, threading.Thread]]
    settings: dict[str, Any]
    nats: NatsServer
    database_url: str
    worker_ids: dict[str, str]
    user_token: str = ""
    other_token: str = ""  # a second user's
    admin_token: str = ""

    def queued(self, replica: str) -> int:
        """How many chats wait in ``replica``'s queue."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        listed = httpx.get(self.url(replica) + "/admin/api/queue", headers=headers, timeout=10)
        depth: int = listed.json()["depth"]
        return depth

    def url(self, replica: str) -> str:
        return f"http://127.0.0.1:{self.settings[replica].server.port}"

    def client(self, replica: str, token: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url(replica) + "/v1",
            api_key=token or self.user_token,
            max_retries=0,
            timeout=60,
        )

    def replica_id(self, replica: str) -> str | None:
        rows = query_rows(
            self.database_url,
            "SELECT id FROM hub_replicas WHERE address = $1",
            f"127.0.0.1:{self.settings[replica].server.port}",
        )
        return rows[0]["id"] if rows else None

    def stop(self, replica: str) -> None:
        server, thread = self.servers.pop(replica)
        server.should_exit = True
        thread.join(timeout=30)

    def start(self, replica: str) -> None:
        settings = self.settings[replica]
        self.servers[replica] = serve_in_thread(settings, settings.server.port)


@pytest.fixture(scope="module")
def pool(pg_admin_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    nats_server = NatsServer(tmp_path_factory.mktemp("nats"))
    nats_server.start()
    name = f"fairness_{uuid.uuid4().hex[:12]}"
    run_sql(pg_admin_uri, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    database_url = database_uri(pg_admin_uri, name)
    settings = {
        replica: _settings(
            tmp_path_factory.mktemp(replica.lower()), database_url, nats_server.url, free_port()
        )
        for replica in "ABC"
    }
    built = Pool({}, settings, nats_server, database_url, {})
    fleets: list[ScriptedWorkers] = []
    try:
        for replica in "ABC":
            built.start(replica)
        admin = (settings["A"].data_dir / "admin-token").read_text().strip()
        built.admin_token = admin
        built.user_token = _user_token(built.url("A"), admin, "uma")
        built.other_token = _user_token(built.url("A"), admin, "lee")
        for replica, names in (("A", ON_A), ("B", ON_B)):
            tokens = {worker: _register(database_url, worker) for worker in names}
            fleet = ScriptedWorkers(Balancer(settings[replica].server.port), tokens)
            fleet.start()
            fleets.append(fleet)
        rows = query_rows(database_url, "SELECT id::text, name FROM workers")
        built.worker_ids = {row["id"]: row["name"] for row in rows}
        yield built
    finally:
        for fleet in fleets:
            fleet.stop()
        for replica in list(built.servers):
            built.stop(replica)
        nats_server.stop()
        run_sql(pg_admin_uri, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _user_token(url: str, admin: str, name: str) -> str:
    headers = {"Authorization": f"Bearer {admin}"}
    made = httpx.post(f"{url}/admin/api/users", json={"name": name}, headers=headers)
    assert made.status_code == 201, made.text
    issued = httpx.post(f"{url}/admin/api/users/{name}/tokens", json={"name": "t"}, headers=headers)
    assert issued.status_code == 201, issued.text
    token: str = issued.json()["token"]
    return token


def _workers_seen(pool: Pool, replica: str) -> bool:
    """Whether every worker of the pool is in ``replica``'s models listing (its own or not)."""
    try:
        listed = {m.id: m for m in pool.client(replica).models.list()}
    except openai.APIError:
        return False
    return MODEL in listed and (listed[MODEL].model_extra or {}).get("workers") == 3


def _all_busy(pool: Pool) -> bool:
    """Whether every replica's listing shows no free slot (each view heard every replica)."""
    for replica in "ABC":
        listed = {m.id: m for m in pool.client(replica).models.list()}
        if (listed[MODEL].model_extra or {}).get("free_slots") != 0:
            return False
    return True


def _serve_one(pool: Pool, replica: str, tokens: int) -> tuple[str, str]:
    """One JSON chat through ``replica``: the name of the worker that served it, and the route."""
    raw = pool.client(replica).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "count"}], max_tokens=tokens
    )
    assert raw.parse().choices[0].message.content == expected_text(tokens)
    return pool.worker_ids[raw.headers["x-iamine-worker"]], raw.headers["x-iamine-route"]


@pytest.mark.parametrize("replica", ["A", "C"])
def test_chats_through_one_replica_share_the_pools_workers_by_their_deficit(
    pool: Pool, replica: str
) -> None:
    for each in "ABC":
        wait_until(partial(_workers_seen, pool, each), 30, f"{each} to see the three workers")
    served = Counter(_serve_one(pool, replica, 4)[0] for _ in range(12))
    # Three alike workers, a third of the work each. One replica's own router (the rule before)
    # gave A's worker every chat sent to A while it was free.
    assert set(served) == {*ON_A, *ON_B}, served
    assert all(count >= 2 for count in served.values()), served


def _stream(client: openai.OpenAI, tokens: int, started: list[str]) -> str:
    text: list[str] = []
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "count"}],
        max_tokens=tokens,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if not text:
                started.append("started")
            text.append(chunk.choices[0].delta.content)
    return "".join(text)


def _queued_one(pool: Pool, replica: str) -> bool:
    return pool.queued(replica) == 1


def test_a_freed_slot_goes_to_the_pools_first_waiter_whichever_replica_holds_it(
    pool: Pool,
) -> None:
    """Every slot busy; waiters on C, A and B: the release follows the pool-wide order.

    uma has twelve chats running (on A's and B's workers, none on C's: C has none) when she
    queues a chat on C; then lee, with none running, queues one on A, then one on B. Pool-wide,
    lee's go first (fewer running jobs), in arrival order, then uma's. Per replica, C would
    count no running job of uma's, and B would give its own freed slot to its own waiter.
    """
    for each in "ABC":
        wait_until(partial(_workers_seen, pool, each), 30, f"{each} to see the three workers")
    slots = 12  # three workers of four slots
    started: list[str] = []
    finished: list[str] = []
    with ThreadPoolExecutor(slots + 3) as threads:
        # Staggered lengths: the slots free one by one, 0.4 s apart, from 2 s on.
        streams = [
            threads.submit(_stream, pool.client("A"), 40 + 8 * i, started) for i in range(slots)
        ]
        wait_until(lambda: len(started) == slots, 30, "every slot to be busy")
        wait_until(partial(_all_busy, pool), 10, "every replica to see every slot busy")

        def chat(label: str, replica: str, token: str) -> None:
            answer = pool.client(replica, token).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": label}], max_tokens=2
            )
            assert answer.choices[0].message.content == expected_text(2)
            finished.append(label)

        waiting = []
        for label, replica, token in (
            ("uma-on-C", "C", pool.user_token),
            ("lee-on-A", "A", pool.other_token),
            ("lee-on-B", "B", pool.other_token),
        ):  # one after the other: each is queued before the next arrives
            waiting.append(threads.submit(chat, label, replica, token))
            wait_until(partial(_queued_one, pool, replica), 10, f"{label} to be queued")
        assert not finished and len(started) == slots  # all queued while every slot was busy
        for future in waiting:
            future.result(timeout=60)
        assert [f.result(timeout=60) for f in streams] == [
            expected_text(40 + 8 * i) for i in range(slots)
        ]
    assert finished == ["lee-on-A", "lee-on-B", "uma-on-C"]


def _pool_config(pool: Pool, replica: str, method: str, body: Any = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {pool.admin_token}"}
    url = pool.url(replica) + "/admin/api/pool-config"
    answer = httpx.request(method, url, json=body, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    config: dict[str, Any] = answer.json()
    return config


def test_a_chat_queued_where_no_worker_serves_its_model_waits_for_a_slot_elsewhere(
    pool: Pool,
) -> None:
    """C has no worker: its queue's wait is predicted from the others' capacity, not unbounded.

    With ``queue_wait_s`` at 1 s, a chat that found every slot busy used to be answered
    degraded after that second (no capable worker here, so no prediction); it waits for a slot
    on A or B now, as it would on their own queues.
    """
    before = _pool_config(pool, "A", "GET")
    _pool_config(pool, "A", "PUT", before | {"queue_wait_s": 1.0})
    try:
        wait_until(
            lambda: _pool_config(pool, "C", "GET")["queue_wait_s"] == 1.0, 10, "C's new config"
        )
        started: list[str] = []
        with ThreadPoolExecutor(13) as threads:
            # 6 s streams: the slots stay busy well past queue_wait_s after C's chat is queued,
            # however long the replicas take to see every slot busy on a loaded machine
            streams = [threads.submit(_stream, pool.client("A"), 120, started) for _ in range(12)]
            wait_until(lambda: len(started) == 12, 30, "every slot to be busy")
            wait_until(partial(_all_busy, pool), 10, "every replica to see every slot busy")
            raw = pool.client("C").chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "wait"}], max_tokens=2
            )
            assert [f.result(timeout=60) for f in streams] == [expected_text(120)] * 12
        assert raw.headers["x-iamine-route"] == "replica"
        assert int(raw.headers["x-iamine-queue-ms"]) > 1000  # it waited past queue_wait_s
        assert raw.parse().choices[0].message.content == expected_text(2)
    finally:
        _pool_config(pool, "A", "PUT", before)


async def _hand_off_while_down(nats_url: str, replica_id: str, job_id: str) -> list[Back]:
    """Publish a hand-off to ``replica_id``'s queue; the answer frames once it is served."""
    client = await nats.connect(nats_url)
    try:
        answers = await client.subscribe(f"iamine.back.{job_id}")
        job = Job(
            job_id=job_id,
            model=MODEL,
            messages=[{"role": "user", "content": "queued"}],
            params=SamplingParams(max_tokens=3),
            deadline_s=60,
        )
        handoff = HandOff(
            origin="f" * 32,
            job=job,
            worker="any",
            needs_tools=False,
            user="uma",
            needs_context=0,
            min_trust=0,
        )
        await client.jetstream().publish(
            f"iamine.jobs.{replica_id}", handoff.model_dump_json().encode(), stream="iamine_jobs"
        )
        return await _answer(client, answers, job_id)
    finally:
        await client.close()


async def _answer(client: Any, answers: Any, job_id: str) -> list[Back]:
    frames: list[Back] = []
    async with asyncio.timeout(60):
        while not frames or frames[-1].frame is None or frames[-1].frame.type == "chunk":
            back = Back.model_validate_json((await answers.next_msg(timeout=60)).data)
            if back.kind == "frame":
                frames.append(back)
                control = {"kind": "credit", "upto": back.seq + 64}
                await client.publish(f"iamine.control.{job_id}", orjson.dumps(control))
    return frames


def test_a_restarted_replica_keeps_its_id_and_serves_a_hand_off_queued_while_it_was_down(
    pool: Pool,
) -> None:
    before = pool.replica_id("B")
    assert before is not None
    assert (pool.settings["B"].data_dir / REPLICA_ID_FILE).read_text().strip() == before
    pool.stop("B")  # a clean stop: its row goes, its durable consumer stays
    assert pool.replica_id("B") is None
    job_id = uuid.uuid4().hex
    answer: list[Back] = []
    done = threading.Event()

    def wait_for_answer() -> None:
        answer.extend(asyncio.run(_hand_off_while_down(pool.nats.url, before, job_id)))
        done.set()

    waiter = threading.Thread(target=wait_for_answer, daemon=True)
    waiter.start()
    pool.start("B")
    assert done.wait(60), "the queued hand-off was never served"
    wait_until(lambda: pool.replica_id("B") == before, 10, "B's row under its old id")
    text = "".join(
        b.frame.delta.content or "" for b in answer if b.frame and b.frame.type == "chunk"
    )
    assert text == expected_text(3), answer
    assert [b.seq for b in answer] == list(range(1, len(answer) + 1))


def test_a_second_process_claiming_a_live_replicas_id_is_refused(
    pool: Pool, tmp_path: Path
) -> None:
    held = pool.replica_id("A")
    assert held is not None
    bus = pool.settings["A"].bus.model_copy(update={"replica_id": held})
    twin = pool.settings["A"].model_copy(
        update={"data_dir": tmp_path, "bus": bus, "server": pool.settings["C"].server}
    )
    with pytest.raises(HubError) as refused, TestClient(create_app(twin)):
        pass
    assert refused.value.code == "replica_id_in_use"
    assert f"127.0.0.1:{pool.settings['A'].server.port}" in refused.value.message
    assert pool.replica_id("A") == held  # the live replica is untouched
    assert _serve_one(pool, "A", 2)[0] in {*ON_A, *ON_B}
