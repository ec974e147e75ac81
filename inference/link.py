"""One connected worker (:class:`WorkerLink`) and one job on it (:class:`JobHandle`).

A job's frames (``chunk``… then ``done`` or ``error``) arrive on the handle's queue, which the
request handler reads. A handle also counts the output it received against the job's allowance
(its token budget with slack): a worker that streams past it is cut off
(:class:`OutputLimitExceeded`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from uuid import UUID

from inference.protocol import Chunk, Done, Error, Frame, Hardware, InferenceError, Job, ModelInfo

JobFrame = Chunk | Done | Error
WORKER_LOST = "worker_lost"
OUTPUT_LIMIT = "output_limit_exceeded"
# Output allowance of a job: its token budget with 10 % + 16 tokens of slack, each token at most
# this many characters (llama.cpp vocabularies top out far below; 63 MB answers do not).
OUTPUT_SLACK = 1.1
OUTPUT_SLACK_TOKENS = 16
MAX_CHARS_PER_TOKEN = 32


def output_allowance(budget_tokens: int) -> tuple[int, int]:
    """The most chunks and characters a job of this token budget may stream."""
    chunks = math.ceil(budget_tokens * OUTPUT_SLACK) + OUTPUT_SLACK_TOKENS
    return chunks, chunks * MAX_CHARS_PER_TOKEN


class OutputLimitExceeded(InferenceError):
    """A worker sent more output for a job than its token budget allows: it is cut off."""

    def __init__(self, message: str) -> None:
        super().__init__(OUTPUT_LIMIT, message)


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
    # The token the worker authenticated with: revoking it (or disabling its owner) ends the link.
    token_id: UUID | None = None
    # The worker record it speaks for (inference/identity.py; ``id`` is its text) and that
    # record's trust level, kept in step with the database by the hub.
    record_id: UUID | None = None
    trust: int = 0
    # Jobs told to cancel and maybe not acknowledged yet (ids; ended ones are dropped when met),
    # so that reaping looks at those only, not at every running job on every placement.
    cancelling: set[str] = field(default_factory=set)

    @property
    def free_slots(self) -> int:
        """Slots not taken by a running job (a cancelled job holds its slot until acknowledged)."""
        return self.slots - len(self.jobs)

    def reap_cancelled(self, older_than: float) -> list[JobHandle]:
        """Give up on cancelled jobs whose worker never acknowledged the cancel; return them."""
        reaped: list[JobHandle] = []
        if not self.cancelling:
            return reaped
        for job_id in list(self.cancelling):
            handle = self.jobs.get(job_id)
            if handle is None or handle.cancelled_at is None:  # acknowledged, or another job
                self.cancelling.discard(job_id)
            elif handle.cancelled_at < older_than:
                del self.jobs[job_id]
                self.cancelling.discard(job_id)
                handle.finished = True
                reaped.append(handle)
        return reaped

    def can_serve(
        self, model: str, needs_tools: bool, needs_context: int, min_trust: int = 0
    ) -> bool:
        """Whether this worker could ever take the job (busy or not)."""
        info = self.models.get(model)
        return (
            self.excluded is None
            and self.trust >= min_trust
            and info is not None
            and info.context_size >= needs_context
            and (not needs_tools or (info.supports_tools and self.tools_ok is not False))
        )


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
    # Output so far (one chunk is at least one token) and its allowance, set at placement.
    chunks: int = 0
    chars: int = 0
    max_chunks: int = 0
    max_chars: int = 0
    # Whether the router's charge was corrected to the real output (once, on any ending).
    accounted: bool = False

    def count(self, chunk: Chunk) -> None:
        """Add a chunk to the output; raise :class:`OutputLimitExceeded` past the allowance."""
        self.chunks += chunk.pieces
        delta = chunk.delta
        self.chars += len(delta.content or "")
        for call in delta.tool_calls or []:
            self.chars += len(call.function.arguments or "") + len(call.function.name or "")
        if self.chunks > self.max_chunks or self.chars > self.max_chars:
            raise OutputLimitExceeded(
                f"job {self.job.job_id} exceeded its output allowance "
                f"({self.max_chunks} chunks, {self.max_chars} characters)"
            )

    async def stream(
        self, first_timeout_s: float, idle_timeout_s: float
    ) -> AsyncIterator[JobFrame]:
        """Yield frames until ``done`` or ``error``; a silent worker ends the job as stalled."""
        timeout = first_timeout_s
        frames = self.frames
        while True:
            try:
                if frames.empty():
                    async with asyncio.timeout(timeout):
                        frame = await frames.get()
                else:
                    frame = frames.get_nowait()  # ready: no timer armed per token
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
