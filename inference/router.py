"""Deficit-scoring router and fair queue: pure logic, driven by a clock it is given.

**Deficit scoring.** Each hardware class has a target share of the pool's work (``class_shares``,
normalised over the classes that are connected); inside a class, each worker's target is its
class share split in proportion to its measured speed (named workers may have fixed shares). Every
job charges its expected tokens to the chosen worker (corrected to the real count when it ends).
The eligible worker whose served share lags its target the most gets the next job. Served work
decays with a half-life, so the shares describe recent work, not all history.

**Pool-wide.** With several hub replicas, each is the authority on its own workers' served
work and speeds; the others' arrive as :class:`Standings` (``hub/replica_view.py``) and the pick
weighs local and remote workers together: targets over every connected worker of the pool, lag
against the pool's served total.

**Fair queue.** Jobs that find no free worker wait in a priority queue ordered by priority, then
by how many jobs the same user already has running, then by arrival: one user's burst cannot
starve others.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from inference.pool_config import PoolConfig
from inference.protocol import Hardware

DEFAULT_SPEED = 1.0
HALF_LIFE_S = 600.0  # served work halves in this long: shares describe recent work
# The most tokens one charge may book: a worker's absurd usage report must not overflow a float.
MAX_CHARGE = 10**9


class Candidate(Protocol):
    """What the router needs to know of a worker."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def hardware(self) -> Hardware: ...

    @property
    def free_slots(self) -> int: ...


@dataclass(frozen=True)
class ClassTotals:
    """One hardware class of the workers a :class:`Standings` describes, summed.

    ``speeds`` (sorted), ``speed_sum`` and ``unmeasured`` leave out the workers with a fixed
    share; ``served`` counts them all.
    """

    speeds: Sequence[float]
    speed_sum: float
    unmeasured: int
    served: float


class Standings(Protocol):
    """Workers this router does not serve itself (other hub replicas'), as their owners state."""

    def speed(self, worker_id: str) -> float | None:
        """The worker's measured speed (tokens/s), if its replica measured one."""
        ...

    def served(self, worker_id: str) -> float:
        """Tokens the worker served, decayed to now (0 for a worker not known)."""
        ...

    def total_served(self) -> float:
        """Tokens served by every worker these standings describe, decayed to now."""
        ...

    def classes(self, fixed: Collection[str]) -> dict[Hardware, ClassTotals]:
        """Per hardware class, the workers summed (those named in ``fixed`` apart)."""
        ...

    def named(self, names: Collection[str]) -> list[tuple[str, str, Hardware]]:
        """The workers (id, name, class) called one of ``names``."""
        ...


@dataclass
class _Served:
    raw: float = 0.0
    speed: float | None = None


class DeficitRouter:
    """Chooses workers so each one's share of recent work tracks its target share."""

    def __init__(
        self, config: PoolConfig, clock: Callable[[], float], half_life_s: float = HALF_LIFE_S
    ) -> None:
        self.config = config
        self._clock = clock
        self._half_life_s = half_life_s
        self._origin = clock()
        self._stats: dict[str, _Served] = defaultdict(_Served)
        self._total_raw = 0.0

    # Decay by scaling: a charge at time t is stored multiplied by 2**(t/half_life). Shares are
    # ratios of stored values, so the common factor cancels and nothing is rescanned per job.
    def _growth(self) -> float:
        exponent = (self._clock() - self._origin) / self._half_life_s
        if exponent > 512:
            self._rebase(exponent)
            exponent = 0.0
        growth: float = 2.0**exponent
        return growth

    def _rebase(self, exponent: float) -> None:
        factor = 2.0**-exponent
        for stat in self._stats.values():
            stat.raw *= factor
        self._total_raw *= factor
        self._origin = self._clock()

    def charge(self, worker_id: str, tokens: float) -> None:
        """Book ``tokens`` of work (negative to correct an over-estimate) to a worker."""
        tokens = min(max(tokens, -MAX_CHARGE), MAX_CHARGE)
        amount = tokens * self._growth()
        stat = self._stats[worker_id]
        stat.raw = max(stat.raw + amount, 0.0)
        self._total_raw = max(self._total_raw + amount, 0.0)

    def observe_speed(self, worker_id: str, tokens_per_s: float, weight: float = 0.3) -> None:
        """Fold a measured generation speed into the worker's moving average."""
        if not 0 < tokens_per_s < math.inf:
            return
        stat = self._stats[worker_id]
        stat.speed = (
            tokens_per_s
            if stat.speed is None
            else ((1 - weight) * stat.speed + weight * tokens_per_s)
        )

    def speed(self, worker_id: str) -> float | None:
        """The worker's measured speed (tokens/s), if any."""
        return self._stats[worker_id].speed if worker_id in self._stats else None

    def forget(self, worker_id: str) -> None:
        """Drop a departed worker's statistics."""
        stat = self._stats.pop(worker_id, None)
        if stat is not None:
            self._total_raw = max(self._total_raw - stat.raw, 0.0)

    def served(self, worker_id: str) -> float:
        """Tokens the worker served, decayed to now (what its replica tells the others)."""
        stat = self._stats.get(worker_id)
        return 0.0 if stat is None else stat.raw / self._growth()

    def total_served(self) -> float:
        """Tokens this router's workers served, decayed to now."""
        return self._total_raw / self._growth()

    def served_share(self, worker_id: str, others: Standings | None = None) -> float:
        """The worker's share of recent work (0 when nothing was served yet).

        With ``others`` the share is of the whole pool's work, and a worker this router never
        charged is read from them.
        """
        if others is None:
            if self._total_raw <= 0 or worker_id not in self._stats:
                return 0.0
            return self._stats[worker_id].raw / self._total_raw
        return self._shares(others)(worker_id)

    def _shares(self, others: Standings | None) -> Callable[[str], float]:
        """The served-share function of one pick: totals computed once, not per worker."""
        if others is None:
            return self.served_share
        growth = self._growth()
        total = self._total_raw / growth + others.total_served()

        def share(worker_id: str) -> float:
            if total <= 0:
                return 0.0
            stat = self._stats.get(worker_id)
            served = others.served(worker_id) if stat is None else stat.raw / growth
            return served / total

        return share

    def _speed_of(self, others: Standings) -> Callable[[str], float | None]:
        def speed(worker_id: str) -> float | None:
            stat = self._stats.get(worker_id)
            return others.speed(worker_id) if stat is None else stat.speed

        return speed

    def targets(self, workers: Iterable[Candidate]) -> dict[str, float]:
        """Target share of each connected worker under the current policy."""
        workers = list(workers)
        fixed = {
            w.id: self.config.worker_shares[w.name]
            for w in workers
            if w.name in self.config.worker_shares
        }
        by_class: dict[Hardware, list[Candidate]] = defaultdict(list)
        for w in workers:
            if w.id not in fixed:
                by_class[w.hardware].append(w)
        present = {c: self.config.class_shares.get(c, 0.0) for c in by_class}
        total = sum(present.values())
        if total <= 0:
            present = dict.fromkeys(by_class, 1.0)
            total = float(len(present)) or 1.0
        remaining = max(1.0 - sum(fixed.values()), 0.0)
        targets = dict(fixed)
        for hardware, members in by_class.items():
            class_share = remaining * present[hardware] / total
            speeds = _speeds_or_median([self.speed(w.id) for w in members])
            speed_sum = sum(speeds)
            for w, speed in zip(members, speeds, strict=True):
                targets[w.id] = class_share * speed / speed_sum
        return targets

    def pick[C: Candidate](
        self,
        eligible: Sequence[C],
        connected: Iterable[Candidate],
        others: Standings | None = None,
    ) -> C:
        """The eligible worker lagging its target share the most, in the class lagging most.

        Choosing the class first keeps the class shares on target when some workers cannot
        take their own share (too few slots): their shortfall is made up inside their class,
        not spread over every worker, most of which are CPUs. ``others`` states the workers
        this router does not serve (other replicas'), summed per class: targets and shares
        are then the whole pool's, and ``eligible`` may hold some of theirs.
        """
        if not eligible:
            raise ValueError("pick needs at least one eligible worker")
        if len(eligible) == 1:  # the usual case of a small pool: no shares to weigh
            return eligible[0]
        if others is not None:
            return self._pick_pool(eligible, list(connected), others)
        connected = list(connected)
        targets = self.targets(connected)
        share, speed = self.served_share, self.speed
        class_lag: dict[Hardware, float] = defaultdict(float)
        for w in connected:
            class_lag[w.hardware] += targets.get(w.id, 0.0) - share(w.id)
        hardware = max(sorted({w.hardware for w in eligible}), key=class_lag.__getitem__)

        def deficit(w: C) -> tuple[float, int, float]:
            lag = targets.get(w.id, 0.0) - share(w.id)
            return (lag, w.free_slots, speed(w.id) or 0.0)

        return max((w for w in eligible if w.hardware == hardware), key=deficit)

    def _pick_pool[C: Candidate](
        self, eligible: Sequence[C], local: list[Candidate], others: Standings
    ) -> C:
        """:meth:`pick` over this router's workers and the class totals of the others'.

        The same rule, computed from sums: a class's target is its share of the pool, a
        worker's its class share split by speed (the unmeasured at the class's median); the
        class lagging most is chosen, then its eligible worker lagging most. The cost is one
        look at this replica's workers and at the eligible ones, not at the whole pool.
        """
        growth = self._growth()
        total = self._total_raw / growth + others.total_served()
        shares = self.config.worker_shares
        remote = others.classes(shares.keys())
        fixed = {w_id: (hw, shares[name]) for w_id, name, hw in others.named(shares.keys())}
        speeds: dict[Hardware, list[float | None]] = defaultdict(list)
        served: dict[Hardware, float] = defaultdict(float)
        for w in local:
            stat = self._stats.get(w.id)
            served[w.hardware] += 0.0 if stat is None else stat.raw / growth
            if w.name in shares:
                fixed[w.id] = (w.hardware, shares[w.name])
            else:
                speeds[w.hardware].append(None if stat is None else stat.speed)
        empty = ClassTotals((), 0.0, 0, 0.0)
        present = {h for h in speeds} | {h for h, t in remote.items() if t.speeds or t.unmeasured}
        weights = {h: self.config.class_shares.get(h, 0.0) for h in present}
        if sum(weights.values()) <= 0:
            weights = dict.fromkeys(present, 1.0)
        remaining = max(1.0 - sum(share for _, share in fixed.values()), 0.0)
        class_share, speed_sum, median = {}, {}, {}
        for h in present:
            there = remote.get(h, empty)
            known = sorted(sp for sp in speeds[h] if sp is not None)
            count = len(known) + len(there.speeds)
            median[h] = _kth(known, there.speeds, count // 2) if count else DEFAULT_SPEED
            unmeasured = len(speeds[h]) - len(known) + there.unmeasured
            speed_sum[h] = sum(known) + there.speed_sum + unmeasured * median[h]
            class_share[h] = remaining * weights[h] / sum(weights.values())
        class_lag: dict[Hardware, float] = defaultdict(float)
        for h in present | set(served) | set(remote):
            lagging = served[h] + remote.get(h, empty).served
            class_lag[h] = class_share.get(h, 0.0) - (lagging / total if total > 0 else 0.0)
        for hw, share in fixed.values():
            class_lag[hw] += share
        hardware = max(sorted({w.hardware for w in eligible}), key=class_lag.__getitem__)
        speed_of, share_of = self._speed_of(others), self._shares(others)

        def deficit(w: C) -> tuple[float, int, float]:
            speed = speed_of(w.id)
            if w.id in fixed:
                target = fixed[w.id][1]
            else:
                pace = median[hardware] if speed is None else speed
                target = class_share.get(hardware, 0.0) * pace / (speed_sum.get(hardware) or 1.0)
            return (target - share_of(w.id), w.free_slots, speed or 0.0)

        return max((w for w in eligible if w.hardware == hardware), key=deficit)


def _kth(a: Sequence[float], b: Sequence[float], k: int) -> float:
    """The ``k``-th smallest (from 0) of two sorted sequences together, by bisection."""
    take = k + 1
    lo, hi = max(0, take - len(b)), min(take, len(a))
    while lo < hi:  # the fewest taken from ``a`` such that its next one is not needed
        i = (lo + hi) // 2
        if a[i] < b[take - i - 1]:
            lo = i + 1
        else:
            hi = i
    last = [a[lo - 1]] if lo > 0 else []
    if take - lo > 0:
        last.append(b[take - lo - 1])
    return max(last)


def _speeds_or_median(measured: Sequence[float | None]) -> list[float]:
    """Measured speeds; the unmeasured count as the median of their measured peers.

    The median is taken once per class: per worker it made one pick cost
    O(unmeasured x workers log workers), 100 ms for 1,000 fresh workers.
    """
    known = sorted(s for s in measured if s is not None)
    median = known[len(known) // 2] if known else DEFAULT_SPEED
    return [median if s is None else s for s in measured]


@dataclass(eq=False)
class Waiter:
    """A job waiting for a worker."""

    user: str
    model: str
    needs_tools: bool
    priority: int
    enqueued_at: float
    seq: int
    avoid: frozenset[str] = frozenset()
    assigned: object | None = field(default=None)


class FairQueue:
    """Waiting jobs, released in order of priority, then the user's running jobs, then arrival."""

    def __init__(self) -> None:
        self._waiters: list[Waiter] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._waiters)

    def push(
        self,
        user: str,
        model: str,
        needs_tools: bool,
        now: float,
        priority: int = 0,
        avoid: frozenset[str] = frozenset(),
    ) -> Waiter:
        """Queue a job; lower ``priority`` numbers go first (0 is user traffic)."""
        waiter = Waiter(user, model, needs_tools, priority, now, next(self._seq), avoid)
        self._waiters.append(waiter)
        return waiter

    def remove(self, waiter: Waiter) -> None:
        """Take a waiter out (served, timed out or cancelled)."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def ordered(self, running_by_user: dict[str, int]) -> list[Waiter]:
        """Waiters in release order."""
        return sorted(
            self._waiters,
            key=lambda w: (w.priority, running_by_user.get(w.user, 0), w.seq),
        )

    def snapshot(self, now: float) -> list[dict[str, object]]:
        """What the admin sees of the queue."""
        return [
            {
                "user": w.user,
                "model": w.model,
                "priority": w.priority,
                "waited_ms": round((now - w.enqueued_at) * 1000),
            }
            for w in sorted(self._waiters, key=lambda w: w.seq)
        ]
