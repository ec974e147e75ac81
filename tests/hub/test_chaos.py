"""Chaos: streamed chats through two real workers while one of them is SIGKILLed again and again.

Two ``iamine worker`` processes serve the bundled model to a live hub. The official ``openai``
client streams ``IAMINE_CHAOS_REQUESTS`` chats (300 by default), a few at a time; before every
``IAMINE_CHAOS_KILL_EVERY``-th request (50) the test SIGKILLs one of the workers, in turn, while
it holds a job, and starts it again. Every request must end in a complete answer or a clean
OpenAI error (an ``openai.APIError`` carrying an error code), within a bound; afterwards no worker
holds a job and the hub is still ready. docs/testing.md says how to run it longer.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import openai
import pytest

from tests.hub.conftest import (
    BUNDLED_MODEL,
    LiveHub,
    start_worker,
    stop_worker,
    wait_for_model,
    wait_until,
)

REQUESTS = int(os.environ.get("IAMINE_CHAOS_REQUESTS", "") or 300)
KILL_EVERY = int(os.environ.get("IAMINE_CHAOS_KILL_EVERY", "") or 50)
CONCURRENCY = 6
MAX_TOKENS = 8
# A bound on one whole request (queueing included), far above what a healthy pool needs.
REQUEST_TIMEOUT_S = 90.0
DEGRADED_MARK = "[iamine: degraded answer]"
NAMES = ("a", "b")

Kind = Literal["completed", "failed_clean", "hung", "broken"]


@dataclass(frozen=True)
class Outcome:
    """How one request ended, with what the client saw (the evidence when it is wrong)."""

    index: int
    kind: Kind
    detail: str = ""


def admin_workers(hub: LiveHub) -> list[dict[str, Any]]:
    """The hub's live worker links, as the admin API shows them."""
    headers = {"Authorization": f"Bearer {hub.admin_token}"}
    response = httpx.get(f"{hub.url}/admin/api/workers", headers=headers, timeout=10)
    response.raise_for_status()
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def in_flight(hub: LiveHub) -> int:
    """Jobs the hub has on its workers' slots, all workers together."""
    return sum(int(w["in_flight"]) for w in admin_workers(hub))


@dataclass
class Workers:
    """The two worker processes; kills one of them (in turn) and starts it again."""

    hub: LiveHub
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    kills: int = 0

    def start(self, name: str) -> None:
        """Start (or start again) the worker called ``name``."""
        self.processes[name] = start_worker(self.hub, name, self.logs / f"{name}.{self.kills}.log")

    def both_joined(self) -> bool:
        """Both workers are connected, each by one link (a killed one's link is gone)."""
        names = [w["name"] for w in admin_workers(self.hub)]
        return sorted(names) == sorted(NAMES)

    def busy(self, name: str) -> bool:
        """The worker called ``name`` holds a job right now."""
        return any(w["name"] == name and w["in_flight"] > 0 for w in admin_workers(self.hub))

    def kill_and_restart(self) -> None:
        """SIGKILL the next worker in turn while it holds a job, then start it again."""
        wait_until(self.both_joined, 60, "both workers to be connected")
        name = NAMES[self.kills % len(NAMES)]
        wait_until(lambda: self.busy(name), 60, f"worker {name} to hold a job")
        victim = self.processes[name]
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=15) == -signal.SIGKILL
        self.kills += 1
        self.start(name)

    def stop(self) -> None:
        """Stop both workers."""
        for process in self.processes.values():
            stop_worker(process)


@pytest.fixture(scope="module")
def workers(live_hub: LiveHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """Both workers, connected; stopped when the module ends."""
    pool = Workers(live_hub, tmp_path_factory.mktemp("workers"))
    try:
        for name in NAMES:
            pool.start(name)
        wait_until(pool.both_joined, 60, "both workers to join")
        wait_for_model(live_hub, BUNDLED_MODEL)
        yield pool
    finally:
        pool.stop()


async def stream_chat(client: openai.AsyncOpenAI, index: int) -> Outcome:
    """Stream one short chat and classify how it ended."""
    text: list[str] = []
    finish: str | None = None
    try:
        with anyio.fail_after(REQUEST_TIMEOUT_S):
            stream = await client.chat.completions.create(
                model=BUNDLED_MODEL,
                messages=[{"role": "user", "content": f"Say one word about the number {index}."}],
                max_tokens=MAX_TOKENS,
                stream=True,
            )
            async with stream:
                async for chunk in stream:
                    if chunk.choices:
                        text.append(chunk.choices[0].delta.content or "")
                        finish = chunk.choices[0].finish_reason or finish
    except TimeoutError:
        return Outcome(index, "hung", f"no end after {REQUEST_TIMEOUT_S:g} s; got {text!r}")
    except openai.APIConnectionError as exc:
        return Outcome(index, "broken", f"{exc!r} caused by {exc.__cause__!r}")
    except openai.APIError as exc:
        kind: Kind = "failed_clean" if exc.code else "broken"
        detail = f"{type(exc).__name__} code={exc.code}: {exc.message} after {text!r}"
        return Outcome(index, kind, detail)
    except Exception as exc:  # anything else is the stream itself breaking: the evidence
        return Outcome(index, "broken", f"{type(exc).__name__}: {exc!r}")
    answer = "".join(text)
    if finish not in ("stop", "length") or not answer.strip():
        return Outcome(index, "broken", f"incomplete answer {answer!r}, finish_reason={finish!r}")
    if answer.startswith(DEGRADED_MARK):
        # One worker is always alive: a degraded answer here is a busy worker's fake answer.
        return Outcome(index, "broken", f"degraded answer: {answer!r}")
    return Outcome(index, "completed")


async def run_chaos(hub: LiveHub, pool: Workers) -> list[Outcome]:
    """Send every request, ``CONCURRENCY`` at a time; kill a worker as every ``KILL_EVERY``-th
    request starts, while the requests keep coming (so the victim is always busy)."""
    outcomes: list[Outcome] = []
    slots = anyio.Semaphore(CONCURRENCY)
    kill_at = {index: anyio.Event() for index in range(KILL_EVERY, REQUESTS, KILL_EVERY)}
    client = openai.AsyncOpenAI(
        base_url=f"{hub.url}/v1",
        api_key=hub.user_token,
        max_retries=0,
        timeout=REQUEST_TIMEOUT_S,
    )

    async def one(index: int) -> None:
        try:
            outcomes.append(await stream_chat(client, index))
        finally:
            slots.release()

    async def killer() -> None:
        for reached in kill_at.values():
            await reached.wait()
            await anyio.to_thread.run_sync(pool.kill_and_restart)

    async with client, anyio.create_task_group() as tasks:
        tasks.start_soon(killer)
        for index in range(REQUESTS):
            await slots.acquire()
            if index in kill_at:
                kill_at[index].set()
            tasks.start_soon(one, index)
    return outcomes


@pytest.fixture(scope="module")
def chaos(live_hub: LiveHub, workers: Workers) -> list[Outcome]:
    """Run the chaos once for the module; each test checks one promise about it."""
    return anyio.run(run_chaos, live_hub, workers)


def test_streams_end_complete_or_with_a_clean_error_while_workers_are_killed(
    chaos: list[Outcome], workers: Workers
) -> None:
    outcomes = chaos
    counts = Counter(o.kind for o in outcomes)
    wrong = sorted((o for o in outcomes if o.kind in ("hung", "broken")), key=lambda o: o.index)
    assert len(outcomes) == REQUESTS
    assert workers.kills == (REQUESTS - 1) // KILL_EVERY
    assert wrong == [], f"{counts}; first wrong endings: {wrong[:10]}; logs in {workers.logs}"
    # Failover makes nearly every answer complete; errors are for what failover cannot save.
    assert counts["completed"] >= REQUESTS // 2, f"{counts}: mostly errors"


def test_no_slot_stays_taken_and_the_hub_stays_ready_after_the_chaos(
    live_hub: LiveHub, chaos: list[Outcome]
) -> None:
    wait_until(lambda: in_flight(live_hub) == 0, 30, "every slot to be free")
    ready = httpx.get(f"{live_hub.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
