"""The fair queue's order across hub replicas: a freed slot goes to the pool's best waiter.

Each replica keeps its own :class:`~inference.router.FairQueue` (a waiting chat's stream is
held by the replica that received it), and states on its capacity beats
(``hub/replica_view.py``) the jobs running on its workers per user and its queue's first waiter
of each model. Every replica orders waiters by the same key, pool-wide: priority, then the
user's running jobs on **every** replica, then arrival (wall clock).

- A replica whose best waiter for a model ranks first pool-wide takes a free slot of another
  replica as soon as that replica's beat shows one (each beat that arrives while jobs wait
  releases the queue again), as well as its own.
- A replica with a free slot whose best local waiter for the model ranks behind another
  replica's first waiter **holds** its free slots of that model for up to ``HOLD_S``: neither
  its queue nor a new chat arriving there takes them, so that the better waiter, which sees the
  slot on the next beat, gets it through a hand-off. A first waiter that lets ``HOLD_S`` pass
  without taking a slot (it cannot use it: tools, context, trust) is passed over until another
  waiter heads that replica's queue.

Nothing here is a lock or a reservation: two replicas that each think their waiter first may
both go for one slot; the loser's hand-off is answered ``replica_busy`` and it waits again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hub.replica_view import CapacityView, QueueHead
from inference.router import Waiter

HOLD_S = 1.0  # how long a freed slot waits for a better waiter on another replica

QueueKey = tuple[int, int, float]  # priority, the user's running jobs pool-wide, arrival


@dataclass
class _Hold:
    head: tuple[str, str, float]  # the waiter held for: its replica, user and arrival
    since: float
    lapsed: bool = False


class PoolQueue:
    """This replica's side of the pool-wide queue order: when to hold a slot, when to take."""

    def __init__(
        self,
        view: CapacityView,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._view = view
        self._clock = clock
        self._wall = wall
        self._holds: dict[str, _Hold] = {}

    def key(self, waiter: Waiter, running: Mapping[str, int], waited_s: float) -> QueueKey:
        """A local waiter's place in the pool-wide order."""
        return (waiter.priority, running.get(waiter.user, 0), self._wall() - waited_s)

    def best_elsewhere(
        self, model: str, running: Mapping[str, int]
    ) -> tuple[QueueKey, tuple[str, str, float]] | None:
        """The other replicas' best first waiter for ``model``: its key and who it is."""
        found = [
            (_key(head, running), (replica, head.user, head.arrival))
            for replica, head in self._view.heads(model)
        ]
        return min(found) if found else None

    def defer(self, model: str, key: QueueKey, running: Mapping[str, int], here: bool) -> bool:
        """Whether a waiter of this ``key`` leaves the model's free slots to a better one.

        True while another replica's first waiter ranks ahead: ``here`` (a slot of the model
        is free on this replica) the slot is held for it, for ``HOLD_S`` from the first time;
        a first waiter that let a held slot pass is passed over until another one heads its
        queue. The hold's clock starts only with a slot free here to hold.
        """
        best = self.best_elsewhere(model, running)
        if best is None or best[0] >= key:
            self._holds.pop(model, None)
            return False
        now, hold = self._clock(), self._holds.get(model)
        if hold is not None and hold.head == best[1] and now - hold.since >= HOLD_S:
            return False  # it let a held slot pass: passed over
        if not here:
            return True  # the other replicas' free slots are its first
        if hold is None or hold.head != best[1]:
            hold = self._holds[model] = _Hold(best[1], now)
        return now - hold.since < HOLD_S

    def holding(self, model: str) -> bool:
        """Whether this replica's free slots of ``model`` wait for another's waiter now."""
        hold = self._holds.get(model)
        return hold is not None and self._clock() - hold.since < HOLD_S

    def lapsed(self) -> bool:
        """Whether a hold lapsed since last asked: its slots go to this replica's queue now."""
        now, lapsed = self._clock(), False
        for hold in self._holds.values():
            if not hold.lapsed and now - hold.since >= HOLD_S:
                hold.lapsed = lapsed = True
        return lapsed


def _key(head: QueueHead, running: Mapping[str, int]) -> QueueKey:
    return (head.priority, running.get(head.user, 0), head.arrival)
