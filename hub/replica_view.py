"""The pool-wide view of free worker slots: what each hub replica's workers can take right now.

Each replica publishes a snapshot of its own workers on the bus (subject ``<prefix>.capacity``)
when it changes — a worker linked or gone, a slot taken or freed — checked every
``CHANGE_CHECK_S``, and at least every ``heartbeat_s`` as its sign of life. Every replica keeps
the others' latest snapshots in memory, so placing a chat on another replica costs no query and
no round trip: :meth:`CapacityView.pick` reads the dictionary. A replica silent for
``replica_stale_s`` drops out of the view (it died, or lost the bus).

A snapshot is a claim, not a reservation: two replicas may both see the last free slot. The
receiving replica then queues the job briefly and answers ``replica_busy`` if no slot frees,
and the sender tries elsewhere (``hub/replica_dispatch.py``). Between two snapshots a sender
counts the slots it took itself, so a burst from one replica spreads over the free workers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import nats.errors
import structlog
from pydantic import BaseModel, Field, ValidationError

from hub.bus import NatsBus
from inference.protocol import Hardware, ModelInfo
from inference.registry import WorkerRegistry

log = structlog.get_logger()

SUBJECT = "capacity"
CHANGE_CHECK_S = 0.1  # how soon a change of free slots reaches the bus


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
    """A replica's workers with their free slots, published on ``<prefix>.capacity``."""

    replica: str = Field(pattern=r"^[0-9a-f]{32}$")
    workers: list[RemoteWorker]


def snapshot(replica: str, registry: WorkerRegistry) -> Snapshot:
    """This replica's workers that may take jobs (excluded ones are left out)."""
    return Snapshot(
        replica=replica,
        workers=[
            RemoteWorker(
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
            for link in registry.workers.values()
            if link.excluded is None
        ],
    )


@dataclass
class _Replica:
    workers: dict[str, RemoteWorker]
    seen: float


@dataclass(frozen=True)
class Choice:
    """A free worker of another replica, and that replica's id."""

    replica: str
    worker: RemoteWorker


class CapacityView:
    """The other replicas' latest snapshots, by replica id; this replica's own are skipped."""

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
        self._replicas[snap.replica] = _Replica({w.id: w for w in snap.workers}, self._clock())

    def live(self) -> list[str]:
        """Replicas heard from within ``stale_s`` (the dead are forgotten here)."""
        cutoff = self._clock() - self.stale_s
        for replica in [r for r, entry in self._replicas.items() if entry.seen < cutoff]:
            del self._replicas[replica]
            log.warning("replica_silent", replica=replica)
        return list(self._replicas)

    def alive(self, replica: str) -> bool:
        """Whether the replica was heard from within ``stale_s``."""
        entry = self._replicas.get(replica)
        return entry is not None and entry.seen >= self._clock() - self.stale_s

    def pick(
        self,
        model: str,
        *,
        needs_tools: bool,
        needs_context: int,
        min_trust: int,
        avoid: frozenset[str],
    ) -> Choice | None:
        """The free worker of a live replica with the most free slots; its slot is counted taken.

        Only models of workers that could ever serve the job count (trust, context, tools as
        the hub's own placement checks them).
        """
        best: Choice | None = None
        for replica in self.live():
            for worker in self._replicas[replica].workers.values():
                if worker.free <= 0 or worker.id in avoid or worker.trust < min_trust:
                    continue
                if not _serves(worker, model, needs_tools, needs_context):
                    continue
                if best is None or worker.free > best.worker.free:
                    best = Choice(replica, worker)
        if best is not None:
            best.worker.free -= 1
        return best

    def free_slots(self, model: str) -> int:
        """Free slots for the model on the live replicas (what ``/admin`` and the bench show)."""
        return sum(
            worker.free
            for replica in self.live()
            for worker in self._replicas[replica].workers.values()
            if any(info.id == model for info in worker.models)
        )


def _serves(worker: RemoteWorker, model: str, needs_tools: bool, needs_context: int) -> bool:
    info = next((m for m in worker.models if m.id == model), None)
    return (
        info is not None
        and info.context_size >= needs_context
        and (not needs_tools or (info.supports_tools and worker.tools_ok is not False))
    )


class CapacityPublisher:
    """Publishes this replica's snapshot when it changes, and every ``heartbeat_s`` anyway."""

    def __init__(self, bus: NatsBus, replica: str, registry: WorkerRegistry, heartbeat_s: float):
        self._bus = bus
        self._replica = replica
        self._registry = registry
        self._heartbeat_s = heartbeat_s

    def _signature(self) -> list[tuple[str, int, int, str | None, bool | None]]:
        # Cheap to compare every CHANGE_CHECK_S; the snapshot is built only when it changed.
        return [
            (link.id, link.free_slots, link.trust, link.excluded, link.tools_ok)
            for link in self._registry.workers.values()
        ]

    async def run(self) -> None:
        """Until cancelled: look for a change every ``CHANGE_CHECK_S``, publish it."""
        last: list[tuple[str, int, int, str | None, bool | None]] | None = None
        sent = 0.0
        while True:
            current = self._signature()
            now = time.monotonic()
            if current != last or now - sent >= self._heartbeat_s:
                data = snapshot(self._replica, self._registry).model_dump(mode="json")
                try:
                    await self._bus.publish(SUBJECT, data)
                except (OSError, nats.errors.Error) as exc:
                    log.info("replica_capacity_not_sent", error=str(exc)[:200])
                else:
                    last, sent = current, now
            await asyncio.sleep(CHANGE_CHECK_S)
