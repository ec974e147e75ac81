"""The hub's scheduler: APScheduler's timers, runs in the lifespan's task group, ``job_runs``.

APScheduler (``AsyncIOScheduler``, started inside the running loop) only keeps time: when a job
is due, its callback hands the run to :class:`Scheduler`'s own task group, which the lifespan owns,
so no run outlives the hub and none is a loose task. Every run, whether started by the timer, the
admin API or the CLI, goes through :func:`execute`: bounded by ``run_timeout_s``, any failure
recorded instead of raised, and one row in ``job_runs``. A job already running is not started a
second time; that attempt is recorded as ``skipped``. Hub replicas sharing a database each
keep timers, and a timed run takes a lease first (:meth:`Scheduler._lease`): each job runs once
per period across the replicas, wherever its lock is free.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio
import asyncpg
import structlog
from anyio.abc import TaskGroup, TaskStatus
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from hub.config import JobsSettings
from hub.errors import HubError

log = structlog.get_logger()

Outcome = Literal["ok", "error", "skipped"]
Trigger = Literal["schedule", "api", "cli"]
Acquire = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


@dataclass(frozen=True)
class JobResult:
    """What one run of a job did."""

    outcome: Outcome
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobSpec:
    """A job the hub can run: on a timer every ``interval_s`` (0: only on demand), or now."""

    name: str
    description: str
    interval_s: float
    needs_hub: bool
    run: Callable[[], Awaitable[JobResult]]


@dataclass(frozen=True)
class JobRun:
    """One recorded run (a row of ``job_runs``)."""

    id: int
    job: str
    trigger: str
    started_at: datetime
    ended_at: datetime
    outcome: str
    summary: str
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The run as the admin API shows it."""
        return {
            "id": self.id,
            "job": self.job,
            "trigger": self.trigger,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat(),
            "duration_s": round((self.ended_at - self.started_at).total_seconds(), 3),
            "outcome": self.outcome,
            "summary": self.summary,
            "detail": self.detail,
        }


def _run(row: asyncpg.Record) -> JobRun:
    return JobRun(**{**dict(row), "detail": json.loads(row["detail"])})


async def record_run(
    conn: asyncpg.Connection,
    job: str,
    trigger: Trigger,
    started_at: datetime,
    ended_at: datetime,
    result: JobResult,
) -> JobRun:
    """Add a row to ``job_runs``."""
    row = await conn.fetchrow(
        "INSERT INTO job_runs (job, trigger, started_at, ended_at, outcome, summary, detail) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) "
        "RETURNING id, job, trigger, started_at, ended_at, outcome, summary, detail",
        job,
        trigger,
        started_at,
        ended_at,
        result.outcome,
        result.summary,
        json.dumps(result.detail, default=str),
    )
    return _run(row)


async def recent_runs(
    conn: asyncpg.Connection, job: str | None = None, limit: int = 20
) -> list[JobRun]:
    """The newest runs (of one job when given), newest first."""
    rows = await conn.fetch(
        "SELECT id, job, trigger, started_at, ended_at, outcome, summary, detail FROM job_runs "
        "WHERE ($1::text IS NULL OR job = $1) "
        "ORDER BY started_at DESC, id DESC LIMIT $2",
        job,
        limit,
    )
    return [_run(r) for r in rows]


async def last_runs(conn: asyncpg.Connection) -> dict[str, JobRun]:
    """The newest run of each job, by job name."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (job) id, job, trigger, started_at, ended_at, outcome, summary, "
        "detail FROM job_runs "
        "ORDER BY job, started_at DESC, id DESC"
    )
    return {r["job"]: _run(r) for r in rows}


async def execute(spec: JobSpec, trigger: Trigger, acquire: Acquire, timeout_s: float) -> JobRun:
    """Run a job once, bounded by ``timeout_s``, and record the run; never raises for the job."""
    started = datetime.now(UTC)
    try:
        with anyio.fail_after(timeout_s):
            result = await spec.run()
    except TimeoutError:
        result = JobResult("error", f"timed out after {timeout_s:g} s")
    except Exception as exc:  # the job's top-level handler: record the failure, keep the hub up
        log.exception("job_failed", job=spec.name)
        result = JobResult("error", f"{type(exc).__name__}: {exc}")
    ended = datetime.now(UTC)
    async with acquire() as conn:
        run = await record_run(conn, spec.name, trigger, started, ended, result)
    log.info("job_ran", job=spec.name, trigger=trigger, outcome=run.outcome, summary=run.summary)
    return run


_RECORDING_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
# First key of the scheduled jobs' advisory locks (the second is the job name's hash).
JOB_LEASE_CLASS = 0x1A31


class UnknownJobError(KeyError):
    """No job of this name exists."""


class Scheduler:
    """Runs jobs on their intervals and on demand, one run of each job at a time."""

    def __init__(self, jobs: Sequence[JobSpec], pool: asyncpg.Pool, settings: JobsSettings):
        self.jobs = {spec.name: spec for spec in jobs}
        self._pool = pool
        self._settings = settings
        self._locks = {name: anyio.Lock() for name in self.jobs}
        self._timers: AsyncIOScheduler | None = None
        self._tasks: TaskGroup | None = None

    def spec(self, name: str) -> JobSpec:
        """The job of this name, or :class:`UnknownJobError`."""
        try:
            return self.jobs[name]
        except KeyError:
            raise UnknownJobError(name) from None

    def running(self, name: str) -> bool:
        """Whether a run of the job is in progress."""
        return self._locks[name].locked()

    def next_run_at(self, name: str) -> datetime | None:
        """When the timer fires next (None when the job is not scheduled)."""
        timer = self._timers.get_job(name) if self._timers is not None else None
        return timer.next_run_time if timer is not None else None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the timers and own every run until cancelled (by the lifespan)."""
        timers = AsyncIOScheduler(timezone=UTC)
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            if self._settings.enabled:
                for spec in self.jobs.values():
                    if spec.interval_s > 0:
                        timers.add_job(
                            self._fire,
                            IntervalTrigger(seconds=spec.interval_s, timezone=UTC),
                            args=[spec.name],
                            id=spec.name,
                            coalesce=True,
                            max_instances=1,
                            misfire_grace_time=None,
                        )
            timers.start()
            self._timers = timers
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                timers.shutdown(wait=False)
                self._timers = self._tasks = None

    async def _fire(self, name: str) -> None:
        # APScheduler's callback: hand the run to our task group and return at once.
        if self._tasks is not None:
            self._tasks.start_soon(self._scheduled, name)

    async def _scheduled(self, name: str) -> None:
        try:
            async with self._lease(name) as ours:
                if ours:
                    await self._run_once(name, "schedule")
        except _RECORDING_ERRORS as exc:
            # The run could not be recorded (the database is away): say so, keep the timers.
            log.error("job_run_not_recorded", job=name, error=str(exc))

    @asynccontextmanager
    async def _lease(self, name: str) -> AsyncIterator[bool]:
        """Whether this hub runs this period's timed run of the job (held for the whole run).

        Several hub replicas share one database and each has its timers; a timed run goes ahead
        only where the job's advisory lock is free (nobody is running it) and no replica started
        a timed run within half an interval (somebody already ran it this period). Runs asked
        for through the API or the CLI always run, on the hub asked.
        """
        spec = self.jobs[name]
        async with self._pool.acquire() as conn:
            if not await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, hashtext($2))", JOB_LEASE_CLASS, name
            ):
                log.info("job_running_elsewhere", job=name)
                yield False
                return
            try:
                last = await conn.fetchval(
                    "SELECT max(started_at) FROM job_runs WHERE job = $1 AND trigger = 'schedule'",
                    name,
                )
                half = timedelta(seconds=spec.interval_s / 2)
                ran = last is not None and datetime.now(UTC) - last < half
                if ran:
                    log.info("job_ran_elsewhere", job=name, started_at=last.isoformat())
                yield not ran
            finally:
                await conn.execute(
                    "SELECT pg_advisory_unlock($1, hashtext($2))", JOB_LEASE_CLASS, name
                )

    async def run_now(self, name: str, trigger: Trigger = "api") -> JobRun:
        """Run a job now and return its recorded run.

        The run belongs to the scheduler's task group, so a caller that goes away (an HTTP
        client that disconnects) does not cancel it half-way.
        """
        self.spec(name)
        tasks = self._tasks
        if tasks is None:
            return await self._run_once(name, trigger)
        finished = anyio.Event()
        runs: list[JobRun] = []
        failures: list[Exception] = []

        async def run() -> None:
            try:
                runs.append(await self._run_once(name, trigger))
            except _RECORDING_ERRORS as exc:
                failures.append(exc)  # raised to the caller below, not into the task group
            finally:
                finished.set()

        tasks.start_soon(run)
        await finished.wait()
        if failures:
            raise failures[0]
        if not runs:
            raise HubError("The hub stopped before the job finished.", code="job_interrupted")
        return runs[0]

    async def _run_once(self, name: str, trigger: Trigger) -> JobRun:
        spec, lock = self.jobs[name], self._locks[name]
        if lock.locked():
            busy = _skipped(spec, "the previous run is still going")
            return await execute(busy, trigger, self._pool.acquire, self._settings.run_timeout_s)
        async with lock:
            return await execute(spec, trigger, self._pool.acquire, self._settings.run_timeout_s)


def _skipped(spec: JobSpec, reason: str) -> JobSpec:
    async def skip() -> JobResult:
        return JobResult("skipped", reason)

    return JobSpec(spec.name, spec.description, spec.interval_s, spec.needs_hub, skip)
