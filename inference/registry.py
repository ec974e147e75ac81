"""The hub's live view of connected workers and the jobs running on them.

Workers are links and their jobs handles (``inference/link.py``). When a link goes away every job
on it ends with an ``error`` frame coded ``worker_lost``, so no request ever waits on a dead
worker. Placement asks the :class:`~inference.router.DeficitRouter` which eligible worker gets a
job; jobs that find none wait in the :class:`~inference.router.FairQueue`.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from inference.link import WORKER_LOST, JobFrame, JobHandle, WorkerLink, output_allowance
from inference.placement import ModelSummary, RemotePlacement, together
from inference.pool_config import PoolConfig
from inference.protocol import Cancel, Chunk, Done, Error, ErrorCode, InferenceError, Job, ModelInfo
from inference.router import DeficitRouter, FairQueue, Waiter
from inference.settings import InferenceSettings

log = structlog.get_logger()

MODEL_MISMATCH = "model_mismatch"
UNKNOWN_MODEL = "unknown_model"
# A worker's speed before the hub has measured it, for wait predictions only (never for routing).
UNMEASURED_TOKENS_PER_S = 10.0


@dataclass
class _Seen:
    context_size: int
    supports_tools: bool
    last_seen: float


@dataclass(eq=False)
class Ticket:
    """A job waiting in the queue; ``future`` resolves to its handle when a slot is found."""

    job: Job
    user: str
    expected: int
    needs_context: int
    only: str | None
    min_trust: int
    waiter: Waiter
    future: asyncio.Future[JobHandle]
    taken: bool = False
    anywhere: bool = True  # another replica's slot may serve it (not a job handed here)


ExclusionSink = Callable[[WorkerLink, str, str], None]


class WorkerRegistry:
    """Connected workers by id, placement through the router and queue, frame dispatch.

    Placement is transactional: a job is attached to a worker only after its charge is booked,
    and any failure before the job frame is sent frees the slot again. Every ending of a job
    (done, error, cancel, reap, failover) corrects the router's charge to the output received.
    """

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
        self._pending: dict[Waiter, Ticket] = {}
        self._seen: dict[str, _Seen] = {}
        # Exclusions outlive a link: a worker record excluded here stays excluded when it
        # reconnects, until readmitted (reason, detail).
        self._excluded: dict[str, tuple[str, str]] = {}
        # Told of every worker that joins (the hub queues new ones for canaries).
        self.on_join: Callable[[WorkerLink], None] | None = None
        # Told when the pool config changes here (the hub tells its other replicas).
        self.on_config: Callable[[PoolConfig], None] | None = None
        # The other replicas' free workers, tried when none is free here (None: one process).
        self.remote: RemotePlacement | None = None

    def set_config(self, config: PoolConfig, *, announce: bool = True) -> None:
        """Apply a new routing policy to the next placements.

        ``announce``: tell ``on_config`` (the other hub replicas), unless the news came from one.
        """
        self.config = config
        self.router.config = config
        if announce and self.on_config is not None:
            self.on_config(config)

    def exclude(self, link: WorkerLink, reason: str, detail: str) -> None:
        """Stop giving jobs to a worker (it stays connected) and report why."""
        if link.excluded is not None:
            return
        link.excluded = reason
        self._excluded[link.id] = (reason, detail)
        for model in link.models:
            if not self.serves(model):
                self._seen.pop(model, None)  # an excluded worker's models are not "coming back"
        log.warning("worker_excluded", worker=link.id, name=link.name, reason=reason, detail=detail)
        if self._on_exclusion is not None:
            self._on_exclusion(link, reason, detail)

    def readmit(self, link: WorkerLink) -> None:
        """Give an excluded worker jobs again."""
        if link.excluded is None:
            return
        log.warning("worker_readmitted", worker=link.id, name=link.name, reason=link.excluded)
        link.excluded = None
        self._excluded.pop(link.id, None)
        self._release_waiters()

    def apply_trust(self, worker_id: str, level: int) -> None:
        """A worker record's trust changed: its live link (if any) follows at once."""
        link = self.workers.get(worker_id)
        if link is None or link.trust == level:
            return
        raised = level > link.trust
        log.info("worker_trust", worker=worker_id, name=link.name, before=link.trust, after=level)
        link.trust = level
        if raised:
            self._release_waiters()

    async def add(self, link: WorkerLink) -> None:
        """Register a worker that completed its hello; exclude it if it serves unknown models.

        Raises ``already_connected`` when its record has a link already: checked and claimed
        with no await in between, so two hellos of one record racing cannot both get in.
        """
        if link.id in self.workers:
            raise InferenceError(
                ErrorCode.ALREADY_CONNECTED,
                f"worker {link.name!r} is already connected; one link per worker record",
            )
        self.workers[link.id] = link
        log.info(
            "worker_joined",
            worker=link.id,
            name=link.name,
            models=list(link.models),
            hardware=link.hardware,
            slots=link.slots,
            trust=link.trust,
            excluded=link.excluded,
        )
        outside = [m for m in link.models if not self.config.allows(m)]
        if link.id in self._excluded:
            link.excluded = self._excluded[link.id][0]
        elif outside:
            self.exclude(link, UNKNOWN_MODEL, f"announced models outside the catalog: {outside}")
        self._remember_models(link)
        self._release_waiters()
        if self.on_join is not None:
            self.on_join(link)

    async def remove(self, worker_id: str, reason: str) -> None:
        """Forget a worker and end each of its jobs with ``worker_lost``."""
        link = self.workers.pop(worker_id, None)
        if link is None:
            return
        self._remember_models(link)
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

    def _remember_models(self, link: WorkerLink) -> None:
        if link.excluded is not None:
            return
        now = self._clock()
        for info in link.models.values():
            self._seen[info.id] = _Seen(info.context_size, info.supports_tools, now)

    def recently_seen(self, model: str) -> bool:
        """Whether a worker served the model within ``model_memory_s`` (a restart is coming)."""
        seen = self._seen.get(model)
        return seen is not None and self._clock() - seen.last_seen <= self.settings.model_memory_s

    def models(self) -> list[ModelSummary]:
        """Models served by connected, non-excluded workers (this replica's and, with several
        replicas, the others'), then those seen lately (0 workers)."""
        by_model: dict[str, list[tuple[WorkerLink, ModelInfo]]] = {}
        for link in self.workers.values():
            if link.excluded is None:
                for info in link.models.values():
                    by_model.setdefault(info.id, []).append((link, info))
        live = {
            model: ModelSummary(
                id=model,
                context_size=max(info.context_size for _, info in entries),
                supports_tools=any(info.supports_tools for _, info in entries),
                workers=len(entries),
                free_slots=sum(max(link.free_slots, 0) for link, _ in entries),
            )
            for model, entries in by_model.items()
        }
        for other in self.remote.models() if self.remote is not None else []:
            mine = live.get(other.id)
            live[other.id] = other if mine is None else together(mine, other)
        lately = [
            ModelSummary(model, seen.context_size, seen.supports_tools, workers=0, free_slots=0)
            for model, seen in self._seen.items()
            if model not in live and self.recently_seen(model)
        ]
        return sorted([*live.values(), *lately], key=lambda m: m.id)

    def model(self, model: str) -> ModelSummary | None:
        """One model of :meth:`models`, or None when it is neither served nor seen lately."""
        return next((m for m in self.models() if m.id == model), None)

    def serves(self, model: str, min_trust: int = 0) -> bool:
        """Whether any connected, non-excluded worker of enough trust serves the model."""
        return any(
            model in link.models and link.excluded is None and link.trust >= min_trust
            for link in self.workers.values()
        )

    def context_limit(self, model: str) -> int | None:
        """The largest context among the model's workers (live, else seen lately), if known."""
        live = [
            link.models[model].context_size
            for link in self.workers.values()
            if link.excluded is None and model in link.models
        ]
        if live:
            return max(live)
        return self._seen[model].context_size if self.recently_seen(model) else None

    def capable(
        self,
        model: str,
        needs_tools: bool,
        needs_context: int = 0,
        avoid: frozenset[str] = frozenset(),
        min_trust: int = 0,
    ) -> list[WorkerLink]:
        """Connected workers that could run the job once a slot frees (busy or not)."""
        return [
            link
            for link in self.workers.values()
            if link.id not in avoid and link.can_serve(model, needs_tools, needs_context, min_trust)
        ]

    def eligible(
        self,
        model: str,
        needs_tools: bool,
        avoid: frozenset[str],
        only: str | None = None,
        needs_context: int = 0,
        min_trust: int = 0,
    ) -> list[WorkerLink]:
        """Workers that could take this job now (only the worker ``only`` when given)."""
        grace_start = self._clock() - self.settings.cancel_grace_s
        for link in self.workers.values():
            for handle in link.reap_cancelled(grace_start):
                self._correct_charge(handle)
        return [
            link
            for link in self.workers.values()
            if link.id not in avoid
            and (only is None or link.id == only)
            and link.free_slots > 0
            and link.can_serve(model, needs_tools, needs_context, min_trust)
        ]

    def predicted_wait_s(
        self,
        model: str,
        needs_tools: bool,
        needs_context: int = 0,
        avoid: frozenset[str] = frozenset(),
        min_trust: int = 0,
    ) -> float:
        """Seconds until a queued job of the model would start, from the work ahead of it.

        Work ahead: the tokens still expected from jobs running on the model's capable workers
        plus those of jobs queued for the model; capacity: their measured speeds times slots.
        With no capable worker here, other replicas' workers of the model make it finite: the
        queued work over their capacity (their running work is not stated: a lower bound).
        """
        capable = self.capable(model, needs_tools, needs_context, avoid, min_trust)
        if not capable:
            elsewhere = 0.0 if self.remote is None else self.remote.capacity(model)
            if elsewhere <= 0:
                return math.inf
            queued = sum(t.expected for t in self._pending.values() if t.job.model == model)
            return queued / elsewhere
        capacity = sum(
            (self.router.speed(link.id) or UNMEASURED_TOKENS_PER_S) * link.slots for link in capable
        )
        running = sum(
            max(h.expected_tokens - h.chunks, 0) for link in capable for h in link.jobs.values()
        )
        queued = sum(t.expected for t in self._pending.values() if t.job.model == model)
        return (running + queued) / capacity

    def median_speed(self, model: str) -> float | None:
        """The median measured speed (tokens/s) of the model's live workers, if any is measured."""
        speeds = sorted(
            speed
            for link in self.workers.values()
            if model in link.models and link.excluded is None
            for speed in [self.router.speed(link.id)]
            if speed is not None
        )
        return statistics.median(speeds) if speeds else None

    def running_by_user(self) -> Counter[str]:
        """Running jobs per user on this replica's workers."""
        return Counter(h.user for link in self.workers.values() for h in link.jobs.values())

    def running_in_pool(self) -> Counter[str]:
        """Running jobs per user on every replica's workers (for queue fairness)."""
        running = self.running_by_user()
        if self.remote is not None:
            running.update(self.remote.running())
        return running

    def queue_heads(self) -> list[tuple[Waiter, float]]:
        """Each model's first waiter in release order, and its wait in s.

        Pinned jobs and jobs handed here by another replica are left out: they take no slot
        elsewhere, so no other replica holds one for them.
        """
        heads: dict[str, Waiter] = {}
        for waiter in self.queue.ordered(self.running_in_pool()):
            ticket = self._pending[waiter]
            if waiter.model not in heads and ticket.only is None and ticket.anywhere:
                heads[waiter.model] = waiter
        now = self._clock()
        return [(waiter, now - waiter.enqueued_at) for waiter in heads.values()]

    def expected_tokens(self, job: Job) -> int:
        """Tokens a job is charged at placement: its max_tokens, else the pool default."""
        return job.params.max_tokens or self.config.default_expected_tokens

    def _assign(self, link: WorkerLink, job: Job, user: str, expected: int) -> JobHandle:
        # Charge first: if booking fails, nothing is attached and no slot is taken.
        self.router.charge(link.id, expected)
        max_chunks, max_chars = output_allowance(
            job.params.max_tokens or link.models[job.model].context_size
        )
        handle = JobHandle(
            job=job,
            worker=link,
            user=user,
            expected_tokens=expected,
            max_chunks=max_chunks,
            max_chars=max_chars,
        )
        link.jobs[job.job_id] = handle
        return handle

    def try_place(
        self,
        job: Job,
        *,
        needs_tools: bool,
        user: str,
        avoid: frozenset[str] = frozenset(),
        only: str | None = None,
        needs_context: int = 0,
        min_trust: int = 0,
        anywhere: bool = False,
    ) -> JobHandle | None:
        """Attach the job to the router's choice among free workers now (not sent yet).

        ``anywhere``: the other hub replicas' free workers are weighed with this one's, and
        the choice may be one of theirs (:meth:`holds` tells).
        """
        expected = self.expected_tokens(job)
        if not anywhere or only is not None or self.remote is None:
            return self._try_place(
                job, needs_tools, avoid, user, expected, only, needs_context, min_trust
            )
        eligible = (
            []  # held for a better waiter on another replica
            if self.remote.holding(job.model)
            else self.eligible(job.model, needs_tools, avoid, None, needs_context, min_trust)
        )
        others = self.remote.candidates(
            job.model,
            needs_tools=needs_tools,
            needs_context=needs_context,
            min_trust=min_trust,
            avoid=avoid | self.workers.keys(),
        )
        if not eligible and not others:
            return None
        chosen = self.router.pick([*eligible, *others], self.workers.values(), self.remote)
        if isinstance(chosen, WorkerLink):
            return self._assign(chosen, job, user, expected)
        return self.remote.place(
            chosen,
            job,
            needs_tools=needs_tools,
            user=user,
            needs_context=needs_context,
            min_trust=min_trust,
        )

    def holds(self, handle: JobHandle) -> bool:
        """Whether the handle's worker is linked to this replica (not another's)."""
        return self.workers.get(handle.worker.id) is handle.worker

    def _try_place(
        self,
        job: Job,
        needs_tools: bool,
        avoid: frozenset[str],
        user: str,
        expected: int,
        only: str | None = None,
        needs_context: int = 0,
        min_trust: int = 0,
    ) -> JobHandle | None:
        eligible = self.eligible(job.model, needs_tools, avoid, only, needs_context, min_trust)
        if not eligible:
            return None
        chosen = self.router.pick(eligible, self.workers.values(), self.remote)
        return self._assign(chosen, job, user, expected)

    def release(self) -> None:
        """Hand free slots (the other replicas' included) to queued jobs, in fair order."""
        self._release_waiters()

    def _release_waiters(self) -> None:
        """Hand free slots to queued jobs, in fair order (pool-wide with several replicas)."""
        if not self._pending:
            return
        running = self.running_in_pool()
        free: dict[str | None, bool] = {}  # model (None: any) -> a slot free here; per placement
        for waiter in self.queue.ordered(running):
            if self.remote is None and not self._free_here(None, free):
                return  # every slot is taken: the rest of the queue cannot move now
            ticket = self._pending[waiter]
            if ticket.future.done():
                continue
            handle = self._release_one(ticket, running, free)
            if handle is not None:
                free.clear()
                handle.queued = True
                ticket.future.set_result(handle)

    def _free_here(self, model: str | None, known: dict[str | None, bool]) -> bool:
        """Whether a worker here has a free slot (for ``model``), looked at once per placement."""
        if model not in known:
            known[model] = any(
                w.free_slots > 0 and w.excluded is None and (model is None or model in w.models)
                for w in self.workers.values()
            )
        return known[model]

    def _release_one(
        self, ticket: Ticket, running: Mapping[str, int], free: dict[str | None, bool]
    ) -> JobHandle | None:
        """A slot for one waiter: here, or on another replica when it is the pool's first."""
        waiter = ticket.waiter
        remote = self.remote if ticket.only is None and ticket.anywhere else None
        if remote is not None:
            here = self._free_here(waiter.model, free)
            if not here and remote.free_slots(waiter.model) <= 0:
                return None
            if remote.defer(waiter, running, self._clock() - waiter.enqueued_at, here):
                return None
        handle = self._try_place(
            ticket.job,
            waiter.needs_tools,
            waiter.avoid,
            waiter.user,
            ticket.expected,
            ticket.only,
            ticket.needs_context,
            ticket.min_trust,
        )
        if handle is None and remote is not None:
            handle = remote.try_place(
                ticket.job,
                needs_tools=waiter.needs_tools,
                user=waiter.user,
                avoid=waiter.avoid,
                needs_context=ticket.needs_context,
                min_trust=ticket.min_trust,
            )
        return handle

    def enqueue(
        self,
        job: Job,
        *,
        needs_tools: bool,
        user: str,
        priority: int = 0,
        avoid: frozenset[str] = frozenset(),
        only: str | None = None,
        needs_context: int = 0,
        min_trust: int = 0,
        anywhere: bool = True,
    ) -> Ticket:
        """Queue a job for the next fitting slot (:meth:`await_slot`, then :meth:`withdraw`).

        ``anywhere``: with several replicas, another replica's slot may serve it; a job another
        replica handed here must run here (its answer subject is its sender's).
        """
        waiter = self.queue.push(user, job.model, needs_tools, self._clock(), priority, avoid)
        future: asyncio.Future[JobHandle] = asyncio.get_running_loop().create_future()
        expected = self.expected_tokens(job)
        ticket = Ticket(job, user, expected, needs_context, only, min_trust, waiter, future)
        ticket.anywhere = anywhere
        self._pending[waiter] = ticket
        return ticket

    async def await_slot(self, ticket: Ticket, timeout_s: float) -> JobHandle | None:
        """Wait up to ``timeout_s`` for the ticket's slot; the handle is then the caller's."""
        deadline = self._clock() + timeout_s
        while not ticket.future.done():
            remaining = deadline - self._clock()
            if remaining <= 0:
                return None
            # Wake at least once per cancel grace period: an unacknowledged cancel frees its
            # slot by time, not by an event.
            await asyncio.wait(
                {ticket.future}, timeout=min(remaining, self.settings.cancel_grace_s)
            )
            if not ticket.future.done():
                self._release_waiters()
        ticket.taken = True
        return ticket.future.result()

    def withdraw(self, ticket: Ticket) -> None:
        """Take a ticket out of the queue; a slot handed to it but not taken is given back."""
        if self._pending.pop(ticket.waiter, None) is None:
            return
        self.queue.remove(ticket.waiter)
        if not ticket.future.done():
            ticket.future.cancel()
        elif not ticket.taken:
            self._free(ticket.future.result())

    async def start(self, handle: JobHandle) -> None:
        """Send a placed job to its worker; a worker that cannot take it ends it ``worker_lost``."""
        try:
            await handle.worker.send(handle.job)
        except (OSError, RuntimeError) as exc:
            self._free(handle)
            handle.frames.put_nowait(
                Error(job_id=handle.job.job_id, code=WORKER_LOST, message=str(exc))
            )
        except BaseException:
            self._free(handle)
            raise

    async def place(
        self,
        job: Job,
        *,
        needs_tools: bool,
        user: str,
        avoid: frozenset[str] = frozenset(),
        only: str | None = None,
        needs_context: int = 0,
        min_trust: int = 0,
    ) -> JobHandle | None:
        """Start the job on the router's choice among free workers now, or return None.

        Waiting for a slot is ``inference/dispatch.py``'s (:meth:`enqueue`, :meth:`await_slot`).
        ``only`` pins the job to one worker id (the checker tests workers one by one).
        """
        handle = self.try_place(
            job,
            needs_tools=needs_tools,
            user=user,
            avoid=avoid,
            only=only,
            needs_context=needs_context,
            min_trust=min_trust,
        )
        if handle is not None:
            await self.start(handle)
        return handle

    async def finish(self, handle: JobHandle) -> None:
        """Release the job's slot (idempotent) and hand it to the queue."""
        self._free(handle)

    def _free(self, handle: JobHandle) -> None:
        if handle.finished and handle.job.job_id not in handle.worker.jobs:
            self._correct_charge(handle)
            return
        handle.finished = True
        handle.worker.jobs.pop(handle.job.job_id, None)
        self._correct_charge(handle)
        self._release_waiters()

    def _correct_charge(self, handle: JobHandle) -> None:
        """Replace the job's expected tokens by its real output, once, whatever ended it."""
        if handle.accounted:
            return
        handle.accounted = True
        self.router.charge(handle.worker.id, handle.chunks - handle.expected_tokens)

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
        handle.worker.cancelling.add(handle.job.job_id)
        try:
            await handle.worker.send(Cancel(job_id=handle.job.job_id))
        except (OSError, RuntimeError) as exc:
            log.info("cancel_not_sent", worker=handle.worker.id, error=str(exc))
            await self.finish(handle)

    async def deliver(self, link: WorkerLink, frame: JobFrame) -> bool:
        """Route a worker's job frame to its job; False when the job is not running there.

        Raises :class:`OutputLimitExceeded` when a chunk takes the job past its allowance: the
        caller cuts the worker off, which ends its jobs ``worker_lost`` (they fail over).
        """
        assert frame.job_id is not None
        handle = link.jobs.get(frame.job_id)
        if handle is None:
            return False
        if isinstance(frame, Chunk):
            handle.count(frame)
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
        """Book the finished job by the hub's own count, never by the worker's word alone.

        Charged: the reported completion tokens, but never fewer than the chunks the hub
        received (one token at least each) nor more than the job's allowance. Speed: the chunks
        the hub received over the hub's own clock.
        """
        reported = min(done.usage.completion_tokens, handle.max_chunks)
        tokens = max(handle.chunks, reported)
        handle.worker.tokens_served += tokens
        handle.accounted = True
        self.router.charge(handle.worker.id, tokens - handle.expected_tokens)
        if handle.first_chunk_at is not None and handle.chunks > 1:
            elapsed = self._clock() - handle.first_chunk_at
            if elapsed > 0:
                self.router.observe_speed(handle.worker.id, (handle.chunks - 1) / elapsed)
