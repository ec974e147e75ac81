"""run_job and complete_text on in-process fake workers: answers, the queue doctrine, failures."""

from __future__ import annotations

import uuid

import anyio
import pytest

from inference.dispatch import Degraded, JobFailed, Started, Waiting, complete_text, run_job
from inference.link import WorkerLink
from inference.pool_config import JobKind, PoolConfig
from inference.protocol import (
    Cancel,
    Chunk,
    Delta,
    Done,
    Error,
    Frame,
    Job,
    ModelInfo,
    SamplingParams,
    Usage,
)
from inference.registry import WorkerRegistry
from inference.settings import InferenceSettings

pytestmark = pytest.mark.anyio


def worker(registry: WorkerRegistry, reply: list[str] | None, trust: int = 2) -> WorkerLink:
    """A worker that answers each job with ``reply`` pieces, or fails it when ``reply`` is None.

    Established (trust 2) unless told otherwise, so the hub's private jobs may reach it.
    """

    async def send(frame: Frame) -> None:
        if not isinstance(frame, Job):
            return
        if reply is None:
            await registry.deliver(
                link, Error(job_id=frame.job_id, code="engine_error", message="boom")
            )
            return
        for piece in reply:
            await registry.deliver(link, Chunk(job_id=frame.job_id, delta=Delta(content=piece)))
        usage = Usage(prompt_tokens=3, completion_tokens=len(reply), total_tokens=3 + len(reply))
        await registry.deliver(
            link, Done(job_id=frame.job_id, finish_reason="stop", model=frame.model, usage=usage)
        )

    link = WorkerLink(
        id="w",
        name="w",
        owner_id=None,
        models={"m": ModelInfo(id="m", context_size=512)},
        hardware="cpu",
        slots=1,
        send=send,
        trust=trust,
    )
    registry.workers[link.id] = link
    return link


def registry() -> WorkerRegistry:
    return WorkerRegistry(InferenceSettings(), PoolConfig(queue_wait_s=0))


async def test_the_answer_comes_back_whole() -> None:
    pool = registry()
    worker(pool, ["A short ", "summary."])
    text = await complete_text(
        pool,
        "m",
        [{"role": "user", "content": "x"}],
        max_tokens=8,
        temperature=0,
        kind="extraction",
    )
    assert text == "A short summary."
    assert pool.workers["w"].jobs == {}


async def test_no_worker_for_the_model_is_a_clear_failure() -> None:
    with pytest.raises(JobFailed) as caught:
        await complete_text(
            registry(),
            "m",
            [{"role": "user", "content": "x"}],
            max_tokens=8,
            temperature=0,
            kind="extraction",
        )
    assert caught.value.code == "model_unavailable"


async def test_a_failing_worker_is_reported_not_hidden() -> None:
    pool = registry()
    worker(pool, None)
    with pytest.raises(JobFailed) as caught:
        await complete_text(
            pool,
            "m",
            [{"role": "user", "content": "x"}],
            max_tokens=8,
            temperature=0,
            kind="extraction",
        )
    assert caught.value.code == "engine_error"


@pytest.mark.parametrize("kind", ["extraction", "compaction"])
async def test_the_hubs_private_work_never_reaches_a_worker_below_its_trust(
    kind: JobKind,
) -> None:
    pool = registry()
    link = worker(pool, ["leaked"], trust=1)
    with pytest.raises(JobFailed) as caught:
        await complete_text(
            pool, "m", [{"role": "user", "content": "x"}], max_tokens=8, temperature=0, kind=kind
        )
    assert caught.value.code == "model_unavailable"
    assert "trust 2" in caught.value.message
    assert link.jobs == {} and link.jobs_done == 0


async def test_a_chat_waits_for_a_trusted_worker_and_never_runs_on_a_new_one() -> None:
    pool = registry()
    untrusted, untrusted_jobs = holding_worker(pool, "new")
    job = Job(
        job_id=uuid.uuid4().hex,
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        params=SamplingParams(max_tokens=4),
        deadline_s=5,
    )
    events = [e async for e in run_job(pool, job, needs_tools=False, user="u", min_trust=1)]
    assert isinstance(events[-1], Degraded)
    assert untrusted_jobs == [] and untrusted.trust == 0
    pool.apply_trust(untrusted.id, 1)
    async with anyio.create_task_group() as tasks:

        async def answer() -> None:
            await untrusted_jobs.wait_for(1)
            await finish(pool, untrusted, untrusted_jobs[0], "now trusted")

        tasks.start_soon(answer)
        events = [e async for e in run_job(pool, job, needs_tools=False, user="u", min_trust=1)]
    assert isinstance(events[0], Started) and events[0].worker_id == "new"


class Jobs(list[Job]):
    """Jobs a holding worker received; :meth:`wait_for` blocks until there are ``n``."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = anyio.Event()

    def add(self, job: Job) -> None:
        self.append(job)
        self.arrived.set()

    async def wait_for(self, n: int) -> None:
        with anyio.fail_after(10):
            while len(self) < n:
                await self.arrived.wait()
                self.arrived = anyio.Event()


def holding_worker(
    pool: WorkerRegistry, name: str = "busy", *, joined: bool = True
) -> tuple[WorkerLink, Jobs]:
    """A worker that takes jobs and answers only when the test says so (``joined``: already in
    the pool; else the test adds it, as a hello would)."""
    jobs = Jobs()

    async def send(frame: Frame) -> None:
        if isinstance(frame, Job):
            jobs.add(frame)

    link = WorkerLink(
        id=name,
        name=name,
        owner_id=None,
        models={"m": ModelInfo(id="m", context_size=512)},
        hardware="cpu",
        slots=1,
        send=send,
    )
    if joined:
        pool.workers[link.id] = link
    return link, jobs


async def finish(pool: WorkerRegistry, link: WorkerLink, job: Job, text: str = "ok") -> None:
    await pool.deliver(link, Chunk(job_id=job.job_id, delta=Delta(content=text)))
    usage = Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    await pool.deliver(
        link, Done(job_id=job.job_id, finish_reason="stop", model=job.model, usage=usage)
    )


def a_job(max_tokens: int = 8) -> Job:
    return Job(
        job_id=uuid.uuid4().hex,
        model="m",
        messages=[{"role": "user", "content": "x"}],
        params=SamplingParams(max_tokens=max_tokens),
        deadline_s=30,
    )


def doctrine(queue_wait_s: float = 10.0, max_queue_wait_s: float = 300.0) -> WorkerRegistry:
    settings = InferenceSettings(queue_notice_s=0.05, cancel_grace_s=0.05)
    config = PoolConfig(queue_wait_s=queue_wait_s, max_queue_wait_s=max_queue_wait_s)
    return WorkerRegistry(settings, config)


async def test_a_job_behind_a_busy_living_worker_waits_past_queue_wait_instead_of_degrading() -> (
    None
):
    pool = doctrine(queue_wait_s=0.05, max_queue_wait_s=30)
    link, jobs = holding_worker(pool)
    assert await pool.place(a_job(), needs_tools=False, user="a") is not None
    events = run_job(pool, a_job(), needs_tools=False, user="b", notify_waiting=True)
    seen: list[object] = []
    async with anyio.create_task_group() as tasks:

        async def release_later() -> None:
            await anyio.sleep(0.3)  # six times queue_wait_s
            await finish(pool, link, jobs[0])
            await jobs.wait_for(2)
            await finish(pool, link, jobs[1], "second")

        tasks.start_soon(release_later)
        with anyio.fail_after(10):
            async for event in events:
                seen.append(event)
    waiting = [e for e in seen if isinstance(e, Waiting)]
    started = [e for e in seen if isinstance(e, Started)]
    assert waiting, "a waiting stream hears about it"
    assert [s.route for s in started] == ["queued"]
    assert not any(isinstance(e, Degraded) for e in seen)
    assert link.jobs == {}


async def test_a_wait_predicted_past_the_bound_is_pool_busy_with_a_retry_time() -> None:
    pool = doctrine(queue_wait_s=0.05, max_queue_wait_s=1)
    holding_worker(pool)
    # 100,000 expected tokens at the unmeasured 10 tokens/s: hours of work ahead.
    assert await pool.place(a_job(100_000), needs_tools=False, user="a") is not None
    with anyio.fail_after(10), pytest.raises(JobFailed) as caught:
        async for _ in run_job(pool, a_job(), needs_tools=False, user="b"):
            pass
    assert caught.value.code == "pool_busy"
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s >= 1
    assert len(pool.queue) == 0


async def test_a_model_with_no_worker_connected_degrades_after_the_grace_period() -> None:
    pool = doctrine(queue_wait_s=0.1)
    with anyio.fail_after(10):
        events = [e async for e in run_job(pool, a_job(), needs_tools=False)]
    assert len(events) == 1 and isinstance(events[0], Degraded)
    assert "none came back" in events[0].reason


async def test_a_worker_that_comes_back_within_the_grace_period_gets_the_job() -> None:
    pool = doctrine(queue_wait_s=5)
    seen: list[object] = []
    async with anyio.create_task_group() as tasks:

        async def come_back() -> None:
            await anyio.sleep(0.2)
            link, jobs = holding_worker(pool, "returning", joined=False)
            await pool.add(link)
            await jobs.wait_for(1)
            await finish(pool, link, jobs[0])

        tasks.start_soon(come_back)
        with anyio.fail_after(10):
            async for event in run_job(pool, a_job(), needs_tools=False):
                seen.append(event)
    assert [e.route for e in seen if isinstance(e, Started)] == ["queued"]


async def test_a_client_that_leaves_the_queue_takes_its_place_with_it() -> None:
    pool = doctrine(queue_wait_s=0.05, max_queue_wait_s=30)
    link, jobs = holding_worker(pool)
    assert await pool.place(a_job(), needs_tools=False, user="a") is not None
    events = run_job(pool, a_job(), needs_tools=False, user="b", notify_waiting=True)
    with anyio.fail_after(10):
        assert isinstance(await anext(events), Waiting)
    await events.aclose()
    assert len(pool.queue) == 0
    await finish(pool, link, jobs[0])
    assert link.jobs == {} and len(jobs) == 1, "nobody took the freed slot"


async def test_a_context_error_is_final_not_retried_elsewhere() -> None:
    pool = doctrine()
    tried: list[str] = []
    for name in ("a", "b"):
        link, _ = holding_worker(pool, name)

        async def refuse(frame: Frame, link: WorkerLink = link) -> None:
            if isinstance(frame, Job):
                tried.append(link.id)
                await pool.deliver(
                    link,
                    Error(job_id=frame.job_id, code="context_length_exceeded", message="too long"),
                )

        link.send = refuse
    with pytest.raises(JobFailed) as caught:
        async for _ in run_job(pool, a_job(), needs_tools=False):
            pass
    assert caught.value.code == "context_length_exceeded"
    assert len(tried) == 1


async def test_a_failover_waits_for_a_busy_surviving_worker_instead_of_failing() -> None:
    pool = doctrine(queue_wait_s=0.05, max_queue_wait_s=30)
    busy, busy_jobs = holding_worker(pool, "busy")
    dying, dying_jobs = holding_worker(pool, "dying")
    assert await pool.place(a_job(), needs_tools=False, user="a", only="busy")
    seen: list[object] = []
    async with anyio.create_task_group() as tasks:

        async def die_then_free() -> None:
            await dying_jobs.wait_for(1)
            await pool.deliver(
                dying, Chunk(job_id=dying_jobs[0].job_id, delta=Delta(content="Hel"))
            )
            await pool.remove(dying.id, "killed")
            await anyio.sleep(0.3)  # six times queue_wait_s: the survivor is busy that long
            await finish(pool, busy, busy_jobs[0])
            await busy_jobs.wait_for(2)
            assert busy_jobs[1].assistant_prefix == "Hel"
            await finish(pool, busy, busy_jobs[1], "lo")

        tasks.start_soon(die_then_free)
        with anyio.fail_after(10):
            async for event in run_job(pool, a_job(), needs_tools=False, user="b"):
                seen.append(event)
    text = "".join(e.delta.content or "" for e in seen if isinstance(e, Chunk))
    assert text == "Hello"
    assert isinstance(seen[-1], Done)


async def test_a_client_that_leaves_right_after_placement_frees_the_slot() -> None:
    pool = doctrine()
    link, jobs = holding_worker(pool)
    take_job = link.send
    cancels: list[Cancel] = []

    async def send(frame: Frame) -> None:
        if isinstance(frame, Cancel):
            cancels.append(frame)
        await take_job(frame)

    link.send = send
    events = run_job(pool, a_job(), needs_tools=False)
    assert isinstance(await anext(events), Started)
    await events.aclose()
    assert [c.job_id for c in cancels] == [jobs[0].job_id], "the worker is told to stop"
    await pool.deliver(link, Error(job_id=jobs[0].job_id, code="cancelled", message="stopped"))
    assert link.jobs == {}
