"""The hub's live view of connected workers and the jobs running on them.

A :class:`WorkerLink` is one connected worker; a :class:`JobHandle` is one job on it, whose frames
(``chunk``… then ``done`` or ``error``) arrive on a queue the request handler reads. When a link
goes away every job on it ends with an ``error`` frame coded ``worker_lost``, so no request ever
waits on a dead worker. Placement asks the :class:`~inference.router.DeficitRouter` which eligible
worker gets a job; jobs that find none wait in the :class:`~inference.router.FairQueue`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from uuid import UUID

import structlog

from inference.pool_config import PoolConfig
from inference.protocol import Cancel, Chunk, Done, Error, Frame, Hardware, Job, ModelInfo
from inference.router import DeficitRouter, FairQueue, Waiter
from inference.settings import InferenceSettings

log = structlog.get_logger()

JobFrame = Chunk | Done | Error
WORKER_LOST = "worker_lost"
MODEL_MISMATCH = "model_mismatch"
UNKNOWN_MODEL = "unknown_model"


@dataclass(eq=False)
class WorkerLink:
    """One connected worker, as the hub sees it."""

    id: str
    name: str
    owner_id: UUID | None
    models: dict[str, ModelInfo]
    hardware: Hardware
    slots: int
    send: Callable[[Frame], Awaitable[None]]
    connected_at: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    jobs: dict[str, JobHandle] = field(default_factory=dict)
    excluded: str | None = None
    tokens_served: int = 0
    # The checker's verdict on tool calls: None until checked (or not applicable), False keeps
    # requests with tools away from this worker even though it announces tool support.
    tools_ok: bool | None = None
    jobs_done: int = 0
    jobs_failed: int = 0

    @property
    def free_slots(self) -> int:
        """Slots not taken by a running job (a cancelled job holds its slot until acknowledged)."""
        return self.slots - len(self.jobs)

    def reap_cancelled(self, older_than: float) -> None:
        """Give up on cancelled jobs whose worker never acknowledged the cancel."""
        for job_id, handle in list(self.jobs.items()):
            if handle.cancelled_at is not None and handle.cancelled_at < older_than:
                del self.jobs[job_id]
                handle.finished = True


@dataclass(eq=False)
class JobHandle:
    """One job on one worker; iterate :meth:`stream` for the worker's frames."""

    job: Job
    worker: WorkerLink
    user: str
    expected_tokens: int
    frames: asyncio.Queue[JobFrame] = field(default_factory=asyncio.Queue)
    finished: bool = False
    cancelled_at: float | None = None
    started_at: float = field(default_factory=time.monotonic)
    first_chunk_at: float | None = None
    queued: bool = False

    async def stream(
        self, first_timeout_s: float, idle_timeout_s: float
    ) -> AsyncIterator[JobFrame]:
        """Yield frames until ``done`` or ``error``; a silent worker ends the job as stalled."""
        timeout = first_timeout_s
        while True:
            try:
                async with asyncio.timeout(timeout):
                    frame = await self.frames.get()
            except TimeoutError:
                yield Error(
                    job_id=self.job.job_id,
                    code="deadline_exceeded",
                    message=f"The worker sent nothing for {timeout:g} s.",
                )
                return
            timeout = idle_timeout_s
            yield frame
            if isinstance(frame, Done | Error):
                return


@dataclass(frozen=True)
class ModelSummary:
    """A model served by the pool right now."""

    id: str
    context_size: int
    supports_tools: bool
    workers: int
    free_slots: int


ExclusionSink = Callable[[WorkerLink, str, str], None]


class WorkerRegistry:
    """Connected workers by id, placement through the router and queue, frame dispatch."""

    def __init__(
        self,
        settings: InferenceSettings,
        config: PoolConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_exclusion: ExclusionSink | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or PoolConfig()
        self.router = DeficitRouter(self.config, clock)
        self.queue = FairQueue()
        self.workers: dict[str, WorkerLink] = {}
        self._clock = clock
        self._on_exclusion = on_exclusion
        self._pending: dict[Waiter, tuple[Job, int, asyncio.Future[JobHandle], str | None]] = {}
        self._ids = itertools.count(1)

    def new_worker_id(self) -> str:
        """A short id, unique within this hub process."""
        return f"w{next(self._ids)}-{int(time.time()) % 100000:05d}"

    def set_config(self, config: PoolConfig) -> None:
        """Apply a new routing policy to the next placements."""
        self.config = config
        self.router.config = config

    def exclude(self, link: WorkerLink, reason: str, detail: str) -> None:
        """Stop giving jobs to a worker (it stays connected) and report why."""
        if link.excluded is not None:
            return
        link.excluded = reason
        log.warning("worker_excluded", worker=link.id, name=link.name, reason=reason, detail=detail)
        if self._on_exclusion is not None:
            self._on_exclusion(link, reason, detail)

    def readmit(self, link: WorkerLink) -> None:
        """Give an excluded worker jobs again."""
        if link.excluded is None:
            return
        log.warning("worker_readmitted", worker=link.id, name=link.name, reason=link.excluded)
        link.excluded = None
        self._release_waiters()

    async def add(self, link: WorkerLink) -> None:
        """Register a worker that completed its hello; exclude it if it serves unknown models."""
        self.workers[link.id] = link
        log.info(
            "worker_joined",
            worker=link.id,
            name=link.name,
            models=list(link.models),
            hardware=link.hardware,
            slots=link.slots,
        )
        outside = [m for m in link.models if not self.config.allows(m)]
        if outside:
            self.exclude(link, UNKNOWN_MODEL, f"announced models outside the catalog: {outside}")
        self._release_waiters()

    async def remove(self, worker_id: str, reason: str) -> None:
        """Forget a worker and end each of its jobs with ``worker_lost``."""
        link = self.workers.pop(worker_id, None)
        if link is None:
            return
        for handle in list(link.jobs.values()):
            handle.frames.put_nowait(
                Error(
                    job_id=handle.job.job_id,
                    code=WORKER_LOST,
                    message=f"The worker went away ({reason}).",
                )
            )
            handle.finished = True
        link.jobs.clear()
        self.router.forget(worker_id)
        log.info("worker_left", worker=worker_id, reason=reason)

    def models(self) -> list[ModelSummary]:
        """Models served by connected, non-excluded workers, with worker counts."""
        by_model: dict[str, list[tuple[WorkerLink, ModelInfo]]] = {}
        for link in self.workers.values():
            if link.excluded is None:
                for info in link.models.values():
                    by_model.setdefault(info.id, []).append((link, info))
        return [
            ModelSummary(
                id=model,
                context_size=max(info.context_size for _, info in entries),
                supports_tools=any(info.supports_tools for _, info in entries),
                workers=len(entries),
                free_slots=sum(max(link.free_slots, 0) for link, _ in entries),
            )
            for model, entries in sorted(by_model.items())
        ]

    def serves(self, model: str) -> bool:
        """Whether any connected, non-excluded worker serves the model."""
        return any(model in link.models and link.excluded is None for link in self.workers.values())

    def eligible(
        self, model: str, needs_tools: bool, avoid: frozenset[str], only: str | None = None
    ) -> list[WorkerLink]:
        """Workers that could take this job now (only the worker ``only`` when given)."""
        grace_start = self._clock() - self.settings.cancel_grace_s
        for link in self.workers.values():
            link.reap_cancelled(grace_start)
        return [
            link
            for link in self.workers.values()
            if link.excluded is None
            and link.id not in avoid
            and (only is None or link.id == only)
            and link.free_slots > 0
            and model in link.models
            and (
                not needs_tools
                or (link.models[model].supports_tools and link.tools_ok is not False)
            )
        ]

    def running_by_user(self) -> Counter[str]:
        """Running jobs per user (for queue fairness)."""
        return Counter(h.user for link in self.workers.values() for h in link.jobs.values())

    def _assign(self, link: WorkerLink, job: Job, user: str, expected: int) -> JobHandle:
        handle = JobHandle(job=job, worker=link, user=user, expected_tokens=expected)
        link.jobs[job.job_id] = handle
        self.router.charge(link.id, expected)
        return handle

    def _try_place(
        self,
        job: Job,
        needs_tools: bool,
        avoid: frozenset[str],
        user: str,
        expected: int,
        only: str | None = None,
    ) -> JobHandle | None:
        eligible = self.eligible(job.model, needs_tools, avoid, only)
        if not eligible:
            return None
        chosen = self.router.pick(eligible, self.workers.values())
        return self._assign(chosen, job, user, expected)

    def _release_waiters(self) -> None:
        """Hand free slots to queued jobs, in fair order."""
        if not self._pending:
            return
        for waiter in self.queue.ordered(self.running_by_user()):
            if not any(w.free_slots > 0 and w.excluded is None for w in self.workers.values()):
                return  # every slot is taken: the rest of the queue cannot move now
            job, expected, future, only = self._pending[waiter]
            if future.done():
                continue
            handle = self._try_place(
                job, waiter.needs_tools, waiter.avoid, waiter.user, expected, only
            )
            if handle is not None:
                future.set_result(handle)

    async def place(
        self,
        job: Job,
        *,
        needs_tools: bool,
        user: str,
        wait_s: float,
        avoid: frozenset[str] = frozenset(),
        priority: int = 0,
        only: str | None = None,
    ) -> JobHandle | None:
        """Send the job to the router's choice, queueing up to ``wait_s`` when none is free.

        ``only`` pins the job to one worker id (the checker tests workers one by one).
        """
        expected = job.params.max_tokens or self.config.default_expected_tokens
        handle = self._try_place(job, needs_tools, avoid, user, expected, only)
        if handle is None and wait_s > 0:
            handle = await self._wait(
                job, needs_tools, user, wait_s, avoid, priority, expected, only
            )
            if handle is not None:
                handle.queued = True
        if handle is None:
            return None
        try:
            await handle.worker.send(job)
        except (OSError, RuntimeError) as exc:
            await self.finish(handle)
            handle.frames.put_nowait(Error(job_id=job.job_id, code=WORKER_LOST, message=str(exc)))
        return handle

    async def _wait(
        self,
        job: Job,
        needs_tools: bool,
        user: str,
        wait_s: float,
        avoid: frozenset[str],
        priority: int,
        expected: int,
        only: str | None,
    ) -> JobHandle | None:
        future: asyncio.Future[JobHandle] = asyncio.get_running_loop().create_future()
        waiter = self.queue.push(user, job.model, needs_tools, self._clock(), priority, avoid)
        self._pending[waiter] = (job, expected, future, only)
        deadline = self._clock() + wait_s
        try:
            while not future.done():
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                # Wake at least once per cancel grace period: an unacknowledged cancel frees
                # its slot by time, not by an event.
                await asyncio.wait({future}, timeout=min(remaining, self.settings.cancel_grace_s))
                if not future.done():
                    self._release_waiters()
        except BaseException:
            # Cancelled (the client left) after a slot was already handed to us: give it back.
            if future.done() and not future.cancelled():
                self._free(future.result())
            raise
        finally:
            self.queue.remove(waiter)
            del self._pending[waiter]
            if not future.done():
                future.cancel()
        return future.result() if future.done() and not future.cancelled() else None

    async def finish(self, handle: JobHandle) -> None:
        """Release the job's slot (idempotent) and hand it to the queue."""
        self._free(handle)

    def _free(self, handle: JobHandle) -> None:
        if handle.finished and handle.job.job_id not in handle.worker.jobs:
            return
        handle.finished = True
        handle.worker.jobs.pop(handle.job.job_id, None)
        self._release_waiters()

    async def cancel(self, handle: JobHandle) -> None:
        """Tell the worker to stop the job; its slot frees when the worker acknowledges.

        A worker that never acknowledges gets its slot back after ``cancel_grace_s``.
        """
        if handle.finished or handle.cancelled_at is not None:
            return
        if handle.worker.id not in self.workers:
            await self.finish(handle)
            return
        handle.cancelled_at = self._clock()
        try:
            await handle.worker.send(Cancel(job_id=handle.job.job_id))
        except (OSError, RuntimeError) as exc:
            log.info("cancel_not_sent", worker=handle.worker.id, error=str(exc))
            await self.finish(handle)

    async def deliver(self, link: WorkerLink, frame: JobFrame) -> bool:
        """Route a worker's job frame to its job; False when the job is not running there."""
        assert frame.job_id is not None
        handle = link.jobs.get(frame.job_id)
        if handle is None:
            return False
        if handle.cancelled_at is not None:
            if isinstance(frame, Done | Error):
                await self.finish(handle)
            return True
        if isinstance(frame, Chunk) and handle.first_chunk_at is None:
            handle.first_chunk_at = self._clock()
        if isinstance(frame, Done):
            if frame.model != handle.job.model:
                self.exclude(
                    link, UNKNOWN_MODEL, f"answered with {frame.model!r} for {handle.job.model!r}"
                )
                frame = Error(
                    job_id=frame.job_id,
                    code=MODEL_MISMATCH,
                    message=f"The worker answered with model {frame.model!r}, "
                    f"not {handle.job.model!r}.",
                )
            else:
                self._account(handle, frame)
        handle.frames.put_nowait(frame)
        if isinstance(frame, Done):
            link.jobs_done += 1
        elif isinstance(frame, Error):
            link.jobs_failed += 1
        if isinstance(frame, Done | Error):
            await self.finish(handle)
        return True

    def _account(self, handle: JobHandle, done: Done) -> None:
        tokens = done.usage.completion_tokens
        handle.worker.tokens_served += tokens
        self.router.charge(handle.worker.id, tokens - handle.expected_tokens)
        if handle.first_chunk_at is not None and tokens > 1:
            elapsed = self._clock() - handle.first_chunk_at
            if elapsed > 0:
                self.router.observe_speed(handle.worker.id, (tokens - 1) / elapsed)
