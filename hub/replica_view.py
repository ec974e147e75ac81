"""The pool-wide view of free worker slots: what each hub replica's workers can take right now.

Each replica publishes its own workers on the bus (subject ``<prefix>.capacity``): the workers
whose free slots changed (a job started or ended, a worker linked) and those that left, looked
for every ``CHANGE_CHECK_S``; a sign of life every ``heartbeat_s`` even when nothing changed;
and every ``FULL_EVERY`` heartbeats the whole list, which repairs whatever a replica missed.
Every replica keeps the others' workers in memory, indexed by model and free slot, so placing a
chat on another replica costs no query and no round trip: :meth:`CapacityView.candidates`
offers at most ``CANDIDATES`` free workers per replica to the router. A replica silent for
``replica_stale_s`` drops out of the view (it died, or lost the bus).

A snapshot is a claim, not a reservation: two replicas may both see the last free slot. The
receiving replica then queues the job briefly and answers ``replica_busy`` if no slot frees,
and the sender tries elsewhere (``hub/replica_dispatch.py``). Between two snapshots a sender
counts the slots it took itself, so a burst from one replica spreads over the free workers.

**What the router needs travels too**: each worker's hardware class, measured speed and served
work (tokens, decayed to the snapshot's ``at``, a wall-clock time), so that every replica's
:class:`~inference.router.DeficitRouter` weighs all the pool's workers together
(:attr:`CapacityView.standings`, ``hub/replica_standings.py``). The receiver decays served
work itself from then on.
Nothing is taken on faith: values out of range are refused by the schema (the snapshot is
logged as ``replica_capacity_unreadable`` and counted in :attr:`CapacityView.refused`), a
statement time further than ``MAX_SKEW_S`` from the receiver's clock is clamped, and a replica
speaks only for the workers it lists: a worker another replica claims later (it moved) leaves
the first one's list, and a worker linked here is never read from the view.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any
from uuid import UUID

import nats.errors
import structlog
from pydantic import BaseModel, Field, ValidationError

from hub.bus import NatsBus
from hub.replica_standings import RemoteStandings
from inference.link import WorkerLink
from inference.placement import ModelSummary
from inference.protocol import Hardware, ModelInfo
from inference.registry import UNMEASURED_TOKENS_PER_S, WorkerRegistry
from inference.router import HALF_LIFE_S, MAX_CHARGE, DeficitRouter

log = structlog.get_logger()

SUBJECT = "capacity"
CHANGE_CHECK_S = 0.1  # how soon a change of free slots reaches the bus
FULL_EVERY = 10  # heartbeats between two full snapshots (changes go as they happen)
MAX_SPEED = 1e6  # tokens/s: a stated speed above this is garbage
MAX_SERVED = 1e15  # tokens: a stated served amount above this is garbage
CANDIDATES = 8  # free workers of one replica a placement weighs at most
MAX_SKEW_S = 30.0  # a statement time further than this from the receiver's clock is clamped
MAX_RUNNING = 1_000_000  # running jobs of one user on one replica: more is garbage
MAX_USERS = 100_000  # users (or queue heads) in one snapshot: more is garbage


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
    speed: float | None = Field(None, gt=0, le=MAX_SPEED, allow_inf_nan=False)
    served: float = Field(0.0, ge=0, le=MAX_SERVED, allow_inf_nan=False)


class QueueHead(BaseModel):
    """The first waiter for one model in a replica's queue (in the pool-wide order)."""

    model: str = Field(min_length=1, max_length=200)
    priority: int = Field(ge=-1_000_000, le=1_000_000)
    user: str = Field(max_length=200)
    arrival: float = Field(allow_inf_nan=False)  # wall clock


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
    at: float | None = Field(None, allow_inf_nan=False)  # wall clock of the served amounts
    # Jobs running on this replica's workers per user: those whose count changed (0: none
    # now), all of them in a full snapshot. The fair queue's order counts them pool-wide.
    running: dict[
        Annotated[str, Field(max_length=200)], Annotated[int, Field(ge=0, le=MAX_RUNNING)]
    ] = Field(default_factory=dict, max_length=MAX_USERS)
    # This replica's queue heads, one per model, when they changed (None: as before).
    heads: list[QueueHead] | None = Field(None, max_length=MAX_USERS)


def remote_worker(link: WorkerLink, router: DeficitRouter) -> RemoteWorker:
    """How a local worker link is described to the other replicas (with its router state)."""
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
        speed=router.speed(link.id),
        served=router.served(link.id),
    )


@dataclass
class _Replica:
    workers: dict[str, RemoteWorker]
    seen: float
    # Per model, the workers with a free slot and what they offer of it: a placement looks at
    # these only.
    free: dict[str, dict[str, tuple[RemoteWorker, ModelInfo]]] = field(default_factory=dict)
    # Per model, how many workers offer it, free or busy: whether the replica serves it at all.
    models: Counter[str] = field(default_factory=Counter)
    running: Counter[str] = field(default_factory=Counter)  # user -> jobs on its workers
    heads: dict[str, QueueHead] = field(default_factory=dict)  # model -> its first waiter

    def put(self, worker: RemoteWorker) -> None:
        self.drop(worker.id)
        self.workers[worker.id] = worker
        self.models.update(info.id for info in worker.models)
        if worker.free > 0:
            for info in worker.models:
                self.free.setdefault(info.id, {})[worker.id] = (worker, info)

    def drop(self, worker_id: str) -> None:
        old = self.workers.pop(worker_id, None)
        if old is not None:
            self.models.subtract(info.id for info in old.models)
            for info in old.models:
                self.free.get(info.id, {}).pop(worker_id, None)


@dataclass(frozen=True, slots=True)
class Choice:
    """A free worker of another replica, and that replica's id (a router candidate)."""

    replica: str
    worker: RemoteWorker

    @property
    def id(self) -> str:
        """The worker's id."""
        return self.worker.id

    @property
    def name(self) -> str:
        """The worker's name."""
        return self.worker.name

    @property
    def hardware(self) -> Hardware:
        """The worker's hardware class."""
        return self.worker.hardware

    @property
    def free_slots(self) -> int:
        """The worker's free slots, as last heard (less those taken here since)."""
        return self.worker.free


class CapacityView:
    """The other replicas' workers, by replica id, from their snapshots (this one's skipped).

    :attr:`standings` holds what the router needs of those workers: their speeds and served
    work, as their replicas state them, summed per class.
    """

    def __init__(
        self,
        own: str,
        stale_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        half_life_s: float = HALF_LIFE_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.own = own
        self.stale_s = stale_s
        self._clock = clock
        self._wall = wall
        self._half_life_s = half_life_s
        self.standings = RemoteStandings(clock, half_life_s)
        self._replicas: dict[str, _Replica] = {}
        self._where: dict[str, str] = {}  # worker id -> the replica that claims it
        self._running: Counter[str] = Counter()  # user -> jobs on the live replicas' workers
        self.updates = 0
        self.refused = 0

    def apply(self, data: dict[str, Any]) -> bool:
        """Take one snapshot off the bus; a malformed one is logged, counted and ignored.

        True when it may let a queue move: a free slot, a user's running jobs or a replica's
        first waiters changed.
        """
        try:
            snap = Snapshot.model_validate(data)
        except ValidationError as exc:
            self.refused += 1
            log.warning("replica_capacity_unreadable", error=str(exc)[:200])
            return False
        if snap.replica == self.own:
            return False
        self.updates += 1
        now = self._clock()
        entry = self._replicas.get(snap.replica)
        if entry is None or snap.full:
            if entry is not None:
                self._forget(snap.replica, entry)
            entry = self._replicas[snap.replica] = _Replica({}, now)
        entry.seen = now
        # Served amounts were stated at ``at`` on the sender's clock: decay them to now.
        age = 0.0 if snap.at is None else min(max(self._wall() - snap.at, 0.0), MAX_SKEW_S)
        decay: float = 2.0 ** (-age / self._half_life_s)
        for worker_id in snap.gone:
            if worker_id in entry.workers:
                self._drop(snap.replica, entry, worker_id)
        for worker in snap.workers:
            before = self._where.get(worker.id)
            if before is not None and before != snap.replica and before in self._replicas:
                # The latest replica to list a worker holds it (it moved): the other lets go.
                self._drop(before, self._replicas[before], worker.id)
                log.info("replica_worker_moved", worker=worker.id, before=before, now=snap.replica)
            self._put(snap.replica, entry, worker, worker.served * decay)
        for user, count in snap.running.items():
            self._running[user] += count - entry.running.pop(user, 0)
            if count:
                entry.running[user] = count
            if self._running[user] <= 0:
                del self._running[user]
        if snap.heads is not None:
            entry.heads = {head.model: head for head in snap.heads}
        moved = snap.heads is not None or bool(snap.running)
        return moved or any(worker.free > 0 for worker in snap.workers)

    def _put(self, replica: str, entry: _Replica, worker: RemoteWorker, served: float) -> None:
        entry.put(worker)
        self._where[worker.id] = replica
        self.standings.put(worker.id, worker.name, worker.hardware, worker.speed, served)

    def _drop(self, replica: str, entry: _Replica, worker_id: str) -> None:
        entry.drop(worker_id)
        if self._where.get(worker_id) == replica:
            del self._where[worker_id]
            self.standings.drop(worker_id)

    def _forget(self, replica: str, entry: _Replica) -> None:
        for worker_id in list(entry.workers):
            self._drop(replica, entry, worker_id)
        self._running.subtract(entry.running)
        for user in entry.running:
            if self._running[user] <= 0:
                del self._running[user]

    def running(self) -> Counter[str]:
        """Jobs running on the live replicas' workers, per user (as they stated them)."""
        self.live()
        return self._running

    def heads(self, model: str) -> list[tuple[str, QueueHead]]:
        """The live replicas' first waiters for ``model`` (replica id, head)."""
        return [
            (replica, head)
            for replica in self.live()
            if (head := self._replicas[replica].heads.get(model)) is not None
        ]

    def live(self) -> list[str]:
        """Replicas heard from within ``stale_s`` (the dead are forgotten here)."""
        cutoff = self._clock() - self.stale_s
        for replica in [r for r, entry in self._replicas.items() if entry.seen < cutoff]:
            self._forget(replica, self._replicas.pop(replica))
            log.warning("replica_silent", replica=replica)
        return list(self._replicas)

    def candidates(
        self,
        model: str,
        *,
        needs_tools: bool,
        needs_context: int,
        min_trust: int,
        avoid: frozenset[str] | set[str],
    ) -> list[Choice]:
        """The free workers of the live replicas that could serve the job, for the router.

        Trust, context and tools are checked as the hub's own placement checks them; only the
        workers with a free slot for the model are looked at, and at most ``CANDIDATES`` of
        each replica: those whose slots changed least lately (the idlest, most likely the
        most behind their share). A replica's own placements weigh all its workers.
        """
        found: list[Choice] = []
        for replica in self.live():
            offered = (
                Choice(replica, worker)
                for worker, info in self._replicas[replica].free.get(model, {}).values()
                if info.context_size >= needs_context
                and worker.trust >= min_trust
                and (not needs_tools or (info.supports_tools and worker.tools_ok is not False))
                and worker.id not in avoid
            )
            found.extend(itertools.islice(offered, CANDIDATES))
        return found

    def take(self, choice: Choice, expected_tokens: float) -> None:
        """Count a slot taken and its expected work served, until the worker's next snapshot.

        A burst of placements then spreads as the router intends before the worker's replica
        has said anything; its next statement replaces these guesses.
        """
        worker, entry = choice.worker, self._replicas.get(choice.replica)
        if entry is None or entry.workers.get(worker.id) is not worker:
            return
        entry.put(worker.model_copy(update={"free": worker.free - 1}))
        self.standings.charge(worker.id, min(max(expected_tokens, 0.0), MAX_CHARGE))

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

    def capacity(self, model: str) -> float:
        """Tokens/s the live replicas' workers of ``model`` generate with every slot busy.

        Speeds as their replicas measured them, an unmeasured worker's as the hub's guess.
        """
        return sum(
            (worker.speed or UNMEASURED_TOKENS_PER_S) * worker.slots
            for replica in self.live()
            for worker in self._replicas[replica].workers.values()
            if any(info.id == model for info in worker.models)
        )

    def free_slots(self, model: str) -> int:
        """Free slots for the model on the live replicas."""
        return sum(
            worker.free
            for replica in self.live()
            for worker, _ in self._replicas[replica].free.get(model, {}).values()
        )


_State = tuple[int, int, bool | None, float | None]  # free slots, trust, tools, speed


class CapacityPublisher:
    """Publishes this replica's changes as they happen, and a sign of life every heartbeat."""

    def __init__(self, bus: NatsBus, replica: str, registry: WorkerRegistry, heartbeat_s: float):
        self._bus = bus
        self._replica = replica
        self._registry = registry
        self._heartbeat_s = heartbeat_s

    def _links(self) -> dict[str, tuple[WorkerLink, _State]]:
        # Compared every CHANGE_CHECK_S: cheap, and a worker is described only when it changed.
        # Served work changes with every charge, and a charge comes with a slot taken or
        # freed; between charges it only decays, which each receiver does itself.
        speed = self._registry.router.speed
        return {
            link.id: (link, (link.free_slots, link.trust, link.tools_ok, speed(link.id)))
            for link in self._registry.workers.values()
            if link.excluded is None
        }

    def _heads(self) -> dict[tuple[str, int, str, int], QueueHead]:
        """This replica's queue heads, keyed by who they are (their wait grows, they do not)."""
        wall = time.time()
        return {
            (w.model, w.priority, w.user, w.seq): QueueHead(
                model=w.model, priority=w.priority, user=w.user, arrival=wall - waited
            )
            for w, waited in self._registry.queue_heads()
        }

    async def run(self) -> None:
        """Until cancelled: look for changes every ``CHANGE_CHECK_S``, publish them."""
        last: dict[str, _State] = {}
        ran: Counter[str] = Counter()
        headed: set[tuple[str, int, str, int]] = set()
        sent, beats = 0.0, 0
        while True:
            links, running, heads = self._links(), self._registry.running_by_user(), self._heads()
            now = time.monotonic()
            due = now - sent >= self._heartbeat_s
            full = due and beats % FULL_EVERY == 0
            changed = [link for link, state in links.values() if full or last.get(link.id) != state]
            gone = [] if full else [worker_id for worker_id in last if worker_id not in links]
            counts = {
                u: running[u] for u in running.keys() | ran.keys() if full or running[u] != ran[u]
            }
            new_heads = full or heads.keys() != headed
            if changed or gone or counts or new_heads or due:
                router = self._registry.router
                snap = Snapshot(
                    replica=self._replica,
                    full=full,
                    workers=[remote_worker(link, router) for link in changed],
                    gone=gone,
                    at=time.time(),
                    running={user: count for user, count in counts.items() if count or not full},
                    heads=list(heads.values()) if new_heads else None,
                )
                try:
                    await self._bus.publish(SUBJECT, snap.model_dump(mode="json"))
                except (OSError, nats.errors.Error) as exc:
                    log.info("replica_capacity_not_sent", error=str(exc)[:200])
                else:
                    last = {worker_id: state for worker_id, (_, state) in links.items()}
                    ran, headed = running, set(heads)
                    if due:
                        sent, beats = now, beats + 1
            await asyncio.sleep(CHANGE_CHECK_S)
