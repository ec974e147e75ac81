"""The hub's live view of connected workers and the jobs running on them.

A :class:`WorkerLink` is one connected worker; a :class:`JobHandle` is one job on it, whose frames
(``chunk``… then ``done`` or ``error``) arrive on a queue the request handler reads. When a link
goes away every job on it ends with an ``error`` frame coded ``worker_lost``, so no request ever
waits on a dead worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from uuid import UUID

import structlog

from inference.protocol import Cancel, Chunk, Done, Error, Frame, Hardware, Job, ModelInfo
from inference.settings import InferenceSettings

log = structlog.get_logger()

JobFrame = Chunk | Done | Error
WORKER_LOST = "worker_lost"
MODEL_MISMATCH = "model_mismatch"


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
    """One job on one worker; iterate it for the worker's frames."""

    job: Job
    worker: WorkerLink
    frames: asyncio.Queue[JobFrame] = field(default_factory=asyncio.Queue)
    finished: bool = False
    cancelled_at: float | None = None

    async def stream(
        self, first_timeout_s: float, idle_timeout_s: float
    ) -> AsyncIterator[JobFrame]:
        """Yield frames until ``done`` or ``error``; a silent worker ends the job as timed out."""
        timeout = first_timeout_s
        while True:
            try:
                async with asyncio.timeout(timeout):
                    frame = await self.frames.get()
            except TimeoutError:
                yield Error(
                    job_id=self.job.job_id,
                    code="deadline_exceeded",
                    message="The worker stopped answering.",
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


class WorkerRegistry:
    """Connected workers by id, free-slot waiting, and frame dispatch to jobs."""

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.workers: dict[str, WorkerLink] = {}
        self._slot_freed = asyncio.Condition()
        self._ids = itertools.count(1)

    def new_worker_id(self) -> str:
        """A short id, unique within this hub process."""
        return f"w{next(self._ids)}-{int(time.time()) % 100000:05d}"

    async def add(self, link: WorkerLink) -> None:
        """Register a worker that completed its hello."""
        self.workers[link.id] = link
        log.info(
            "worker_joined",
            worker=link.id,
            name=link.name,
            models=list(link.models),
            hardware=link.hardware,
            slots=link.slots,
        )
        await self._notify()

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
        link.jobs.clear()
        log.info("worker_left", worker=worker_id, reason=reason)
        await self._notify()

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
        return any(m.id == model for m in self.models())

    def eligible(self, model: str, needs_tools: bool, avoid: set[str]) -> list[WorkerLink]:
        """Workers that can take this job now, most free slots first."""
        grace_start = time.monotonic() - self.settings.cancel_grace_s
        for link in self.workers.values():
            link.reap_cancelled(grace_start)
        found = [
            link
            for link in self.workers.values()
            if link.excluded is None
            and link.id not in avoid
            and link.free_slots > 0
            and model in link.models
            and (link.models[model].supports_tools or not needs_tools)
        ]
        return sorted(found, key=lambda link: (-link.free_slots, link.connected_at))

    async def start(
        self, job: Job, needs_tools: bool, avoid: set[str], wait_s: float
    ) -> JobHandle | None:
        """Send the job to a worker with a free slot, waiting up to ``wait_s`` for one."""
        deadline = time.monotonic() + wait_s
        async with self._slot_freed:
            while True:
                candidates = self.eligible(job.model, needs_tools, avoid)
                if candidates:
                    link = candidates[0]
                    handle = JobHandle(job=job, worker=link)
                    link.jobs[job.job_id] = handle
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.serves(job.model):
                    return None
                # Wake at least once per cancel grace period: an unacknowledged cancel frees its
                # slot by time, not by a notification.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, self.settings.cancel_grace_s)):
                        await self._slot_freed.wait()
        try:
            await link.send(job)
        except (OSError, RuntimeError) as exc:
            await self.finish(handle)
            handle.frames.put_nowait(Error(job_id=job.job_id, code=WORKER_LOST, message=str(exc)))
        return handle

    async def finish(self, handle: JobHandle) -> None:
        """Release the job's slot (idempotent)."""
        if handle.finished:
            return
        handle.finished = True
        handle.worker.jobs.pop(handle.job.job_id, None)
        await self._notify()

    async def cancel(self, handle: JobHandle) -> None:
        """Tell the worker to stop the job; its slot frees when the worker acknowledges.

        A worker that never acknowledges gets its slot back after ``cancel_grace_s``.
        """
        if handle.finished or handle.cancelled_at is not None:
            return
        if handle.worker.id not in self.workers:
            await self.finish(handle)
            return
        handle.cancelled_at = time.monotonic()
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
        if isinstance(frame, Done) and frame.model != handle.job.model:
            link.excluded = MODEL_MISMATCH
            log.warning(
                "worker_excluded",
                worker=link.id,
                reason="unknown_model",
                asked=handle.job.model,
                answered=frame.model,
            )
            frame = Error(
                job_id=frame.job_id,
                code=MODEL_MISMATCH,
                message=f"The worker answered with model {frame.model!r}, "
                f"not {handle.job.model!r}.",
            )
        handle.frames.put_nowait(frame)
        if isinstance(frame, Done | Error):
            await self.finish(handle)
        return True

    async def _notify(self) -> None:
        async with self._slot_freed:
            self._slot_freed.notify_all()
