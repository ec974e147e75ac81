"""The pool-wide view of free worker slots: what each hub replica's workers can take right now.

Each replica publishes its own workers on the bus (subject ``<prefix>.capacity``): the workers
whose free slots changed (a job started or ended, a worker linked) and those that left, looked
for every ``CHANGE_CHECK_S``; a sign of life every ``heartbeat_s`` even when nothing changed;
and every ``FULL_EVERY`` heartbeats the whole list, which repairs whatever a replica missed.
Every replica keeps the others' workers in memory, indexed by model and free slot, so placing a
chat on another replica costs no query and no round trip: :meth:`CapacityView.pick` looks at
about one worker per replica. A replica silent for ``replica_stale_s`` drops out of the view
(it died, or lost the bus).

A snapshot is a claim, not a reservation: two replicas may both see the last free slot. The
receiving replica then queues the job briefly and answers ``replica_busy`` if no slot frees,
and the sender tries elsewhere (``hub/replica_dispatch.py``). Between two snapshots a sender
counts the slots it took itself, so a burst from one replica spreads over the free workers.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import nats.errors
import structlog
from pydantic import BaseModel, Field, ValidationError

from hub.bus import NatsBus
from inference.link import WorkerLink
from inference.protocol import Hardware, ModelInfo
from inference.registry import ModelSummary, WorkerRegistry

log = structlog.get_logger()

SUBJECT = "capacity"
CHANGE_CHECK_S = 0.1  # how soon a change of free slots reaches the bus
FULL_EVERY = 10  # heartbeats between two full snapshots (changes go as they happen)


class RemoteWorker(BaseModel):
    """One worker of another replica, as its snapshot describes it."""

    id: str = Field(min_length=1, max_length=200)
    name: str = Field(max_length=200)
    owner_id: UUID | None = None
    record_id: UUID | None = None
    hardware: Hardware
    slots: int = Field(ge=0, le=1024)
    free: int = Field(ge=0, le=1024)
    trust: int
    tools_ok: bool | None = None
    models: list[ModelInfo]


class Snapshot(BaseModel):
    """A replica's workers on ``<prefix>.capacity``: all of them (``full``), or what changed.

    A change carries the workers whose free slots (or trust, or exclusion) changed and the ids
    of those that left; every ``FULL_EVERY`` heartbeats the whole list goes again, so a replica
    that missed changes (it started later, or the bus was away) is right again soon.
    """

    replica: str = Field(pattern=r"^[0-9a-f]{32}$")
    full: bool = True
    workers: list[RemoteWorker]
    gone: list[str] = Field(default_factory=list)


def remote_worker(link: WorkerLink) -> RemoteWorker:
    """How a local worker link is described to the other replicas."""
    return RemoteWorker(
        id=link.id,
        name=link.name,
        owner_id=link.owner_id,
        record_id=link.record_id,
        hardware=link.hardware,
        slots=link.slots,
        free=max(link.free_slots, 0),
        trust=link.trust,
        tools_ok=link.tools_ok,
        models=list(link.models.values()),
    )


@dataclass
class _Replica:
    workers: dict[str, RemoteWorker]
    seen: float
    # Per model, the workers with a free slot (insertion order): a placement looks at these only.
    free: dict[str, dict[str, RemoteWorker]] = field(default_factory=dict)
    # Per model, how many workers offer it, free or busy: whether the replica serves it at all.
    models: Counter[str] = field(default_factory=Counter)

    def put(self, worker: RemoteWorker) -> None:
        self.drop(worker.id)
        self.workers[worker.id] = worker
        self.models.update(info.id for info in worker.models)
        if worker.free > 0:
            for info in worker.models:
                self.free.setdefault(info.id, {})[worker.id] = worker

    def drop(self, worker_id: str) -> None:
        old = self.workers.pop(worker_id, None)
        if old is not None:
            self.models.subtract(info.id for info in old.models)
            for info in old.models:
                self.free.get(info.id, {}).pop(worker_id, None)


@dataclass(frozen=True)
class Choice:
    """A free worker of another replica, and that replica's id."""

    replica: str
    worker: RemoteWorker


class CapacityView:
    """The other replicas' workers, by replica id, from their snapshots (this one's skipped)."""

    def __init__(
        self, own: str, stale_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.own = own
        self.stale_s = stale_s
        self._clock = clock
        self._replicas: dict[str, _Replica] = {}
        self.updates = 0

    def apply(self, data: dict[str, Any]) -> None:
        """Take one snapshot off the bus; a malformed one is logged and ignored."""
        try:
            snap = Snapshot.model_validate(data)
        except ValidationError as exc:
            log.warning("replica_capacity_unreadable", error=str(exc)[:200])
            return
        if snap.replica == self.own:
            return
        self.updates += 1
        entry = self._replicas.get(snap.replica)
        if entry is None or snap.full:
            entry = self._replicas[snap.replica] = _Replica({}, self._clock())
        entry.seen = self._clock()
        for worker_id in snap.gone:
            entry.drop(worker_id)
        for worker in snap.workers:
            entry.put(worker)

    def live(self) -> list[str]:
        """Replicas heard from within ``stale_s`` (the dead are forgotten here)."""
        cutoff = self._clock() - self.stale_s
        for replica in [r for r, entry in self._replicas.items() if entry.seen < cutoff]:
            del self._replicas[replica]
            log.warning("replica_silent", replica=replica)
        return list(self._replicas)

    def pick(
        self,
        model: str,
        *,
        needs_tools: bool,
        needs_context: int,
        min_trust: int,
        avoid: frozenset[str],
    ) -> Choice | None:
        """A free worker of a live replica, its slot counted taken until the next snapshot.

        Each replica offers its first free worker that could serve the job (trust, context,
        tools as the hub's own placement checks them); the offer with the most free slots wins.
        Only workers with a free slot for the model are looked at, so a placement costs about
        one look per replica, not one per worker.
        """
        best: Choice | None = None
        for replica in self.live():
            for worker in self._replicas[replica].free.get(model, {}).values():
                if worker.id in avoid or worker.trust < min_trust:
                    continue
                if not _serves(worker, model, needs_tools, needs_context):
                    continue
                if best is None or worker.free > best.worker.free:
                    best = Choice(replica, worker)
                break
        if best is not None:
            best.worker.free -= 1
            if best.worker.free <= 0:
                entry = self._replicas[best.replica]
                for info in best.worker.models:
                    entry.free.get(info.id, {}).pop(best.worker.id, None)
        return best

    def serves(self, model: str) -> bool:
        """Whether a worker of a live replica offers the model, free or busy."""
        return any(self._replicas[replica].models[model] > 0 for replica in self.live())

    def models(self) -> list[ModelSummary]:
        """The models of the live replicas' workers, counted as ``/v1/models`` counts them.

        One look at every worker: for listings, not for placement.
        """
        by_model: dict[str, list[tuple[RemoteWorker, ModelInfo]]] = {}
        for replica in self.live():
            for worker in self._replicas[replica].workers.values():
                for info in worker.models:
                    by_model.setdefault(info.id, []).append((worker, info))
        return [
            ModelSummary(
                id=model,
                context_size=max(info.context_size for _, info in entries),
                supports_tools=any(info.supports_tools for _, info in entries),
                workers=len(entries),
                free_slots=sum(worker.free for worker, _ in entries),
            )
            for model, entries in by_model.items()
        ]

    def free_slots(self, model: str) -> int:
        """Free slots for the model on the live replicas."""
        return sum(
            worker.free
            for replica in self.live()
            for worker in self._replicas[replica].free.get(model, {}).values()
        )


def _serves(worker: RemoteWorker, model: str, needs_tools: bool, needs_context: int) -> bool:
    info = next((m for m in worker.models if m.id == model), None)
    return (
        info is not None
        and info.context_size >= needs_context
        and (not needs_tools or (info.supports_tools and worker.tools_ok is not False))
    )


class CapacityPublisher:
    """Publishes this replica's changes as they happen, and a sign of life every heartbeat."""

    def __init__(self, bus: NatsBus, replica: str, registry: WorkerRegistry, heartbeat_s: float):
        self._bus = bus
        self._replica = replica
        self._registry = registry
        self._heartbeat_s = heartbeat_s

    def _links(self) -> dict[str, tuple[WorkerLink, tuple[int, int, bool | None]]]:
        # Compared every CHANGE_CHECK_S: cheap, and a worker is described only when it changed.
        return {
            link.id: (link, (link.free_slots, link.trust, link.tools_ok))
            for link in self._registry.workers.values()
            if link.excluded is None
        }

    async def run(self) -> None:
        """Until cancelled: look for changes every ``CHANGE_CHECK_S``, publish them."""
        last: dict[str, tuple[int, int, bool | None]] = {}
        sent, beats = 0.0, 0
        while True:
            links = self._links()
            now = time.monotonic()
            due = now - sent >= self._heartbeat_s
            full = due and beats % FULL_EVERY == 0
            changed = [link for link, state in links.values() if full or last.get(link.id) != state]
            gone = [] if full else [worker_id for worker_id in last if worker_id not in links]
            if changed or gone or due:
                snap = Snapshot(
                    replica=self._replica,
                    full=full,
                    workers=[remote_worker(link) for link in changed],
                    gone=gone,
                )
                try:
                    await self._bus.publish(SUBJECT, snap.model_dump(mode="json"))
                except (OSError, nats.errors.Error) as exc:
                    log.info("replica_capacity_not_sent", error=str(exc)[:200])
                else:
                    last = {worker_id: state for worker_id, (_, state) in links.items()}
                    if due:
                        sent, beats = now, beats + 1
            await asyncio.sleep(CHANGE_CHECK_S)
