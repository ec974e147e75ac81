"""The running side of cross-replica dispatch, and the messages both sides exchange.

A replica that holds a worker fetches the hand-offs other replicas published for it
(``<prefix>.jobs.<replica>``, JetStream, durable), runs each on a local worker and streams its
frames back on ``<prefix>.back.<job id>`` within the credit the sender grants on
``<prefix>.control.<job id>``. The protocol as a whole, and the sending side, are described in
``hub/replica_dispatch.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import anyio
import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, RetentionPolicy, StorageType
from nats.js.client import JetStreamContext
from pydantic import BaseModel, Field, ValidationError

from hub.bus import BusSettings, NatsBus
from inference.link import JobHandle
from inference.protocol import Chunk, Done, Error, Job
from inference.registry import WorkerRegistry
from inference.settings import InferenceSettings

log = structlog.get_logger()

REPLICA_BUSY = "replica_busy"
HANDOFF_QUEUE_S = 2.0  # how long a handed-off job may wait for a slot on the receiving replica
STREAM_MAX_AGE_S = 600.0  # a job no replica fetched in this long is dropped (its sender moved on)
ACK_WAIT_S = 30.0  # redelivery of a job whose replica stopped sending in_progress
CONSUMER_IDLE_S = 600.0  # a dead replica's consumer is deleted after this long without pulls
FETCH_S = 1.0
TICK_S = 0.25  # how often a waiting side checks for silence and cancellation

FrameOut = Annotated[Chunk | Done | Error, Field(discriminator="type")]


class HandOff(BaseModel):
    """A job for another replica's worker: what its placement there needs."""

    origin: str = Field(pattern=r"^[0-9a-f]{32}$")
    job: Job
    worker: str = Field(min_length=1, max_length=200)
    needs_tools: bool
    user: str = Field(max_length=200)
    needs_context: int = Field(ge=0)
    min_trust: int


class Back(BaseModel):
    """What the running replica sends on the job's answer subject."""

    kind: Literal["frame", "alive"]
    seq: int = Field(0, ge=0)
    frame: FrameOut | None = None


class Control(BaseModel):
    """What the replica that owns the client sends on the job's control subject."""

    kind: Literal["credit", "cancel"]
    upto: int = Field(0, ge=0)


def stream_name(prefix: str) -> str:
    """The JetStream stream of this pool's hand-offs."""
    return f"{prefix}_jobs"


@dataclass
class _Running:
    """A handed-off job running here: the credit granted and how to stop it."""

    credit: int
    granted: asyncio.Event = field(default_factory=asyncio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    heard: float = field(default_factory=time.monotonic)


@dataclass
class HandOffRunner:
    """Run the hand-offs other replicas publish for this one on its workers."""

    bus: NatsBus
    registry: WorkerRegistry
    replica: str
    settings: BusSettings
    inference: InferenceSettings
    _serving: set[str] = field(default_factory=set)
    """Jobs running here, by id: a redelivery of one is acknowledged and skipped."""
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        """Stop the hand-offs running here (shutdown: their senders fail them over)."""
        for task in list(self._tasks):
            task.cancel()

    async def consume(self) -> None:
        """Fetch this replica's hand-offs; re-create the pull subscription after a reconnect."""
        while True:
            subscription = None
            try:
                subscription = await self._subscribe()
                reconnects = self.bus.reconnects
                while self.bus.reconnects == reconnects:
                    try:
                        messages = await subscription.fetch(16, timeout=FETCH_S)
                    except nats.errors.TimeoutError:
                        continue
                    for msg in messages:
                        self._spawn(self._serve(msg))
                log.info("replica_consumer_renewed", replica=self.replica)
            except (nats.errors.Error, OSError) as exc:
                log.warning("replica_consumer_failed", error=repr(exc)[:200])
                await asyncio.sleep(self.settings.reconnect_wait_s)
            finally:
                # Also on the way out: a pull subscription left open stalls the bus's drain.
                if subscription is not None:
                    with anyio.CancelScope(shield=True), contextlib.suppress(nats.errors.Error):
                        await subscription.unsubscribe()

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        js = self.bus.client.jetstream()
        name = stream_name(self.bus.prefix)
        config: dict[str, Any] = {
            "name": name,
            "subjects": [self.bus.subject("jobs.*")],
            "retention": RetentionPolicy.WORK_QUEUE,
            "storage": StorageType.FILE,
            "max_age": STREAM_MAX_AGE_S,
        }
        try:
            await js.add_stream(**config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(**config)
        return await js.pull_subscribe(
            self.bus.subject(f"jobs.{self.replica}"),
            durable=f"replica-{self.replica}",
            stream=name,
            config=ConsumerConfig(ack_wait=ACK_WAIT_S, inactive_threshold=CONSUMER_IDLE_S),
        )

    async def _serve(self, msg: Msg) -> None:
        """Run one handed-off job on a local worker, streaming its frames back."""
        try:
            handoff = HandOff.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("replica_job_refused", subject=msg.subject, error=str(exc)[:300])
            with contextlib.suppress(nats.errors.Error):
                await msg.term()
            return
        job_id = handoff.job.job_id
        if job_id in self._serving:  # redelivered while it runs here
            with contextlib.suppress(nats.errors.Error):
                await msg.ack()
            return
        self._serving.add(job_id)
        running = _Running(credit=self.settings.handoff_window)
        control = None
        try:

            async def on_control(message: Msg) -> None:
                await self._on_control(message, running)

            control = await self.bus.client.subscribe(
                self.bus.subject(f"control.{job_id}"), cb=on_control
            )
            async with anyio.create_task_group() as beats:
                beats.start_soon(self._beat, msg, job_id)
                with running.scope:
                    await self._run(handoff, running)
                beats.cancel_scope.cancel()
            await msg.ack()
        except nats.errors.Error as exc:
            log.warning("replica_job_bus_failed", job=job_id, error=str(exc)[:200])
        finally:
            self._serving.discard(job_id)
            if control is not None:
                with contextlib.suppress(nats.errors.Error):
                    await control.unsubscribe()

    async def _on_control(self, msg: Msg, running: _Running) -> None:
        try:
            message = Control.model_validate_json(msg.data)
        except ValidationError:
            log.warning("replica_control_unreadable", subject=msg.subject)
            return
        running.heard = time.monotonic()
        if message.kind == "cancel":
            running.scope.cancel()
        elif message.upto > running.credit:
            running.credit = message.upto
            running.granted.set()

    async def _beat(self, msg: Msg, job_id: str) -> None:
        """Tell the sender this job lives, and JetStream not to redeliver it."""
        back = self.bus.subject(f"back.{job_id}")
        alive = orjson.dumps({"kind": "alive"})
        while True:
            await anyio.sleep(self.settings.heartbeat_s)
            with contextlib.suppress(nats.errors.Error):
                await self.bus.client.publish(back, alive)
                await msg.in_progress()

    async def _run(self, handoff: HandOff, running: _Running) -> None:
        job = handoff.job
        back = self.bus.subject(f"back.{job.job_id}")
        handle = await self._place(handoff)
        if handle is None:
            busy = Error(job_id=job.job_id, code=REPLICA_BUSY, message="no free worker here")
            await self._reply(back, 1, busy)
            return
        seq = 0
        try:
            await self.registry.start(handle)
            settings = self.inference
            async for frame in handle.stream(
                settings.first_token_timeout_s, settings.stall_timeout_s
            ):
                seq += 1
                if not await self._credit(running, seq):
                    log.warning("replica_receiver_gone", job=job.job_id, origin=handoff.origin)
                    return
                await self._reply(back, seq, frame)
        finally:
            with anyio.CancelScope(shield=True):
                if handle.finished:
                    await self.registry.finish(handle)
                else:
                    await self.registry.cancel(handle)

    async def _place(self, handoff: HandOff) -> JobHandle | None:
        """A local worker for the job, waiting ``HANDOFF_QUEUE_S`` at most for a slot.

        The worker the sender's router chose, if it is free here; else this router's choice.
        """
        registry, job = self.registry, handoff.job
        for only in (handoff.worker, None):
            handle = registry.try_place(
                job,
                needs_tools=handoff.needs_tools,
                user=handoff.user,
                only=only,
                needs_context=handoff.needs_context,
                min_trust=handoff.min_trust,
            )
            if handle is not None:
                return handle
        ticket = registry.enqueue(
            job,
            needs_tools=handoff.needs_tools,
            user=handoff.user,
            needs_context=handoff.needs_context,
            min_trust=handoff.min_trust,
            anywhere=False,  # handed on again, its answer would meet this one on one subject
        )
        try:
            return await registry.await_slot(ticket, HANDOFF_QUEUE_S)
        finally:
            registry.withdraw(ticket)

    async def _credit(self, running: _Running, seq: int) -> bool:
        """Wait until frame ``seq`` is within the receiver's credit; False if it went silent."""
        since = time.monotonic()
        while seq > running.credit:
            running.granted.clear()
            with anyio.move_on_after(TICK_S):
                await running.granted.wait()
            if time.monotonic() - max(running.heard, since) > self.settings.handoff_silence_s:
                return False
        return True

    async def _reply(self, subject: str, seq: int, frame: Chunk | Done | Error) -> None:
        await self.bus.client.publish(
            subject, Back(kind="frame", seq=seq, frame=frame).model_dump_json().encode()
        )
