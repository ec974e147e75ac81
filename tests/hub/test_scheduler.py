"""The scheduler: timers in the running loop, runs owned by its task group, every run recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import asyncpg
import pytest

from hub.config import JobsSettings
from hub.scheduler import JobResult, JobSpec, Scheduler, UnknownJobError, recent_runs

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        yield db
    finally:
        await db.close()


def job(name: str, run: Callable[[], Awaitable[JobResult]], interval_s: float = 0) -> JobSpec:
    return JobSpec(name, f"the {name} job", interval_s, needs_hub=False, run=run)


async def ok() -> JobResult:
    return JobResult("ok", "did it", {"count": 3})


async def test_a_run_now_is_recorded_in_job_runs(pool: asyncpg.Pool) -> None:
    scheduler = Scheduler([job("tidy", ok)], pool, JobsSettings())
    async with anyio.create_task_group() as tasks:
        await tasks.start(scheduler.run)
        run = await scheduler.run_now("tidy")
        tasks.cancel_scope.cancel()
    assert (run.job, run.trigger, run.outcome, run.summary) == ("tidy", "api", "ok", "did it")
    async with pool.acquire() as conn:
        [stored] = await recent_runs(conn, "tidy")
    assert stored == run
    assert stored.detail == {"count": 3}


async def test_a_failing_job_is_recorded_as_an_error_and_the_scheduler_goes_on(
    pool: asyncpg.Pool,
) -> None:
    async def broken() -> JobResult:
        raise RuntimeError("disk on fire")

    scheduler = Scheduler([job("broken", broken), job("tidy", ok)], pool, JobsSettings())
    async with anyio.create_task_group() as tasks:
        await tasks.start(scheduler.run)
        failed = await scheduler.run_now("broken")
        after = await scheduler.run_now("tidy")
        tasks.cancel_scope.cancel()
    assert (failed.outcome, failed.summary) == ("error", "RuntimeError: disk on fire")
    assert after.outcome == "ok"


async def test_a_run_past_the_timeout_is_cancelled_and_recorded(pool: asyncpg.Pool) -> None:
    async def stuck() -> JobResult:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    settings = JobsSettings(run_timeout_s=0.1)
    run = await Scheduler([job("stuck", stuck)], pool, settings).run_now("stuck")
    assert (run.outcome, run.summary) == ("error", "timed out after 0.1 s")


async def test_a_job_already_running_is_skipped_not_doubled(pool: asyncpg.Pool) -> None:
    started, release = anyio.Event(), anyio.Event()

    async def slow() -> JobResult:
        started.set()
        await release.wait()
        return JobResult("ok", "slow done")

    scheduler = Scheduler([job("slow", slow)], pool, JobsSettings())
    runs = []
    finished = anyio.Event()
    async with anyio.create_task_group() as tasks:
        await tasks.start(scheduler.run)

        async def first() -> None:
            runs.append(await scheduler.run_now("slow"))
            finished.set()

        tasks.start_soon(first)
        with anyio.fail_after(5):
            await started.wait()
        assert scheduler.running("slow")
        second = await scheduler.run_now("slow")
        release.set()
        with anyio.fail_after(5):
            await finished.wait()
        tasks.cancel_scope.cancel()
    assert (second.outcome, second.summary) == ("skipped", "the previous run is still going")
    assert runs[0].outcome == "ok"


async def test_the_timer_runs_a_job_on_its_interval(pool: asyncpg.Pool) -> None:
    calls: list[int] = []
    second_call = anyio.Event()

    async def tick() -> JobResult:
        calls.append(len(calls))
        if len(calls) == 2:
            second_call.set()
        return JobResult("ok", "tick")

    scheduler = Scheduler([job("tick", tick, interval_s=0.2)], pool, JobsSettings())
    async with anyio.create_task_group() as tasks:
        await tasks.start(scheduler.run)
        assert scheduler.next_run_at("tick") is not None
        # A run holds the job's lock until it is recorded, so a second call means a recorded first.
        with anyio.fail_after(10):
            await second_call.wait()
        tasks.cancel_scope.cancel()
    async with pool.acquire() as conn:
        runs = await recent_runs(conn, "tick")
    assert runs and all(r.trigger == "schedule" for r in runs)


async def test_with_jobs_disabled_nothing_is_scheduled_but_runs_on_demand_work(
    pool: asyncpg.Pool,
) -> None:
    scheduler = Scheduler([job("tidy", ok, interval_s=0.1)], pool, JobsSettings(enabled=False))
    async with anyio.create_task_group() as tasks:
        await tasks.start(scheduler.run)
        assert scheduler.next_run_at("tidy") is None
        assert (await scheduler.run_now("tidy", "cli")).trigger == "cli"
        tasks.cancel_scope.cancel()


async def test_an_unknown_job_is_refused(pool: asyncpg.Pool) -> None:
    with pytest.raises(UnknownJobError):
        await Scheduler([], pool, JobsSettings()).run_now("nope")
