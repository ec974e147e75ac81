"""Deficit scoring and queue fairness, table-driven, on a fake clock."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from inference.pool_config import PoolConfig
from inference.protocol import Hardware
from inference.router import DeficitRouter, FairQueue


@dataclass
class FakeWorker:
    id: str
    name: str
    hardware: Hardware
    free_slots: int = 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(router: DeficitRouter, workers: list[FakeWorker], jobs: int) -> Counter[str]:
    """Route ``jobs`` equal jobs; every worker is always free."""
    served: Counter[str] = Counter()
    for _ in range(jobs):
        chosen = router.pick(workers, workers)
        router.charge(chosen.id, 100)
        served[chosen.id] += 1
    return served


@pytest.mark.parametrize(
    ("hardware", "shares", "expected"),
    [
        (["gpu", "cpu"], {"gpu": 0.62, "cpu": 0.38}, {"w0": 0.62, "w1": 0.38}),
        (["gpu", "gpu", "cpu"], {"gpu": 0.62, "cpu": 0.38}, {"w0": 0.31, "w1": 0.31, "w2": 0.38}),
        (["cpu", "cpu"], {"gpu": 0.62, "cpu": 0.38}, {"w0": 0.5, "w1": 0.5}),
        (["gpu", "cpu"], {"gpu": 0.9, "cpu": 0.1}, {"w0": 0.9, "w1": 0.1}),
    ],
)
def test_served_shares_track_the_class_targets(
    hardware: list[Hardware], shares: dict[Hardware, float], expected: dict[str, float]
) -> None:
    workers = [FakeWorker(f"w{i}", f"n{i}", h) for i, h in enumerate(hardware)]
    router = DeficitRouter(PoolConfig(class_shares=shares), FakeClock())
    served = simulate(router, workers, 1000)
    for worker_id, share in expected.items():
        assert served[worker_id] / 1000 == pytest.approx(share, abs=0.01)


def test_a_faster_worker_gets_a_larger_share_within_its_class() -> None:
    workers = [FakeWorker("fast", "fast", "cpu"), FakeWorker("slow", "slow", "cpu")]
    router = DeficitRouter(PoolConfig(), FakeClock())
    router.observe_speed("fast", 90.0)
    router.observe_speed("slow", 30.0)
    served = simulate(router, workers, 800)
    assert served["fast"] / 800 == pytest.approx(0.75, abs=0.01)


def test_a_fixed_worker_share_is_honoured() -> None:
    workers = [FakeWorker("a", "pinned", "cpu"), FakeWorker("b", "other", "cpu")]
    router = DeficitRouter(PoolConfig(worker_shares={"pinned": 0.2}), FakeClock())
    served = simulate(router, workers, 1000)
    assert served["a"] / 1000 == pytest.approx(0.2, abs=0.01)


def test_only_eligible_workers_are_picked() -> None:
    gpu, cpu = FakeWorker("g", "g", "gpu"), FakeWorker("c", "c", "cpu")
    router = DeficitRouter(PoolConfig(), FakeClock())
    assert router.pick([cpu], [gpu, cpu]) is cpu


def test_old_work_decays_so_a_returning_worker_is_not_starved() -> None:
    clock = FakeClock()
    router = DeficitRouter(PoolConfig(), clock, half_life_s=60)
    a, b = FakeWorker("a", "a", "cpu"), FakeWorker("b", "b", "cpu")
    router.charge("a", 10_000)
    clock.now = 3600  # sixty half-lives later the old work is negligible
    router.charge("b", 100)
    assert router.served_share("a") < 0.01
    assert router.pick([a, b], [a, b]) is a


def test_a_correction_after_the_job_replaces_the_estimate() -> None:
    router = DeficitRouter(PoolConfig(), FakeClock())
    router.charge("a", 256)
    router.charge("b", 256)
    router.charge("a", 10 - 256)
    assert router.served_share("a") == pytest.approx(10 / 266)


def test_a_burst_from_one_user_does_not_starve_another() -> None:
    queue = FairQueue()
    for _ in range(50):
        queue.push("greedy", "m", needs_tools=False, now=0.0)
    late = queue.push("modest", "m", needs_tools=False, now=1.0)
    order = queue.ordered({"greedy": 3})
    assert order[0] is late


@pytest.mark.parametrize(
    ("entries", "running", "first"),
    [
        ([("a", 0), ("b", 0)], {}, "a"),
        ([("a", 1), ("b", 0)], {}, "b"),
        ([("a", 0), ("b", 0)], {"a": 2}, "b"),
        ([("a", 0), ("b", 5)], {"a": 2}, "a"),
    ],
)
def test_queue_order_is_priority_then_running_jobs_then_arrival(
    entries: list[tuple[str, int]], running: dict[str, int], first: str
) -> None:
    queue = FairQueue()
    for user, priority in entries:
        queue.push(user, "m", needs_tools=False, now=0.0, priority=priority)
    assert queue.ordered(running)[0].user == first


def test_pick_refuses_an_empty_choice() -> None:
    with pytest.raises(ValueError, match="eligible"):
        DeficitRouter(PoolConfig(), FakeClock()).pick([], [])


def test_the_class_share_holds_when_a_worker_cannot_take_its_own_share() -> None:
    fast_gpu = FakeWorker("fast", "fast", "gpu")
    slow_gpu = FakeWorker("slow", "slow", "gpu")
    cpu = FakeWorker("cpu", "cpu", "cpu")
    everyone = [fast_gpu, slow_gpu, cpu]
    router = DeficitRouter(PoolConfig(), FakeClock())
    router.observe_speed("fast", 100.0)
    router.observe_speed("slow", 10.0)
    router.observe_speed("cpu", 10.0)
    served: Counter[str] = Counter()
    for turn in range(3000):
        # The fast GPU is busy two picks out of three: it cannot reach its own target.
        eligible = everyone if turn % 3 == 0 else [slow_gpu, cpu]
        chosen = router.pick(eligible, everyone)
        router.charge(chosen.id, 100)
        served[chosen.hardware] += 1
    assert served["gpu"] / 3000 == pytest.approx(0.62, abs=0.02)
