"""The other replicas' workers as the router weighs them: speeds and served work, per class.

Each replica states its own workers' measured speed and served work on its capacity beats
(``hub/replica_view.py``); this keeps them for the pool-wide pick
(:class:`~inference.router.Standings`), summed per hardware class as they change, so that a
pick never walks the whole pool: one dictionary look per eligible worker, one per class.

Served work decays with the router's half-life, the same for every worker, so it is stored
multiplied by ``2**(t/half_life)`` from an origin (as the router stores its own): sums stay
sums, and a reading divides by one growth factor. The origin moves forward before the factor
could overflow.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from inference.protocol import Hardware
from inference.router import HALF_LIFE_S, ClassTotals

MAX_EXPONENT = 512.0  # half-lives before the origin moves (2**512 is far from overflow)


@dataclass
class _Worker:
    name: str
    hardware: Hardware
    speed: float | None
    scaled: float  # served tokens times the growth at the time they were stated


@dataclass
class _Class:
    speeds: list[float] = field(default_factory=list)  # sorted
    speed_sum: float = 0.0
    unmeasured: int = 0
    scaled: float = 0.0


class RemoteStandings:
    """Speeds and decaying served work of the other replicas' workers, summed per class."""

    def __init__(self, clock: Callable[[], float], half_life_s: float = HALF_LIFE_S) -> None:
        self._clock = clock
        self._half_life_s = half_life_s
        self._origin = clock()
        self._workers: dict[str, _Worker] = {}
        self._classes: dict[Hardware, _Class] = {}
        self._names: dict[str, str] = {}  # worker name -> id

    def _growth(self) -> float:
        exponent = (self._clock() - self._origin) / self._half_life_s
        if exponent > MAX_EXPONENT:
            factor = 2.0**-exponent
            for worker in self._workers.values():
                worker.scaled *= factor
            for sums in self._classes.values():
                sums.scaled *= factor
            self._origin, exponent = self._clock(), 0.0
        growth: float = 2.0**exponent
        return growth

    def put(
        self, worker_id: str, name: str, hardware: Hardware, speed: float | None, served: float
    ) -> None:
        """Record a worker as its replica states it (``served``: tokens, decayed to now)."""
        self.drop(worker_id)
        worker = _Worker(name, hardware, speed, served * self._growth())
        self._workers[worker_id] = worker
        self._names[name] = worker_id
        sums = self._classes.setdefault(hardware, _Class())
        sums.scaled += worker.scaled
        if speed is None:
            sums.unmeasured += 1
        else:
            bisect.insort(sums.speeds, speed)
            sums.speed_sum += speed

    def drop(self, worker_id: str) -> None:
        """Forget a worker (it left, or its replica is silent)."""
        worker = self._workers.pop(worker_id, None)
        if worker is None:
            return
        if self._names.get(worker.name) == worker_id:
            del self._names[worker.name]
        sums = self._classes[worker.hardware]
        sums.scaled = max(sums.scaled - worker.scaled, 0.0)
        if worker.speed is None:
            sums.unmeasured -= 1
        else:
            del sums.speeds[bisect.bisect_left(sums.speeds, worker.speed)]
            sums.speed_sum -= worker.speed
        if not sums.speeds and not sums.unmeasured:
            del self._classes[worker.hardware]

    def charge(self, worker_id: str, tokens: float) -> None:
        """Count work sent to a worker here, until its replica states its served work again."""
        worker = self._workers.get(worker_id)
        if worker is not None:
            amount = tokens * self._growth()
            worker.scaled += amount
            self._classes[worker.hardware].scaled += amount

    def speed(self, worker_id: str) -> float | None:
        """The worker's speed as its replica measured it (None: unmeasured or unknown)."""
        worker = self._workers.get(worker_id)
        return None if worker is None else worker.speed

    def served(self, worker_id: str) -> float:
        """The worker's served tokens, decayed to now (0 when unknown)."""
        worker = self._workers.get(worker_id)
        return 0.0 if worker is None else worker.scaled / self._growth()

    def total_served(self) -> float:
        """Tokens served by every worker here, decayed to now."""
        return sum(sums.scaled for sums in self._classes.values()) / self._growth()

    def classes(self, fixed: Collection[str]) -> dict[Hardware, ClassTotals]:
        """Per class, the workers summed; those named in ``fixed`` count only as served work."""
        growth = self._growth()
        totals = {
            hardware: ClassTotals(
                sums.speeds, sums.speed_sum, sums.unmeasured, sums.scaled / growth
            )
            for hardware, sums in self._classes.items()
        }
        for worker_id, _name, hardware in self.named(fixed):
            speed, sums = self._workers[worker_id].speed, totals[hardware]
            speeds = list(sums.speeds)
            if speed is not None:
                del speeds[bisect.bisect_left(speeds, speed)]
            totals[hardware] = ClassTotals(
                speeds,
                sums.speed_sum - (speed or 0.0),
                sums.unmeasured - (speed is None),
                sums.served,
            )
        return totals

    def named(self, names: Collection[str]) -> list[tuple[str, str, Hardware]]:
        """The workers (id, name, class) called one of ``names``."""
        found = [(self._names[name], name) for name in names if name in self._names]
        return [(worker_id, name, self._workers[worker_id].hardware) for worker_id, name in found]
