"""The other replicas' workers as the router weighs them: stated, decayed, checked, pool-wide."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from hub.observability import Metrics
from hub.replica_standings import RemoteStandings
from hub.replica_view import MAX_SKEW_S, CapacityView, Choice
from inference.pool_config import PoolConfig
from inference.protocol import Hardware
from inference.router import Candidate, DeficitRouter

MODEL = "stub-model"
OWN, B, C = "a" * 32, "b" * 32, "c" * 32
WALL = 1_000_000.0
HALF_LIFE_S = 600.0


def worker(worker_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": worker_id,
        "name": worker_id,
        "hardware": "cpu",
        "slots": 4,
        "free": 2,
        "trust": 2,
        "models": [{"id": MODEL, "context_size": 2048, "supports_tools": False}],
    } | fields


@dataclass
class Clocks:
    now: float = 0.0
    wall: float = WALL

    def view(self) -> CapacityView:
        return CapacityView(
            OWN,
            stale_s=3.0,
            clock=lambda: self.now,
            half_life_s=HALF_LIFE_S,
            wall=lambda: self.wall,
        )


def test_served_work_is_decayed_from_its_stated_time_then_by_the_receiver() -> None:
    clocks = Clocks()
    view = clocks.view()
    view.apply({"replica": B, "at": WALL - 60, "workers": [worker("x", served=1000.0)]})
    view.apply({"replica": C, "at": WALL + 5, "workers": [worker("y", served=500.0, speed=20.0)]})
    skewed = 1000.0 * 2 ** (-MAX_SKEW_S / HALF_LIFE_S)  # 60 s old: clamped to MAX_SKEW_S
    assert view.standings.served("x") == pytest.approx(skewed)
    assert view.standings.served("y") == pytest.approx(500.0)  # from the future: read as now
    assert view.standings.total_served() == pytest.approx(skewed + 500.0)
    assert (
        view.standings.speed("x"),
        view.standings.speed("y"),
        view.standings.speed("nobody"),
    ) == (None, 20.0, None)
    clocks.now += 1.0  # both replicas beat again before they go stale
    view.apply({"replica": B, "full": False, "workers": []})
    view.apply({"replica": C, "full": False, "workers": []})
    clocks.now += HALF_LIFE_S - 1.0
    view.apply({"replica": B, "full": False, "workers": []})
    view.apply({"replica": C, "full": False, "workers": []})
    assert view.standings.served("y") == pytest.approx(250.0)
    assert view.standings.total_served() == pytest.approx(skewed / 2 + 250.0)
    view.apply({"replica": B, "full": False, "workers": [], "gone": ["x"]})
    assert view.standings.served("x") == 0.0
    assert view.standings.total_served() == pytest.approx(250.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"replica": B, "workers": [worker("x", speed=-1.0)]},
        {"replica": B, "workers": [worker("x", speed=float("inf"))]},
        {"replica": B, "workers": [worker("x", served=float("nan"))]},
        {"replica": B, "workers": [worker("x", served=1e20)]},
        {"replica": B, "workers": [worker("x", served=-5.0)]},
        {"replica": B, "at": "yesterday", "workers": [worker("x")]},
        {"replica": "not an id", "workers": [worker("x")]},
    ],
)
def test_a_snapshot_with_garbage_is_refused_logged_and_counted(
    bad: dict[str, Any], captured_logs: list[Any]
) -> None:
    view = Clocks().view()
    view.apply(bad)
    assert view.refused == 1
    assert view.live() == [] and view.standings.total_served() == 0.0
    assert [e["event"] for e in captured_logs] == ["replica_capacity_unreadable"]


def test_a_worker_claimed_by_a_later_replica_leaves_the_first_ones_list() -> None:
    view = Clocks().view()
    view.apply({"replica": B, "at": WALL, "workers": [worker("x", served=900.0)]})
    view.apply({"replica": C, "at": WALL, "workers": [worker("x", served=10.0)]})  # it moved
    assert view.standings.classes(())["cpu"].unmeasured == 1  # counted once
    assert view.standings.served("x") == pytest.approx(10.0)
    assert view.standings.total_served() == pytest.approx(10.0)
    assert [c.replica for c in _candidates(view)] == [C]
    view.apply({"replica": B, "full": True, "workers": []})  # B's next full list lacks it
    assert view.standings.served("x") == pytest.approx(10.0)


def _candidates(view: CapacityView, avoid: frozenset[str] = frozenset()) -> list[Choice]:
    return view.candidates(MODEL, needs_tools=False, needs_context=0, min_trust=1, avoid=avoid)


def test_a_slot_taken_here_counts_its_work_until_the_workers_replica_speaks_again() -> None:
    view = Clocks().view()
    view.apply({"replica": B, "at": WALL, "workers": [worker("x", free=2, served=100.0)]})
    (choice,) = _candidates(view)
    view.take(choice, 50)
    (again,) = _candidates(view)
    assert again.free_slots == 1 and view.standings.served("x") == pytest.approx(150.0)
    view.take(again, 50)
    assert _candidates(view) == []  # no free slot left until B says otherwise
    assert view.standings.total_served() == pytest.approx(200.0)
    view.apply({"replica": B, "full": False, "workers": [worker("x", free=1, served=160.0)]})
    assert view.standings.served("x") == pytest.approx(160.0) and len(_candidates(view)) == 1


@dataclass(frozen=True)
class Local:
    id: str
    name: str
    hardware: Hardware
    free_slots: int = 1


def test_the_router_weighs_local_and_remote_workers_against_the_pools_served_total() -> None:
    clocks = Clocks()
    view = clocks.view()
    router = DeficitRouter(PoolConfig(), clock=lambda: clocks.now)
    local = Local("l", "l", "cpu")
    router.charge("l", 300)
    view.apply(
        {
            "replica": B,
            "at": WALL,
            "workers": [worker("busy", served=600.0), worker("idle", served=100.0)],
        }
    )
    eligible: list[Candidate] = [local, *_candidates(view)]
    # Pool-wide: 1,000 tokens served, a third each as target: "idle" lags the most.
    assert router.pick(eligible, [local], view.standings).id == "idle"
    assert router.served_share("l", view.standings) == pytest.approx(0.3)
    # One replica's own view (the old rule) would see only "l", with all of its local work.
    assert router.served_share("l") == 1.0


def test_pool_wide_picks_bring_every_worker_to_its_target_share() -> None:
    """Jobs placed from one replica over its workers and another's: shares meet the targets."""
    clocks = Clocks()
    view = clocks.view()
    router = DeficitRouter(PoolConfig(), clock=lambda: clocks.now)
    locals_: list[Candidate] = [Local("l-cpu", "l-cpu", "cpu"), Local("l-gpu", "l-gpu", "gpu")]
    view.apply(
        {
            "replica": B,
            "at": WALL,
            "workers": [worker("r-cpu", free=1000), worker("r-gpu", hardware="gpu", free=1000)],
        }
    )
    for _ in range(400):
        chosen = router.pick([*locals_, *_candidates(view)], locals_, view.standings)
        if isinstance(chosen, Choice):
            view.take(chosen, 10)
        else:
            router.charge(chosen.id, 10)
    names = ("l-cpu", "l-gpu", "r-cpu", "r-gpu")
    shares = {w: router.served_share(w, view.standings) for w in names}
    targets = {str(hardware): share for hardware, share in PoolConfig().class_shares.items()}
    for name, share in shares.items():
        assert share == pytest.approx(targets[name[2:]] / 2, abs=0.01)


@pytest.mark.parametrize("seed", range(40))
def test_the_pool_wide_pick_from_class_totals_is_the_pick_over_every_worker(seed: int) -> None:
    """One router knowing every worker, and one knowing its own plus the others' totals, agree."""
    rng = random.Random(seed)
    config = PoolConfig(worker_shares={"w-0": 0.05, "w-1": 0.1} if seed % 3 == 0 else {})
    everything = DeficitRouter(config, clock=lambda: 0.0)
    here = DeficitRouter(config, clock=lambda: 0.0)
    there = RemoteStandings(clock=lambda: 0.0)
    pool: list[Candidate] = []
    local: list[Candidate] = []
    for index in range(rng.randint(2, 30)):
        hardware: Hardware = rng.choice(["cpu", "gpu"])
        worker = Local(f"w-{index}", f"w-{index}", hardware, rng.randint(0, 2))
        served = rng.uniform(0, 1000) if rng.random() < 0.8 else 0.0
        speed = rng.uniform(1, 60) if rng.random() < 0.7 else None
        pool.append(worker)
        mine = rng.random() < 0.4
        for router in (everything, here) if mine else (everything,):
            router.charge(worker.id, served)
            if speed is not None:
                router.observe_speed(worker.id, speed)
        if mine:
            local.append(worker)
        else:
            there.put(worker.id, worker.name, hardware, speed, served)
    eligible = [w for w in pool if w.free_slots > 0]
    if len(eligible) < 2:
        return
    assert here.pick(eligible, local, there).id == everything.pick(eligible, pool).id


def test_standings_move_their_origin_before_the_growth_factor_could_overflow() -> None:
    now = [0.0]
    standings = RemoteStandings(clock=lambda: now[0], half_life_s=1.0)
    standings.put("x", "x", "cpu", 10.0, 100.0)
    now[0] = 1000.0  # a thousand half-lives: 2**1000 would be near a float's end
    standings.put("y", "y", "cpu", None, 300.0)
    assert standings.served("y") == pytest.approx(300.0)
    assert standings.total_served() == pytest.approx(300.0)
    standings.charge("x", 100.0)
    assert standings.served("x") == pytest.approx(100.0)
    standings.drop("y")
    totals = standings.classes(())["cpu"]
    assert list(totals.speeds) == [10.0] and totals.unmeasured == 0
    assert totals.served == pytest.approx(100.0)


def test_a_silent_replicas_workers_leave_the_standings_and_the_pools_totals() -> None:
    clocks = Clocks()
    view = clocks.view()
    view.apply({"replica": B, "at": WALL, "workers": [worker("x", served=100.0, speed=10.0)]})
    view.apply({"replica": C, "at": WALL, "workers": [worker("y", served=50.0)]})
    assert view.standings.total_served() == pytest.approx(150.0)
    clocks.now = 2.0
    view.apply({"replica": C, "full": False, "workers": []})  # C beats, B has died
    clocks.now = 4.0
    assert view.live() == [C]
    assert view.standings.total_served() == pytest.approx(50.0 * 2 ** (-4.0 / HALF_LIFE_S))
    assert view.standings.speed("x") is None and view.standings.served("x") == 0.0
    cpu = view.standings.classes(())["cpu"]
    assert list(cpu.speeds) == [] and cpu.unmeasured == 1


def test_refused_and_applied_snapshots_are_exported_as_counters() -> None:
    view, metrics = Clocks().view(), Metrics()
    assert metrics.registry.get_sample_value("iamine_replica_snapshots_refused_total") is None
    metrics.watch_replicas(view)
    view.apply({"replica": "b" * 32, "workers": []})
    view.apply({"replica": "not an id", "workers": []})
    view.apply({"replica": "c" * 32, "workers": [{"id": "w", "slots": -1}]})
    assert metrics.registry.get_sample_value("iamine_replica_snapshots_applied_total") == 1
    assert metrics.registry.get_sample_value("iamine_replica_snapshots_refused_total") == 2
