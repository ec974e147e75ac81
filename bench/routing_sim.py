"""Routing simulation: the real deficit router against round-robin and least-loaded.

A discrete-event simulation (fake clock, one heap of events, seeded RNG, no sleeping) of a
volunteer pool serving one model. Every policy runs the *same* workload on the *same* pool with
the *same* outages, one after the other, and one JSON line compares them.

**Pool.** ``--workers`` workers, ``--gpu-fraction`` of them GPUs. Per-slot speed (tokens/s) is
lognormal around ``--gpu-speed`` / ``--cpu-speed``; GPUs have 2-8 slots, CPUs 1-2, each slot
generating at the worker's speed. Each worker fails now and then (exponential up time, mean
``--mtbf-s``; exponential down time, mean ``--mttr-s``): its running jobs are re-placed with
what they had left, like the hub's mid-stream failover, and it comes back under a new worker id,
as a reconnecting worker does. The default mix (8 % GPUs, about 5x faster per slot, about 3x the
slots) gives GPUs about 65 % of the capacity, so the default 0.62 / 0.38 target is feasible at
80 % load. In a GPU-rich pool (``--gpu-fraction 0.3``: GPUs hold about 90 % of the capacity) the
CPUs cannot do 38 % of the work above roughly 25 % load, whatever the router does;
``class_target_feasible`` in the output says which case a run is.

**Workload.** ``--jobs`` jobs from ``--users`` users. Background traffic is a Poisson process
whose rate swings sinusoidally (``--swing``) around the mean, users drawn from a Zipf law; a few
burst users (``--burst-users``) also send ``--burst-fraction`` of all jobs as near-simultaneous
bursts of Pareto size. Completion tokens are lognormal; 60 % of jobs set ``max_tokens`` (the
hub charges it at placement), the others are charged the pool's ``default_expected_tokens``.
A job's service time is its tokens over its worker's speed (with 10 % per-job noise). The mean
rate is set so the offered work is ``--load`` of the pool's capacity (sum over workers of
slots x speed, discounted for outages), so queues form at the peaks and during bursts.

**Policies.**

- ``deficit``: the real :class:`~inference.router.DeficitRouter` and
  :class:`~inference.router.FairQueue`, driven as ``inference/registry.py`` drives them: the
  eligible workers are those online with a free slot, all online workers are "connected",
  expected tokens are charged at placement and corrected to the real count on completion, the
  speed seen after the first token is observed, a departed worker is forgotten, and freed slots
  go to waiters in the fair queue's order.
- ``round_robin``: FIFO queue; the next worker in rotation that has a free slot.
- ``least_loaded``: FIFO queue; the worker with the lowest utilisation (running / slots),
  ties to the most free slots.

**Metrics.** Share errors are by tokens generated over the whole run. Per-worker targets are the
router's own :meth:`~inference.router.DeficitRouter.targets` given every worker's true speed, the
same reference for every policy; ``worker_share_misplaced`` is half the summed absolute error, the
fraction of all work done by another worker than the targets say. Utilisation is busy slot-time
over online slot-time while jobs arrive, averaged over workers (the drain after the last arrival
would otherwise count against whichever policy left one long job on a slow CPU). Waits are the
total time a job spent queued, failovers included. With ``--queue-wait-s`` a job that waits longer
is given up (the hub would fall back or answer degraded) and counted in ``jobs_degraded``; by
default waits are unbounded. ``jain_users`` is Jain's fairness index over users of each user's
*mean slowdown* (response time over the job's service time on an average slot). Not throughput:
arrivals are open-loop and every job is answered in the end, so each user's throughput equals what
they asked for under any policy and its index would only measure how unequal the users' demands
are. Slowdown normalises job size and counts both waiting (the queue's fairness) and placement
(slow workers). Because an index of equality also rewards a FIFO that makes everyone share a
burst's delay, ``p99_wait_heavy_s`` (the top senders who together send half the jobs, burst users
among them) and ``p99_wait_light_s`` (everyone else) show who pays for the heavy users' load.

Run: ``python bench/routing_sim.py`` (1,000 workers, 100,000 jobs) or ``--quick``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import Progress

from inference.pool_config import PoolConfig
from inference.protocol import Hardware
from inference.router import DeficitRouter, FairQueue, Waiter

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
DONE, DOWN, UP, TIMEOUT = range(4)
MAX_TOKENS_CHOICES = (256, 512, 1024, 2048, 4096)
DEFAULT_EXPECTED_TOKENS = PoolConfig().default_expected_tokens
RATIO_METRICS = (
    "class_share_error",
    "worker_share_mean_error",
    "p99_wait_s",
    "p99_wait_light_s",
    "jain_users",
    "mean_slowdown",
)


@dataclass(frozen=True)
class Scenario:
    """Every knob of the simulated pool and workload."""

    workers: int = 1000
    jobs: int = 100_000
    users: int = 500
    seed: int = 7
    gpu_fraction: float = 0.08
    gpu_speed: float = 35.0
    cpu_speed: float = 6.0
    speed_sigma: float = 0.35
    gpu_slots: tuple[int, int] = (2, 8)
    cpu_slots: tuple[int, int] = (1, 2)
    load: float = 0.8
    swing: float = 0.3
    burst_users: int = 5
    burst_fraction: float = 0.2
    mtbf_s: float = 7200.0
    mttr_s: float = 300.0
    queue_wait_s: float = 0.0
    tokens_median: float = 200.0
    tokens_sigma: float = 0.9


@dataclass(frozen=True)
class Pool:
    """The workers' fixed traits and their outage schedule (down at, up at, worker)."""

    hardware: list[Hardware]
    speed: FloatArray
    slots: IntArray
    outages: list[tuple[float, float, int]]

    @property
    def capacity(self) -> float:
        """Tokens/s the pool generates with every slot busy."""
        return float(np.dot(self.slots, self.speed))

    def class_capacity(self, hardware: Hardware) -> float:
        """Tokens/s of one hardware class with every slot busy."""
        mask = np.array([h == hardware for h in self.hardware])
        return float(np.dot(self.slots[mask], self.speed[mask]))


@dataclass(frozen=True)
class Workload:
    """Jobs sorted by arrival: user, completion tokens, max_tokens (0: unset), speed noise.

    ``heavy`` marks the users who, sending the most jobs, together send half of them.
    """

    arrival: FloatArray
    user: IntArray
    tokens: IntArray
    max_tokens: IntArray
    noise: FloatArray
    heavy: NDArray[np.bool_]
    horizon_s: float


def build_pool(sc: Scenario, rng: np.random.Generator) -> tuple[Pool, float]:
    """Draw the workers; return the pool (outages not yet drawn) and its availability."""
    is_gpu = rng.random(sc.workers) < sc.gpu_fraction
    median = np.where(is_gpu, sc.gpu_speed, sc.cpu_speed)
    speed = median * rng.lognormal(0.0, sc.speed_sigma, sc.workers)
    slots = np.where(
        is_gpu,
        rng.integers(sc.gpu_slots[0], sc.gpu_slots[1] + 1, sc.workers),
        rng.integers(sc.cpu_slots[0], sc.cpu_slots[1] + 1, sc.workers),
    ).astype(np.int64)
    hardware: list[Hardware] = ["gpu" if g else "cpu" for g in is_gpu]
    availability = sc.mtbf_s / (sc.mtbf_s + sc.mttr_s) if sc.mtbf_s > 0 else 1.0
    return Pool(hardware, speed, slots, []), availability


def draw_outages(
    sc: Scenario, n: int, until: float, rng: np.random.Generator
) -> list[tuple[float, float, int]]:
    """Alternate exponential up and down periods for each worker until ``until``."""
    outages: list[tuple[float, float, int]] = []
    if sc.mtbf_s <= 0:
        return outages
    for worker in range(n):
        t = float(rng.exponential(sc.mtbf_s))
        while t < until:
            back = t + float(rng.exponential(sc.mttr_s))
            outages.append((t, back, worker))
            t = back + float(rng.exponential(sc.mtbf_s))
    return outages


def build_workload(sc: Scenario, capacity: float, rng: np.random.Generator) -> Workload:
    """Draw jobs so that their work is ``sc.load`` of ``capacity`` over the horizon."""
    drawn = rng.lognormal(math.log(sc.tokens_median), sc.tokens_sigma, sc.jobs)
    tokens = np.clip(drawn, 8, 4096).astype(np.int64)
    horizon = float(tokens.sum()) / (sc.load * capacity)
    n_bursty = min(max(sc.burst_users, 0), sc.users)
    bursty = np.zeros(sc.users, dtype=np.bool_)
    bursty[rng.choice(sc.users, n_bursty, replace=False)] = True
    times, users = [], []
    burst_jobs = int(sc.jobs * sc.burst_fraction) if n_bursty else 0
    while burst_jobs > 0:
        size = min(int(20 * (1 + rng.pareto(1.5))), 2000, burst_jobs)
        start = rng.uniform(0, horizon)
        times.append(start + np.cumsum(rng.exponential(0.05, size)))
        users.append(np.full(size, rng.choice(np.flatnonzero(bursty))))
        burst_jobs -= size
    n_bg = sc.jobs - sum(len(t) for t in times)
    times.append(_swinging_arrivals(n_bg, horizon, sc.swing, rng))
    zipf = 1.0 / np.arange(1, sc.users + 1) ** 1.1
    users.append(rng.permutation(sc.users)[rng.choice(sc.users, n_bg, p=zipf / zipf.sum())])
    arrival, user = np.concatenate(times), np.concatenate(users).astype(np.int64)
    order = np.argsort(arrival, kind="stable")
    sets = rng.random(sc.jobs) < 0.6
    ladder = np.array(MAX_TOKENS_CHOICES)
    rung = np.searchsorted(ladder, tokens) + rng.integers(0, 2, sc.jobs)
    max_tokens = np.where(sets, ladder[np.minimum(rung, len(ladder) - 1)], 0).astype(np.int64)
    noise = rng.lognormal(0.0, 0.1, sc.jobs)
    user = user[order]
    return Workload(
        arrival[order], user, tokens, max_tokens, noise, _heavy(user, sc.users), horizon
    )


def _heavy(user: IntArray, n_users: int) -> NDArray[np.bool_]:
    counts = np.bincount(user, minlength=n_users)
    top = np.argsort(counts, kind="stable")[::-1]
    k = int(np.searchsorted(np.cumsum(counts[top]), counts.sum() / 2)) + 1
    heavy = np.zeros(n_users, dtype=np.bool_)
    heavy[top[:k]] = True
    return heavy


def _swinging_arrivals(
    n: int, horizon: float, swing: float, rng: np.random.Generator
) -> FloatArray:
    """``n`` arrival times of a Poisson process whose rate swings through three periods."""
    grid = np.linspace(0.0, horizon, 20_001)
    rate = 1.0 + swing * np.sin(2 * math.pi * 3 * grid / horizon)
    cumulative = np.concatenate([[0.0], np.cumsum((rate[1:] + rate[:-1]) / 2 * np.diff(grid))])
    return np.sort(np.interp(rng.uniform(0, cumulative[-1], n), cumulative, grid))


@dataclass(eq=False)
class SimWorker:
    """One worker as the router sees it (satisfies ``inference.router.Candidate``)."""

    index: int
    id: str
    name: str
    hardware: Hardware
    slots: int
    speed: float
    running: set[int] = field(default_factory=set)
    epoch: int = 0

    @property
    def free_slots(self) -> int:
        """Slots not taken by a running job."""
        return self.slots - len(self.running)


class Simulation:
    """The event loop and bookkeeping shared by every policy; subclasses place the jobs."""

    name: ClassVar[str]

    def __init__(self, sc: Scenario, pool: Pool, work: Workload) -> None:
        self.sc, self.pool, self.work = sc, pool, work
        self.now = 0.0
        n_jobs = len(work.tokens)
        self.workers = [
            SimWorker(
                i, f"w{i}", f"w{i}", pool.hardware[i], int(pool.slots[i]), float(pool.speed[i])
            )
            for i in range(len(pool.hardware))
        ]
        self.online: dict[int, SimWorker] = {w.index: w for w in self.workers}
        self.free: set[int] = set(self.online)
        self.left = [int(t) for t in work.tokens]
        self.max_tokens = [int(m) for m in work.max_tokens]
        self.expected = [0] * n_jobs
        self.attempt = [0] * n_jobs
        self.start_at = [0.0] * n_jobs
        self.on_worker = [-1] * n_jobs
        self.queued_at = [math.nan] * n_jobs
        self.wait = np.zeros(n_jobs)
        self.finish = np.full(n_jobs, math.nan)
        self.served = np.zeros(len(self.workers))
        self.busy = np.zeros(len(self.workers))
        self.window = float(work.arrival[-1])
        self.running_by_user: Counter[str] = Counter()
        self.choose_s = 0.0
        self.choices = 0
        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        for down, up, worker in pool.outages:
            self._schedule(down, DOWN, worker)
            self._schedule(up, UP, worker)

    # Policy hooks -------------------------------------------------------------------------
    def choose(self, job: int) -> SimWorker | None:
        """The worker that takes ``job`` now, or None to queue it."""
        raise NotImplementedError

    def enqueue(self, job: int) -> None:
        """Put a job that found no worker into the policy's queue."""
        raise NotImplementedError

    def dequeue(self, job: int) -> None:
        """Take a job out of the queue (placed or timed out)."""
        raise NotImplementedError

    def release_order(self) -> Iterator[int]:
        """Queued jobs in the order they get freed slots."""
        raise NotImplementedError

    def queued(self) -> int:
        """How many jobs wait."""
        raise NotImplementedError

    def started(self, worker: SimWorker, job: int) -> None:
        """A job was assigned to a worker."""

    def completed(self, worker: SimWorker, job: int, tokens: int, elapsed: float) -> None:
        """A job finished on a worker after ``elapsed`` seconds."""

    def departed(self, worker: SimWorker) -> None:
        """A worker went offline (its jobs are already re-placed)."""

    # Event loop -----------------------------------------------------------------------------
    def run(self, tick: Callable[[int], None]) -> float:
        """Simulate until every job is answered; return the wall time it took."""
        began = time.perf_counter()
        arrival, n_jobs = self.work.arrival, len(self.work.arrival)
        nxt, open_jobs, ended = 0, n_jobs, 0
        while open_jobs:
            if nxt < n_jobs and (not self._heap or arrival[nxt] <= self._heap[0][0]):
                self.now = float(arrival[nxt])
                self._place(nxt)
                nxt += 1
                continue
            self.now, _, kind, a, b = heapq.heappop(self._heap)
            if kind == DONE and b == self.attempt[a]:
                self._complete(a)
            elif kind == TIMEOUT and b == self.attempt[a] and not math.isnan(self.queued_at[a]):
                self.dequeue(a)
                self.wait[a] += self.now - self.queued_at[a]
                self.queued_at[a] = math.nan
            elif kind == DOWN:
                self._fail(self.workers[a])
                continue
            elif kind == UP:
                self._recover(self.workers[a])
                continue
            else:
                continue
            open_jobs -= 1
            ended += 1
            if ended % 1000 == 0:
                tick(1000)
        tick(ended % 1000)
        return time.perf_counter() - began

    def _schedule(self, at: float, kind: int, a: int, b: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, a, b))

    def _place(self, job: int) -> None:
        self.expected[job] = self.max_tokens[job] or DEFAULT_EXPECTED_TOKENS
        worker = self._choose_timed(job)
        if worker is not None:
            self._start(job, worker)
            return
        self.queued_at[job] = self.now
        self.enqueue(job)
        if self.sc.queue_wait_s > 0:
            self._schedule(self.now + self.sc.queue_wait_s, TIMEOUT, job, self.attempt[job])

    def _choose_timed(self, job: int) -> SimWorker | None:
        if not self.free:
            return None
        began = time.perf_counter()
        worker = self.choose(job)
        self.choose_s += time.perf_counter() - began
        self.choices += 1
        return worker

    def _start(self, job: int, worker: SimWorker) -> None:
        worker.running.add(job)
        if not worker.free_slots:
            self.free.discard(worker.index)
        self.running_by_user[str(self.work.user[job])] += 1
        self.start_at[job] = self.now
        self.on_worker[job] = worker.index
        self.started(worker, job)
        speed = worker.speed * float(self.work.noise[job])
        self._schedule(self.now + self.left[job] / speed, DONE, job, self.attempt[job])

    def _release(self) -> None:
        if not self.free or not self.queued():
            return
        for job in self.release_order():
            worker = self._choose_timed(job)
            if worker is None:
                return
            self.dequeue(job)
            self.wait[job] += self.now - self.queued_at[job]
            self.queued_at[job] = math.nan
            self._start(job, worker)

    def _vacate(self, worker: SimWorker, job: int, tokens: float) -> None:
        worker.running.discard(job)
        self.running_by_user[str(self.work.user[job])] -= 1
        self.served[worker.index] += tokens
        end = self.window
        self.busy[worker.index] += max(min(self.now, end) - min(self.start_at[job], end), 0.0)

    def _complete(self, job: int) -> None:
        worker = self.workers[self.on_worker[job]]
        tokens = self.left[job]
        self._vacate(worker, job, tokens)
        self.free.add(worker.index)
        self.completed(worker, job, tokens, self.now - self.start_at[job])
        self.left[job] = 0
        self.finish[job] = self.now
        self._release()

    def _fail(self, worker: SimWorker) -> None:
        del self.online[worker.index]
        self.free.discard(worker.index)
        orphans = sorted(worker.running)
        for job in orphans:
            speed = worker.speed * float(self.work.noise[job])
            done = min(self.left[job] - 1, int((self.now - self.start_at[job]) * speed))
            self._vacate(worker, job, done)
            self.left[job] -= done
            if self.max_tokens[job]:
                self.max_tokens[job] = max(self.max_tokens[job] - done, self.left[job])
            self.attempt[job] += 1
        self.departed(worker)
        for job in orphans:
            self._place(job)

    def _recover(self, worker: SimWorker) -> None:
        worker.epoch += 1
        worker.id = f"{worker.name}.{worker.epoch}"
        self.online[worker.index] = worker
        self.free.add(worker.index)
        self._release()


class DeficitSim(Simulation):
    """The real deficit router and fair queue, driven as the worker registry drives them."""

    name = "deficit"

    def __init__(self, sc: Scenario, pool: Pool, work: Workload) -> None:
        super().__init__(sc, pool, work)
        self.router = DeficitRouter(PoolConfig(), lambda: self.now)
        self.queue = FairQueue()
        self.waiting: dict[Waiter, int] = {}
        self.waiter_of: dict[int, Waiter] = {}

    def choose(self, job: int) -> SimWorker | None:
        """The router's pick among online workers with a free slot."""
        return self.router.pick([self.workers[i] for i in self.free], self.online.values())

    def started(self, worker: SimWorker, job: int) -> None:
        """Charge the job's expected tokens, as the registry does at placement."""
        self.router.charge(worker.id, self.expected[job])

    def completed(self, worker: SimWorker, job: int, tokens: int, elapsed: float) -> None:
        """Correct the charge to the real count and observe the speed after the first token."""
        self.router.charge(worker.id, tokens - self.expected[job])
        since_first = elapsed - 1.0 / (worker.speed * float(self.work.noise[job]))
        if tokens > 1 and since_first > 0:
            self.router.observe_speed(worker.id, (tokens - 1) / since_first)

    def departed(self, worker: SimWorker) -> None:
        """Forget the worker's statistics, as the registry does when a link goes away."""
        self.router.forget(worker.id)

    def enqueue(self, job: int) -> None:
        """Queue the job in the fair queue."""
        waiter = self.queue.push(str(self.work.user[job]), "sim", False, self.now)
        self.waiting[waiter] = job
        self.waiter_of[job] = waiter

    def dequeue(self, job: int) -> None:
        """Take the job's waiter out of the fair queue."""
        waiter = self.waiter_of.pop(job)
        del self.waiting[waiter]
        self.queue.remove(waiter)

    def release_order(self) -> Iterator[int]:
        """The fair queue's order, computed once per release as the registry does."""
        for waiter in self.queue.ordered(self.running_by_user):
            yield self.waiting[waiter]

    def queued(self) -> int:
        """Jobs in the fair queue."""
        return len(self.queue)


class FifoSim(Simulation):
    """Baselines: jobs that find no worker wait first come, first served."""

    def __init__(self, sc: Scenario, pool: Pool, work: Workload) -> None:
        super().__init__(sc, pool, work)
        self.fifo: deque[int] = deque()
        self.in_fifo: set[int] = set()

    def enqueue(self, job: int) -> None:
        """Append the job to the queue."""
        self.fifo.append(job)
        self.in_fifo.add(job)

    def dequeue(self, job: int) -> None:
        """Take the job out (lazily when it is not at the head)."""
        self.in_fifo.discard(job)
        if self.fifo and self.fifo[0] == job:
            self.fifo.popleft()

    def release_order(self) -> Iterator[int]:
        """Oldest first."""
        while self.fifo:
            if self.fifo[0] in self.in_fifo:
                yield self.fifo[0]
            else:
                self.fifo.popleft()

    def queued(self) -> int:
        """Jobs in the queue."""
        return len(self.in_fifo)


class RoundRobinSim(FifoSim):
    """The next worker in rotation that has a free slot."""

    name = "round_robin"
    _next = 0

    def choose(self, job: int) -> SimWorker | None:
        """Scan the rotation from where the last pick stopped."""
        n = len(self.workers)
        for k in range(n):
            i = (self._next + k) % n
            if i in self.free:
                self._next = i + 1
                return self.workers[i]
        return None


class LeastLoadedSim(FifoSim):
    """The worker with the lowest utilisation, ties to the most free slots."""

    name = "least_loaded"

    def choose(self, job: int) -> SimWorker | None:
        """Scan the workers with a free slot."""
        return min(
            (self.workers[i] for i in self.free),
            key=lambda w: (len(w.running) / w.slots, -w.free_slots),
            default=None,
        )


POLICIES: dict[str, type[Simulation]] = {
    cls.name: cls for cls in (DeficitSim, RoundRobinSim, LeastLoadedSim)
}


def reference_targets(pool: Pool) -> FloatArray:
    """Each worker's target share per the router's own rule, given every worker's true speed."""
    router = DeficitRouter(PoolConfig(), lambda: 0.0)
    workers = [
        SimWorker(i, f"w{i}", f"w{i}", pool.hardware[i], int(pool.slots[i]), float(pool.speed[i]))
        for i in range(len(pool.hardware))
    ]
    for w in workers:
        router.observe_speed(w.id, w.speed)
    targets = router.targets(workers)
    return np.array([targets[w.id] for w in workers])


def jain(values: FloatArray) -> float:
    """Jain's fairness index: 1 when all values are equal, 1/n when one value takes all."""
    return float(values.sum() ** 2 / (len(values) * (values**2).sum())) if len(values) else 1.0


def summarise(sim: Simulation, wall_s: float, targets: FloatArray) -> dict[str, float | int]:
    """Every metric of one finished run."""
    work, pool = sim.work, sim.pool
    done = ~np.isnan(sim.finish)
    share = sim.served / sim.served.sum()
    gpu = np.array([h == "gpu" for h in pool.hardware])
    class_target = PoolConfig().class_shares
    gpu_share = float(share[gpu].sum())
    class_error = max(
        abs(gpu_share - class_target.get("gpu", 0.0)),
        abs(1.0 - gpu_share - class_target.get("cpu", 0.0)),
    )
    worker_error = np.abs(share - targets)
    window = float(work.arrival[-1])
    down = np.zeros(len(pool.hardware))
    for start, end, worker in pool.outages:
        down[worker] += max(min(end, window) - min(start, window), 0.0)
    util = sim.busy / (pool.slots * np.maximum(window - down, 1e-9))
    ref_speed = pool.capacity / float(pool.slots.sum())
    slowdown = (sim.finish[done] - work.arrival[done]) / (work.tokens[done] / ref_speed)
    users = work.user[done]
    per_user = np.bincount(users, slowdown) / np.maximum(np.bincount(users), 1)
    seen = np.bincount(users) > 0
    heavy = work.heavy[work.user]
    p50, p99 = np.percentile(sim.wait, [50, 99])
    return {
        "jobs_completed": int(done.sum()),
        "jobs_degraded": int((~done).sum()),
        "class_share_gpu": round(gpu_share, 4),
        "class_share_error": round(class_error, 4),
        "worker_share_max_error": float(f"{worker_error.max():.3g}"),
        "worker_share_mean_error": float(f"{worker_error.mean():.3g}"),
        "worker_share_misplaced": round(float(worker_error.sum()) / 2, 4),
        "jain_users": round(jain(per_user[seen]), 4),
        "mean_slowdown": round(float(slowdown.mean()), 3),
        "mean_wait_s": round(float(sim.wait.mean()), 3),
        "p50_wait_s": round(float(p50), 3),
        "p99_wait_s": round(float(p99), 3),
        "p99_wait_light_s": round(float(np.percentile(sim.wait[~heavy], 99)), 3),
        "p99_wait_heavy_s": round(float(np.percentile(sim.wait[heavy], 99)), 3),
        "queued_fraction": round(float((sim.wait > 0).mean()), 4),
        "utilisation": round(float(util.mean()), 4),
        "utilisation_gpu": round(float(util[gpu].mean()), 4) if gpu.any() else 0.0,
        "utilisation_cpu": round(float(util[~gpu].mean()), 4) if (~gpu).any() else 0.0,
        "makespan_s": round(float(np.nanmax(sim.finish)), 1),
        "choose_us": round(sim.choose_s / sim.choices * 1e6, 1) if sim.choices else 0.0,
        "wall_s": round(wall_s, 2),
    }


def parse_args(argv: list[str] | None = None) -> tuple[Scenario, list[str]]:
    """The scenario and policies asked for on the command line."""
    base = Scenario()
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="100 workers, 10,000 jobs, 100 users")
    p.add_argument("--workers", type=int)
    p.add_argument("--jobs", type=int)
    p.add_argument("--users", type=int)
    p.add_argument("--seed", type=int, default=base.seed)
    p.add_argument("--gpu-fraction", type=float, default=base.gpu_fraction)
    p.add_argument("--gpu-speed", type=float, default=base.gpu_speed, help="median tokens/s")
    p.add_argument("--cpu-speed", type=float, default=base.cpu_speed, help="median tokens/s")
    p.add_argument("--load", type=float, default=base.load, help="offered work / capacity")
    p.add_argument("--swing", type=float, default=base.swing, help="relative rate swing")
    p.add_argument("--burst-users", type=int, help="users who send bursts (users // 100)")
    p.add_argument("--burst-fraction", type=float, default=base.burst_fraction)
    p.add_argument("--mtbf-s", type=float, default=base.mtbf_s, help="0: no failures")
    p.add_argument("--mttr-s", type=float, default=base.mttr_s)
    p.add_argument("--queue-wait-s", type=float, default=base.queue_wait_s, help="0: unbounded")
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated")
    a = p.parse_args(argv)
    workers, jobs, users = (100, 10_000, 100) if a.quick else (base.workers, base.jobs, base.users)
    users = a.users or users
    sc = Scenario(
        workers=a.workers or workers,
        jobs=a.jobs or jobs,
        users=users,
        seed=a.seed,
        gpu_fraction=a.gpu_fraction,
        gpu_speed=a.gpu_speed,
        cpu_speed=a.cpu_speed,
        load=a.load,
        swing=a.swing,
        burst_users=a.burst_users if a.burst_users is not None else max(users // 100, 1),
        burst_fraction=a.burst_fraction,
        mtbf_s=a.mtbf_s,
        mttr_s=a.mttr_s,
        queue_wait_s=a.queue_wait_s,
    )
    policies = [name.strip() for name in a.policies.split(",") if name.strip()]
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown:
        p.error(f"unknown policies {unknown}; known: {sorted(POLICIES)}")
    return sc, policies


def ratios(results: dict[str, dict[str, float | int]]) -> dict[str, float]:
    """Deficit's metrics over each baseline's (below 1: deficit has less of it)."""
    out: dict[str, float] = {}
    if "deficit" not in results:
        return out
    for base in ("round_robin", "least_loaded"):
        if base not in results:
            continue
        for metric in RATIO_METRICS:
            ours, theirs = float(results["deficit"][metric]), float(results[base][metric])
            out[f"{metric}_deficit_over_{base}"] = round(ours / theirs, 4) if theirs else math.inf
    return out


def main(argv: list[str] | None = None) -> None:
    """Build one pool and workload, run every policy on it, print one JSON line."""
    began = time.perf_counter()
    sc, policies = parse_args(argv)
    rng = np.random.default_rng(sc.seed)
    pool, availability = build_pool(sc, rng)
    work = build_workload(sc, pool.capacity * availability, rng)
    pool = replace(pool, outages=draw_outages(sc, sc.workers, 2 * work.horizon_s, rng))
    targets = reference_targets(pool)
    gpu_capacity = pool.class_capacity("gpu") / pool.capacity
    feasible = all(
        capacity >= share * sc.load
        for capacity, share in (
            (gpu_capacity, PoolConfig().class_shares.get("gpu", 0.0)),
            (1 - gpu_capacity, PoolConfig().class_shares.get("cpu", 0.0)),
        )
    )
    results: dict[str, dict[str, float | int]] = {}
    with Progress(console=Console(stderr=True)) as progress:
        for name in policies:
            task = progress.add_task(name, total=sc.jobs)
            sim = POLICIES[name](sc, pool, work)
            wall = sim.run(partial(progress.advance, task))
            results[name] = summarise(sim, wall, targets)
    line = {
        "bench": "routing_sim",
        "workers": sc.workers,
        "gpu_workers": sum(h == "gpu" for h in pool.hardware),
        "jobs": sc.jobs,
        "users": sc.users,
        "burst_users": sc.burst_users,
        "heavy_users": int(work.heavy.sum()),
        "seed": sc.seed,
        "load": sc.load,
        "capacity_tok_s": round(pool.capacity, 1),
        "gpu_capacity_share": round(gpu_capacity, 4),
        "class_target_feasible": feasible,
        "outages": len([o for o in pool.outages if o[0] < work.horizon_s]),
        "horizon_s": round(work.horizon_s, 1),
        "policies": results,
        "ratios": ratios(results),
        "wall_s": round(time.perf_counter() - began, 2),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
