"""Chats handed between hub replicas over NATS JetStream, and streamed back.

A chat that reaches replica A may be placed on a free worker of replica B
(:class:`~hub.replica_view.CapacityView`): the router weighs B's free workers with A's own,
pool-wide, through ``registry.remote`` (``inference/dispatch.py``: route ``replica``); a chat
queued on A takes B's slot when it is the pool's first waiter (``hub/replica_queue.py``).
A gets an ordinary
:class:`~inference.link.JobHandle` on a stand-in :class:`~inference.link.WorkerLink` for that
worker, so the relay, the billing and mid-stream failover treat it like a local job:

1. **Hand-off** (A → B, durable): the job, with what placement needs, is published with
   JetStream on ``<prefix>.jobs.<B>`` (stream ``<prefix>_jobs``, file storage, work-queue
   retention). The server's acknowledgement is the hand-off: a job it acknowledged waits in the
   stream for B even while B or the server restarts. A subscribed to the job's answer subject
   first, so nothing B sends is missed.
2. **Run** (on B, ``hub/replica_serve.py``): B's durable pull consumer fetches it, places it
   on a local worker (waiting ``HANDOFF_QUEUE_S`` for a slot if the view was stale, else
   ``replica_busy``), and acks the message when the job ends. While it runs, B sends
   ``in_progress`` every ``heartbeat_s`` so the consumer's ``ack_wait`` never redelivers a live
   job; a redelivered job already running here is acknowledged and skipped.
3. **Answer** (B → A, core NATS, ``<prefix>.back.<job id>``): ``{"kind": "frame", "seq": n,
   "frame": chunk|done|error}`` in order, and ``{"kind": "alive"}`` every ``heartbeat_s``.
   **Flow control**: B sends frame ``n`` only once A has granted credit up to ``n``
   (``{"kind": "credit", "upto": n}`` on ``<prefix>.control.<job id>``, a window of
   ``handoff_window`` frames ahead); a receiver that stops granting for ``handoff_silence_s``
   is gone, and B cancels the job. ``{"kind": "cancel"}`` there stops it at once (A's client
   left).
4. **Failure**: when B says nothing for ``handoff_silence_s`` (it died, or lost the bus), or a
   frame is missing from the sequence, A ends the handle ``worker_lost``: the dispatcher's
   failover resumes the job on another worker, here or on another replica, with the text
   already streamed, exactly as when a local worker dies mid-answer.

Bad input: a message on the job subject that is not a valid hand-off is refused (logged,
terminated so it is never redelivered); an unreadable or foreign frame on an answer subject is
logged and dropped. nats-py pull subscriptions do not survive a server restart: the consumer
loop re-creates its subscription whenever the connection came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any

import anyio
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from hub import replica_view
from hub.bus import BusSettings, NatsBus
from hub.replica_queue import PoolQueue
from hub.replica_serve import TICK_S, Back, Control, HandOff, HandOffRunner, stream_name
from hub.replica_view import CapacityPublisher, CapacityView, Choice
from inference.link import (
    WORKER_LOST,
    JobHandle,
    OutputLimitExceeded,
    WorkerLink,
    output_allowance,
)
from inference.placement import ModelSummary
from inference.protocol import Cancel, Chunk, Done, Error, Frame, Hardware, Job
from inference.registry import WorkerRegistry
from inference.router import Candidate, ClassTotals, Waiter
from inference.settings import InferenceSettings

log = structlog.get_logger()

PUBLISH_TIMEOUT_S = 2.0  # the JetStream acknowledgement of a hand-off


class ReplicaDispatch:
    """Cross-replica dispatch for one replica: sending jobs to the others' workers, and running
    theirs here (:class:`~hub.replica_serve.HandOffRunner`)."""

    def __init__(
        self,
        bus: NatsBus,
        registry: WorkerRegistry,
        replica: str,
        settings: BusSettings,
        inference: InferenceSettings,
    ) -> None:
        self.bus = bus
        self.registry = registry
        self.replica = replica
        self.settings = settings
        self.inference = inference
        self.view = CapacityView(replica, settings.replica_stale_s)
        self.queue = PoolQueue(self.view)
        self._links: dict[str, WorkerLink] = {}
        self._pending: dict[str, HandOff] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.runner = HandOffRunner(bus, registry, replica, settings, inference)

    # --- the sending side (the replica that holds the client's stream) ---------------------

    def try_place(
        self,
        job: Job,
        *,
        needs_tools: bool,
        user: str,
        avoid: frozenset[str],
        needs_context: int,
        min_trust: int,
    ) -> JobHandle | None:
        """A handle on the router's choice among the other replicas' free workers, or None.

        The choice weighs them pool-wide (this replica's workers count in the targets), as
        the first placement does; sent by ``registry.start``.
        """
        found = self.candidates(
            job.model,
            needs_tools=needs_tools,
            needs_context=needs_context,
            min_trust=min_trust,
            avoid=avoid | self.registry.workers.keys(),
        )
        if not found:
            return None
        chosen = self.registry.router.pick(found, self.registry.workers.values(), self)
        return self.place(
            chosen,
            job,
            needs_tools=needs_tools,
            user=user,
            needs_context=needs_context,
            min_trust=min_trust,
        )

    def candidates(
        self,
        model: str,
        *,
        needs_tools: bool,
        needs_context: int,
        min_trust: int,
        avoid: frozenset[str] | set[str],
    ) -> list[Choice]:
        """The other live replicas' free workers that could take the job (the view, no query)."""
        return self.view.candidates(
            model,
            needs_tools=needs_tools,
            needs_context=needs_context,
            min_trust=min_trust,
            avoid=avoid,
        )

    def running(self) -> Counter[str]:
        """Jobs running on the other live replicas' workers, per user (their statements)."""
        return self.view.running()

    def defer(
        self, waiter: Waiter, running: Mapping[str, int], waited_s: float, here: bool
    ) -> bool:
        """Whether another replica's first waiter gets this model's free slots first."""
        key = self.queue.key(waiter, running, waited_s)
        return self.queue.defer(waiter.model, key, running, here)

    def holding(self, model: str) -> bool:
        """Whether this replica's free slots of ``model`` wait for another's waiter."""
        return self.queue.holding(model)

    def capacity(self, model: str) -> float:
        """Tokens/s the other live replicas' workers of ``model`` generate, all slots busy."""
        return self.view.capacity(model)

    def speed(self, worker_id: str) -> float | None:
        """Another replica's worker's speed, as that replica measured it."""
        return self.view.standings.speed(worker_id)

    def served(self, worker_id: str) -> float:
        """Another replica's worker's served tokens, decayed to now."""
        return self.view.standings.served(worker_id)

    def total_served(self) -> float:
        """Tokens the other live replicas' workers served, decayed to now."""
        return self.view.standings.total_served()

    def classes(self, fixed: Collection[str]) -> dict[Hardware, ClassTotals]:
        """The other live replicas' workers summed per hardware class."""
        return self.view.standings.classes(fixed)

    def named(self, names: Collection[str]) -> list[tuple[str, str, Hardware]]:
        """The other live replicas' workers (id, name, class) called one of ``names``."""
        return self.view.standings.named(names)

    def place(
        self,
        chosen: Candidate,
        job: Job,
        *,
        needs_tools: bool,
        user: str,
        needs_context: int,
        min_trust: int,
    ) -> JobHandle:
        """A handle on ``chosen`` (one of :meth:`candidates`), its slot counted taken here."""
        assert isinstance(chosen, Choice)
        choice = chosen
        expected = self.registry.expected_tokens(job)
        self.view.take(choice, expected)
        link = self._link(choice)
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
            accounted=True,  # the worker's replica charges its router, and states it
        )
        link.jobs[job.job_id] = handle
        self._pending[job.job_id] = HandOff(
            origin=self.replica,
            job=job,
            worker=choice.worker.id,
            needs_tools=needs_tools,
            user=user,
            needs_context=needs_context,
            min_trust=min_trust,
        )
        return handle

    def free_slots(self, model: str) -> int:
        """Free slots for the model on the other live replicas (the view, no query)."""
        return self.view.free_slots(model)

    def serves(self, model: str) -> bool:
        """Whether a worker of another live replica offers the model (the view, no query)."""
        return self.view.serves(model)

    def models(self) -> list[ModelSummary]:
        """The models the other live replicas' workers serve (the view, no query)."""
        return self.view.models()

    def _link(self, choice: Choice) -> WorkerLink:
        """The stand-in link of another replica's worker (its ``send`` hands jobs over)."""
        worker, replica = choice.worker, choice.replica
        key = f"{replica}/{worker.id}"
        link = self._links.get(key)
        if link is None:

            async def send(frame: Frame) -> None:
                await self._send(replica, frame)

            link = WorkerLink(
                id=worker.id,
                name=worker.name,
                owner_id=worker.owner_id,
                models={},
                hardware=worker.hardware,
                slots=worker.slots,
                send=send,
            )
            self._links[key] = link
        link.models = {info.id: info for info in worker.models}
        link.record_id, link.trust, link.tools_ok = worker.record_id, worker.trust, worker.tools_ok
        return link

    async def _send(self, replica: str, frame: Frame) -> None:
        """Hand a job to ``replica`` (or cancel one there); ``OSError`` when it cannot go."""
        if isinstance(frame, Cancel):
            await self._control(frame.job_id, Control(kind="cancel"))
            return
        assert isinstance(frame, Job)
        handoff = self._pending.pop(frame.job_id)
        link = self._links[f"{replica}/{handoff.worker}"]
        handle = link.jobs[frame.job_id]
        client = self.bus.client
        try:
            answers = await client.subscribe(self.bus.subject(f"back.{frame.job_id}"))
            try:
                await client.jetstream().publish(
                    self.bus.subject(f"jobs.{replica}"),
                    handoff.model_dump_json().encode(),
                    timeout=PUBLISH_TIMEOUT_S,
                    stream=stream_name(self.bus.prefix),
                )
            except BaseException:
                await answers.unsubscribe()
                raise
        except nats.errors.Error as exc:
            raise OSError(f"the hand-off to replica {replica} failed: {exc!r}") from None
        self._spawn(self._receive(handle, answers, replica))

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _control(self, job_id: str, message: Control) -> None:
        try:
            await self.bus.client.publish(
                self.bus.subject(f"control.{job_id}"), message.model_dump_json().encode()
            )
        except nats.errors.Error as exc:
            log.info("replica_control_not_sent", job=job_id, error=str(exc)[:200])

    async def _receive(self, handle: JobHandle, answers: Subscription, replica: str) -> None:
        """Feed the other replica's frames into the handle, granting credit as they come."""
        job_id = handle.job.job_id
        window = self.settings.handoff_window
        seq, granted, heard = 0, window, time.monotonic()
        ended = False
        try:
            while not handle.finished:
                try:
                    msg = await answers.next_msg(timeout=TICK_S)
                except nats.errors.TimeoutError:
                    if time.monotonic() - heard > self.settings.handoff_silence_s:
                        self._lost(handle, f"replica {replica} went silent")
                        return
                    continue
                heard = time.monotonic()
                back = _read_back(msg, job_id)
                if back is None or back.kind == "alive" or back.frame is None:
                    continue
                if back.seq != seq + 1:
                    self._lost(handle, f"replica {replica}'s answer lost frames")
                    return
                seq = back.seq
                ended = self._deliver(handle, back.frame)
                if ended:
                    return
                if seq + window // 2 >= granted:
                    granted = seq + window
                    await self._control(job_id, Control(kind="credit", upto=granted))
        except nats.errors.Error as exc:
            self._lost(handle, f"the bus failed: {exc!r}")
        finally:
            if not ended:  # cancelled here, or lost: stop it there (it may still be running)
                await self._control(job_id, Control(kind="cancel"))
            with contextlib.suppress(nats.errors.Error):
                await answers.unsubscribe()

    def _deliver(self, handle: JobHandle, frame: Chunk | Done | Error) -> bool:
        """Queue one frame for the relay; True when it ends the job."""
        if isinstance(frame, Chunk):
            try:
                handle.count(frame)
            except OutputLimitExceeded as exc:
                self._lost(handle, exc.message, code=exc.code)
                return False
            if handle.first_chunk_at is None:
                handle.first_chunk_at = time.monotonic()
            handle.frames.put_nowait(frame)
            return False
        handle.frames.put_nowait(frame)
        handle.finished = True
        return True

    def _lost(self, handle: JobHandle, why: str, code: str = WORKER_LOST) -> None:
        log.warning("replica_job_lost", job=handle.job.job_id, worker=handle.worker.id, why=why)
        handle.frames.put_nowait(Error(job_id=handle.job.job_id, code=code, message=why))
        handle.finished = True

    # --- the running side (the replica that holds the worker) ------------------------------

    async def run(self) -> None:
        """Until cancelled: publish this replica's capacity, follow the others', run hand-offs."""
        await self.bus.subscribe(replica_view.SUBJECT, self._capacity)
        publisher = CapacityPublisher(
            self.bus, self.replica, self.registry, self.settings.heartbeat_s
        )
        try:
            async with anyio.create_task_group() as loops:
                loops.start_soon(publisher.run)
                loops.start_soon(self.runner.consume)
                loops.start_soon(self._lapse_holds)
        finally:
            for task in list(self._tasks):
                task.cancel()
            self.runner.cancel()

    async def _capacity(self, data: dict[str, Any]) -> None:
        # A slot free there, a waiter gone or a user's jobs ended: the queue may move.
        if self.view.apply(data) and len(self.registry.queue):
            self.registry.release()

    async def _lapse_holds(self) -> None:
        """Give this replica's queue the slots whose hold for another replica's waiter lapsed."""
        while True:
            await anyio.sleep(replica_view.CHANGE_CHECK_S)
            if self.queue.lapsed():
                self.registry.release()


def _read_back(msg: Msg, job_id: str) -> Back | None:
    """An answer message for ``job_id``, or None (logged) when it is not one."""
    try:
        back = Back.model_validate_json(msg.data)
    except ValidationError as exc:
        log.warning("replica_frame_refused", subject=msg.subject, error=str(exc)[:200])
        return None
    if back.frame is not None and back.frame.job_id != job_id:
        log.warning("replica_frame_refused", subject=msg.subject, error="another job's frame")
        return None
    return back
