"""Running one job on the pool: pick a worker, relay its frames, retry before the first output.

A job that fails before it produced anything (the worker vanished, refused it, or answered with
another model) is tried on another worker, up to ``job_attempts`` workers. Once output has been
relayed the failure is reported to the caller (mid-stream failover belongs to the router).
Closing the stream early (the client went away) cancels the job on its worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio

from inference.protocol import Chunk, Done, Error, Job
from inference.registry import JobHandle, WorkerRegistry


class JobFailed(Exception):
    """The job could not be completed; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str, worker_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.worker_id = worker_id


class NoWorkerAvailable(JobFailed):
    """No worker serving the model had a free slot within the wait."""


@dataclass(frozen=True)
class Started:
    """First event of a run: which worker took the job."""

    worker_id: str
    worker_name: str


JobEvent = Started | Chunk | Done


async def run_job(
    registry: WorkerRegistry, job: Job, *, needs_tools: bool
) -> AsyncIterator[JobEvent]:
    """Yield ``Started``, then the worker's chunks and its ``done``; raise :class:`JobFailed`."""
    settings = registry.settings
    tried: set[str] = set()
    last_error: Error | None = None
    for _ in range(settings.job_attempts):
        handle = await registry.start(job, needs_tools, tried, settings.slot_wait_s)
        if handle is None:
            break
        tried.add(handle.worker.id)
        produced = False
        try:
            yield Started(handle.worker.id, handle.worker.name)
            async for frame in handle.stream(
                settings.first_token_timeout_s, settings.job_deadline_s
            ):
                if isinstance(frame, Error):
                    last_error = frame
                    break
                produced = True
                yield frame
                if isinstance(frame, Done):
                    return
        finally:
            await _release(registry, handle)
        if produced:
            assert last_error is not None
            raise JobFailed(last_error.code, last_error.message, handle.worker.id)
    if last_error is not None:
        raise JobFailed(last_error.code, last_error.message)
    raise NoWorkerAvailable(
        "pool_busy",
        f"No worker serving {job.model!r} had a free slot within {settings.slot_wait_s:g} s.",
    )


async def _release(registry: WorkerRegistry, handle: JobHandle) -> None:
    # Shielded: this runs when the client disconnects and the request task is being cancelled.
    with anyio.CancelScope(shield=True):
        if handle.finished:
            await registry.finish(handle)
        else:
            await registry.cancel(handle)
