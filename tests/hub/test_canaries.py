"""Canaries on a live hub: honest workers are promoted, lying ones are caught and slashed.

Fake workers speak the protocol by hand (``raw_worker``); a trusted fake ("oracle", trust 2)
gives the reference answers where a test needs one. The real-worker test runs two llama.cpp
workers on the bundled model.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from inference.canaries import CANARY_PROMPTS, agrees, normalise, usage_problem
from inference.checker import (
    BENCHMARK_PROMPT,
    KNOWN_QUESTION,
    CanarySettings,
    CheckerSettings,
    PinnedRun,
)
from inference.protocol import Done, Job, SamplingParams, Usage
from tests.hub.conftest import BUNDLED_MODEL, LiveHub, start_worker, stop_worker, wait_for_model
from tests.hub.raw_worker import raw_worker

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def hub_overrides() -> dict[str, Any]:
    """Short checks, and no random spot checks (each test says which canaries it expects)."""
    canaries = CanarySettings(spot_check_rate=0)
    return {"checker": CheckerSettings(timeout_s=20, queue_wait_s=2, canaries=canaries)}


def echo(prompt: str) -> str:
    """The honest fakes' greedy answer: a fixed function of the prompt."""
    return f"Echo: {prompt}"


def lie(prompt: str) -> str:
    """A liar's answer: plausible text, not the model's."""
    return "I am sure the answer is forty-two."


async def serve(
    ws: ClientConnection,
    jobs: list[dict[str, Any]],
    *,
    text: Callable[[str], str] = echo,
    completion_tokens: int | None = None,
    model: str | None = None,
    pieces: int = 1,
    pause_s: float = 0.0,
) -> None:
    """Answer every job until cancelled or disconnected, in ``pieces`` chunks ``pause_s`` apart."""
    with contextlib.suppress(ConnectionClosed):
        await _serve(ws, jobs, text, completion_tokens, model, pieces, pause_s)


async def _serve(
    ws: ClientConnection,
    jobs: list[dict[str, Any]],
    text: Callable[[str], str],
    completion_tokens: int | None,
    model: str | None,
    pieces: int,
    pause_s: float,
) -> None:
    while True:
        frame: dict[str, Any] = json.loads(await ws.recv())
        if frame["type"] != "job":
            continue
        jobs.append(frame)
        answer = text(frame["messages"][-1]["content"])
        size = -(-len(answer) // pieces)
        for start in range(0, len(answer), size):
            chunk = {"content": answer[start : start + size]}
            await ws.send(json.dumps({"type": "chunk", "job_id": frame["job_id"], "delta": chunk}))
            if pause_s:
                await anyio.sleep(pause_s)
        completion = completion_tokens if completion_tokens is not None else pieces
        usage = {"prompt_tokens": 12, "completion_tokens": completion}
        done = {"type": "done", "job_id": frame["job_id"], "finish_reason": "stop"}
        done |= {"model": model or frame["model"], "usage": usage | {"total_tokens": 12}}
        await ws.send(json.dumps(done))


async def query(hub: LiveHub, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(hub.database_url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def trust_of(hub: LiveHub, name: str) -> int:
    [row] = await query(hub, "SELECT trust FROM workers WHERE name = $1", name)
    return int(row["trust"])


async def slashes_of(hub: LiveHub, name: str) -> list[dict[str, Any]]:
    rows = await query(
        hub,
        "SELECT e.reason, e.evidence FROM slashing_events e JOIN workers w ON w.id = e.worker_id "
        "WHERE w.name = $1 ORDER BY e.id",
        name,
    )
    return [{"reason": r["reason"], "evidence": json.loads(r["evidence"])} for r in rows]


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30
) -> None:
    """Poll the database until ``check`` holds (the hub decides in its own thread)."""
    with anyio.fail_after(timeout_s):
        while not await check():  # noqa: ASYNC110 - another thread writes the database
            await anyio.sleep(0.05)


def admin(hub: LiveHub) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.admin_token}"}


async def run_checker(hub: LiveHub) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.post(f"{hub.url}/admin/api/jobs/checker/run", headers=admin(hub))
    body: dict[str, Any] = response.json()
    return body


async def connected(hub: LiveHub) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{hub.url}/admin/api/workers", headers=admin(hub))
    workers: list[dict[str, Any]] = response.json()["data"]
    return workers


async def worker_ids(hub: LiveHub) -> dict[str, str]:
    return {w["name"]: w["id"] for w in await connected(hub)}


async def chat(hub: LiveHub, model: str, max_tokens: int | None = None) -> httpx.Response:
    messages = [{"role": "user", "content": "hello there"}]
    body: dict[str, Any] = {"model": model, "messages": messages}
    if max_tokens is not None:  # a real model's sampled answer has no bound of its own
        body["max_tokens"] = max_tokens
    headers = {"Authorization": f"Bearer {hub.user_token}"}
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(f"{hub.url}/v1/chat/completions", json=body, headers=headers)


CANARY_QUESTIONS = {prompt for prompt, _ in CANARY_PROMPTS}


def canary_jobs(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [j for j in jobs if j["messages"][-1]["content"] in CANARY_QUESTIONS]


# Pure rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "received", "chars", "same"),
    [
        ("Paris is the capital.", "Paris is the capital.", 32, True),
        ("Paris  is\nthe capital.", " Paris is the capital. ", 32, True),
        ("Paris is the capital of France.", "Paris is the capital of Italy.", 22, True),
        ("Paris is the capital of France.", "Paris is the capital of Italy.", 32, False),
        ("Paris.", "", 32, False),
        ("Paris.", "London.", 1, False),
    ],
)
def test_answers_agree_on_their_first_characters_after_whitespace_is_collapsed(
    expected: str, received: str, chars: int, same: bool
) -> None:
    assert agrees(expected, received, chars) is same


def test_normalise_collapses_whitespace() -> None:
    assert normalise("  a \t b\n\nc ") == "a b c"


def finished(text: str, chunks: int, prompt_tokens: int, completion_tokens: int) -> PinnedRun:
    usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
    done = Done(job_id="j", finish_reason="stop", usage=usage, model="m")
    return PinnedRun(text=text, chunks=chunks, output_bytes=len(text.encode()), done=done)


@pytest.mark.parametrize(
    ("run", "forged"),
    [
        (finished("Tokyo is the capital.", 6, 40, 6), None),
        (finished("Tokyo", 1, 40, 5 + 8), None),  # the slack for special tokens
        (finished("Tokyo", 1, 40, 5 + 9), "reported 14 completion tokens"),
        (finished("Tokyo", 1, 5000, 2), "reported 5000 prompt tokens"),
        (finished("", 0, 0, 0), None),
    ],
)
def test_usage_above_what_the_hub_received_or_sent_is_forged(
    run: PinnedRun, forged: str | None
) -> None:
    job = Job(
        job_id="j",
        model="m",
        messages=[{"role": "user", "content": "What is the capital of Japan?"}],
        params=SamplingParams(max_tokens=24, temperature=0.0),
        deadline_s=30,
    )
    problem = usage_problem(job, run, CheckerSettings())
    if forged is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(forged)


@pytest.mark.parametrize(
    "bad",
    [{"prompts": 0}, {"spot_check_rate": 1.5}, {"speed_factor": 1.0}, {"compare_chars": 0}],
)
def test_canary_settings_refuse_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CanarySettings(**bad)


# Live hub ----------------------------------------------------------------------------------


async def test_a_new_worker_answering_like_the_trusted_one_is_promoted_soon_after_joining(
    live_hub: LiveHub,
) -> None:
    oracle_jobs: list[dict[str, Any]] = []
    new_jobs: list[dict[str, Any]] = []
    token = live_hub.worker_token_for("honest-fake", trust=0)
    async with (
        raw_worker(live_hub, "echo-model", name="oracle-echo", slots=4) as oracle,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(lambda: serve(oracle, oracle_jobs))
        async with raw_worker(live_hub, "echo-model", name="honest-fake", token=token) as new:
            tasks.start_soon(lambda: serve(new, new_jobs))

            async def promoted() -> bool:
                return await trust_of(live_hub, "honest-fake") == 1

            await eventually(promoted, "the honest fake to be promoted")
            asked = len(new_jobs)
            ids = await worker_ids(live_hub)
            served = {(await chat(live_hub, "echo-model")).headers["x-iamine-worker"]}
            for _ in range(5):
                served.add((await chat(live_hub, "echo-model")).headers["x-iamine-worker"])
        tasks.cancel_scope.cancel()
    assert len(canary_jobs(new_jobs[:asked])) == 3
    assert all(
        j["messages"] == [{"role": "user", "content": j["messages"][0]["content"]}]
        for j in canary_jobs(new_jobs)
    ), "a canary is a plain user chat"
    assert ids["honest-fake"] in served, "a verified worker gets user chats"
    assert await slashes_of(live_hub, "honest-fake") == []


async def test_a_new_worker_giving_wrong_answers_is_slashed_with_evidence_and_gets_no_chats(
    live_hub: LiveHub,
) -> None:
    oracle_jobs: list[dict[str, Any]] = []
    liar_jobs: list[dict[str, Any]] = []
    token = live_hub.worker_token_for("liar", trust=0)
    async with (
        raw_worker(live_hub, "liar-model", name="oracle-liar", slots=4) as oracle,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(lambda: serve(oracle, oracle_jobs))
        async with raw_worker(live_hub, "liar-model", name="liar", token=token) as liar:
            tasks.start_soon(lambda: serve(liar, liar_jobs, text=lie))

            async def slashed() -> bool:
                return bool(await slashes_of(live_hub, "liar"))

            await eventually(slashed, "the liar to be slashed")
            asked = len(liar_jobs)
            ids = await worker_ids(live_hub)
            served = [(await chat(live_hub, "liar-model")).headers["x-iamine-worker"]]
            for _ in range(5):
                served.append((await chat(live_hub, "liar-model")).headers["x-iamine-worker"])
            again = await run_checker(live_hub)
        tasks.cancel_scope.cancel()
    [event] = await slashes_of(live_hub, "liar")
    assert event["reason"] == "canary: wrong answer"
    evidence = event["evidence"]
    assert evidence["kind"] == "wrong_answer" and evidence["trigger"] == "joined"
    assert evidence["expected"] == echo(evidence["prompt"])
    assert evidence["received"] == lie(evidence["prompt"])
    assert evidence["model"] == "liar-model"
    assert await trust_of(live_hub, "liar") == 0
    assert set(served) == {ids["oracle-liar"]}, "a slashed worker got a user chat"
    later = {j["messages"][-1]["content"] for j in liar_jobs[asked:]}
    assert later == {BENCHMARK_PROMPT, KNOWN_QUESTION}, "only the checker's jobs reach it"
    [cooling] = [v for v in again["detail"]["canaries"] if v["worker"] == "liar"]
    assert cooling["outcome"] == "inconclusive" and cooling["reason"] == "slashed lately"
    assert len(await slashes_of(live_hub, "liar")) == 1, "a cooling-down worker is not re-slashed"
    async with httpx.AsyncClient() as http:
        listed = await http.get(
            f"{live_hub.url}/admin/api/slashing",
            params={"worker_id": ids["liar"]},
            headers={"Authorization": f"Bearer {live_hub.admin_token}"},
        )
    assert listed.status_code == 200, listed.text
    [shown] = listed.json()["data"]
    assert shown["reason"] == event["reason"] and shown["evidence"] == evidence


async def test_forged_usage_is_slashed_even_with_right_answers(live_hub: LiveHub) -> None:
    oracle_jobs: list[dict[str, Any]] = []
    forger_jobs: list[dict[str, Any]] = []
    token = live_hub.worker_token_for("forger", trust=0)
    async with (
        raw_worker(live_hub, "usage-model", name="oracle-usage", slots=4) as oracle,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(lambda: serve(oracle, oracle_jobs))
        async with raw_worker(live_hub, "usage-model", name="forger", token=token) as forger:
            tasks.start_soon(lambda: serve(forger, forger_jobs, completion_tokens=5000))

            async def slashed() -> bool:
                return bool(await slashes_of(live_hub, "forger"))

            await eventually(slashed, "the forger to be slashed")
        tasks.cancel_scope.cancel()
    [event] = await slashes_of(live_hub, "forger")
    assert event["reason"].startswith("canary: forged usage (reported 5000 completion tokens")
    evidence = event["evidence"]
    assert evidence["kind"] == "forged_usage"
    assert evidence["usage"]["completion_tokens"] == 5000
    assert evidence["chunks"] == 1 and evidence["received"] == echo(evidence["prompt"])
    assert await trust_of(live_hub, "forger") == 0


async def test_another_model_behind_the_claimed_name_is_slashed(live_hub: LiveHub) -> None:
    oracle_jobs: list[dict[str, Any]] = []
    impostor_jobs: list[dict[str, Any]] = []
    token = live_hub.worker_token_for("impostor", trust=0)
    async with (
        raw_worker(live_hub, "claimed-model", name="oracle-claimed", slots=4) as oracle,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(lambda: serve(oracle, oracle_jobs))
        async with raw_worker(live_hub, "claimed-model", name="impostor", token=token) as fake:
            tasks.start_soon(lambda: serve(fake, impostor_jobs, model="cheap-model"))

            async def slashed() -> bool:
                return bool(await slashes_of(live_hub, "impostor"))

            await eventually(slashed, "the impostor to be slashed")
        tasks.cancel_scope.cancel()
    [event] = await slashes_of(live_hub, "impostor")
    assert event["reason"] == "canary: answered 'claimed-model' with another model"
    assert event["evidence"]["kind"] == "wrong_model"
    assert "cheap-model" in event["evidence"]["error"]
    assert await trust_of(live_hub, "impostor") == 0


async def test_two_owners_agreeing_without_a_trusted_worker_are_both_promoted(
    live_hub: LiveHub,
) -> None:
    first = live_hub.worker_token_for("quorum-a", trust=0)
    second = live_hub.worker_token_for("quorum-b", trust=0, owner="neighbour")
    jobs_a: list[dict[str, Any]] = []
    jobs_b: list[dict[str, Any]] = []
    async with (
        raw_worker(live_hub, "quorum-model", name="quorum-a", token=first, slots=2) as a,
        raw_worker(live_hub, "quorum-model", name="quorum-b", token=second, slots=2) as b,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(lambda: serve(a, jobs_a))
        tasks.start_soon(lambda: serve(b, jobs_b))

        async def both() -> bool:
            return {await trust_of(live_hub, n) for n in ("quorum-a", "quorum-b")} == {1}

        await eventually(both, "both quorum workers to be promoted")
        tasks.cancel_scope.cancel()
    assert canary_jobs(jobs_a) and canary_jobs(jobs_b)
    assert await slashes_of(live_hub, "quorum-a") == await slashes_of(live_hub, "quorum-b") == []


async def test_two_owners_disagreeing_stay_new_and_nobody_is_slashed(live_hub: LiveHub) -> None:
    first = live_hub.worker_token_for("split-a", trust=0)
    second = live_hub.worker_token_for("split-b", trust=0, owner="neighbour")
    async with (
        raw_worker(live_hub, "split-model", name="split-a", token=first, slots=2) as a,
        raw_worker(live_hub, "split-model", name="split-b", token=second, slots=2) as b,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(lambda: serve(a, []))
        tasks.start_soon(lambda: serve(b, [], text=lie))
        checked = await run_checker(live_hub)
        tasks.cancel_scope.cancel()
    verdicts = {v["worker"]: v for v in checked["detail"]["canaries"]}
    assert verdicts["split-a"]["outcome"] == "inconclusive"
    assert verdicts["split-a"]["reason"] == "quorum disagrees: nobody can tell who is wrong"
    assert {await trust_of(live_hub, n) for n in ("split-a", "split-b")} == {0}
    assert await slashes_of(live_hub, "split-a") == await slashes_of(live_hub, "split-b") == []


async def test_a_worker_without_any_reference_is_inconclusive(live_hub: LiveHub) -> None:
    token = live_hub.worker_token_for("alone", trust=0)
    async with (
        raw_worker(live_hub, "lonely-model", name="alone", token=token) as ws,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(lambda: serve(ws, [], text=lie))
        checked = await run_checker(live_hub)
        tasks.cancel_scope.cancel()
    [verdict] = [v for v in checked["detail"]["canaries"] if v["worker"] == "alone"]
    assert verdict["outcome"] == "inconclusive" and verdict["reason"].startswith("no reference")
    assert await trust_of(live_hub, "alone") == 0
    assert await slashes_of(live_hub, "alone") == []


async def test_an_implausible_speed_triggers_canaries_but_no_slash(live_hub: LiveHub) -> None:
    slow_jobs: list[dict[str, Any]] = []
    fast_jobs: list[dict[str, Any]] = []
    async with (
        raw_worker(live_hub, "speed-model", name="steady", slots=4) as slow,
        raw_worker(live_hub, "speed-model", name="rocket", slots=4) as fast,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(lambda: serve(slow, slow_jobs, pieces=8, pause_s=0.05))
        tasks.start_soon(lambda: serve(fast, fast_jobs, pieces=8))
        checked = await run_checker(live_hub)
        tasks.cancel_scope.cancel()
    verdicts = checked["detail"]["canaries"]
    assert [(v["worker"], v["trigger"]) for v in verdicts] == [("rocket", "speed")]
    assert verdicts[0]["outcome"] == "passed"
    assert canary_jobs(fast_jobs), "the fast worker got canaries"
    assert await slashes_of(live_hub, "rocket") == []
    assert await trust_of(live_hub, "rocket") == 2


async def test_a_granted_worker_failing_canaries_is_excluded_not_slashed(
    live_hub: LiveHub,
) -> None:
    token = live_hub.worker_token_for("boss", trust=3)
    async with (
        raw_worker(live_hub, "boss-model", name="oracle-boss", slots=4) as slow,
        raw_worker(live_hub, "boss-model", name="boss", token=token, slots=4) as fast,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(lambda: serve(slow, [], pieces=8, pause_s=0.05))
        tasks.start_soon(lambda: serve(fast, [], text=lie, pieces=8))
        checked = await run_checker(live_hub)
        excluded = {w["name"]: w["excluded"] for w in await connected(live_hub)}
        tasks.cancel_scope.cancel()
    [verdict] = [v for v in checked["detail"]["canaries"] if v["worker"] == "boss"]
    assert (verdict["trigger"], verdict["outcome"]) == ("speed", "failed")
    assert verdict["action"] == "excluded"
    assert excluded["boss"] == "canary_failed"
    assert await slashes_of(live_hub, "boss") == []
    assert await trust_of(live_hub, "boss") == 3


async def test_an_honest_real_worker_is_promoted_and_then_gets_user_chats(
    live_hub: LiveHub, tmp_path: Path
) -> None:
    live_hub.worker_token_for("newcomer", trust=0)
    reference = start_worker(live_hub, "reference", tmp_path / "reference.log")
    newcomer = None
    try:
        wait_for_model(live_hub, BUNDLED_MODEL)
        newcomer = start_worker(live_hub, "newcomer", tmp_path / "newcomer.log")

        async def promoted() -> bool:
            return await trust_of(live_hub, "newcomer") == 1

        await eventually(promoted, "the real newcomer to be promoted", timeout_s=240)
        stop_worker(reference)
        ids = await worker_ids(live_hub)
        response = await chat(live_hub, BUNDLED_MODEL, max_tokens=16)
    finally:
        stop_worker(reference)
        if newcomer is not None:
            stop_worker(newcomer)
    assert response.status_code == 200, response.text
    assert response.headers["x-iamine-worker"] == ids["newcomer"]
    assert await slashes_of(live_hub, "newcomer") == []
