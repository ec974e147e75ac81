"""The fair queue's order across replicas: running jobs summed, heads compared, slots held."""

from __future__ import annotations

from typing import Any

import pytest

from hub.replica_queue import HOLD_S, PoolQueue
from hub.replica_view import CapacityView
from inference.router import FairQueue

MODEL = "stub-model"
OWN, B, C = "a" * 32, "b" * 32, "c" * 32
WALL = 1_000_000.0


class Clocks:
    def __init__(self) -> None:
        self.now = 0.0

    def view(self) -> CapacityView:
        return CapacityView(OWN, stale_s=3.0, clock=lambda: self.now, wall=lambda: WALL)

    def queue(self, view: CapacityView) -> PoolQueue:
        return PoolQueue(view, clock=lambda: self.now, wall=lambda: WALL + self.now)


def head(user: str, arrival: float, priority: int = 0) -> dict[str, Any]:
    return {"model": MODEL, "priority": priority, "user": user, "arrival": arrival}


def test_running_jobs_are_summed_over_the_live_replicas_as_they_state_them() -> None:
    clocks = Clocks()
    view = clocks.view()
    view.apply({"replica": B, "workers": [], "running": {"uma": 3, "lee": 1}})
    view.apply({"replica": C, "workers": [], "running": {"uma": 2}})
    assert view.running() == {"uma": 5, "lee": 1}
    view.apply({"replica": B, "full": False, "workers": [], "running": {"lee": 0, "uma": 1}})
    assert view.running() == {"uma": 3}
    view.apply({"replica": C, "full": True, "workers": []})  # a full list without uma
    assert view.running() == {"uma": 1}
    clocks.now = 10.0  # B falls silent
    assert view.running() == {}


@pytest.mark.parametrize(
    "bad",
    [
        {"running": {"uma": -1}},
        {"running": {"uma": 10**9}},
        {"running": {"u" * 201: 1}},
        {"heads": [head("uma", float("nan"))]},
        {"heads": [head("uma", WALL, priority=10**9)]},
        {"heads": [{"model": "", "priority": 0, "user": "uma", "arrival": WALL}]},
    ],
)
def test_garbage_in_the_queue_statements_refuses_the_snapshot(bad: dict[str, Any]) -> None:
    view = Clocks().view()
    view.apply({"replica": B, "workers": []} | bad)
    assert view.refused == 1 and view.live() == []


def test_a_slot_is_held_for_a_better_waiter_elsewhere_then_lapses_for_it() -> None:
    clocks = Clocks()
    view = clocks.view()
    pool = clocks.queue(view)
    local = FairQueue().push("lee", MODEL, False, now=0.0)
    view.apply({"replica": B, "workers": [], "running": {"uma": 4}, "heads": [head("uma", 5.0)]})
    running = {"uma": 4, "lee": 0}
    mine = pool.key(local, running, waited_s=1.0)  # lee waited since WALL - 1
    assert not pool.defer(
        MODEL, mine, running, here=True
    )  # uma's head runs four jobs: lee goes first
    view.apply({"replica": C, "workers": [], "heads": [head("ann", WALL - 60)]})
    # ann waits longer, with nothing running: this replica leaves other replicas' slots to her,
    # and holds its own only once one is free (the hold's clock starts then).
    assert pool.defer(MODEL, mine, running, here=False) and not pool.holding(MODEL)
    clocks.now += 2 * HOLD_S
    assert pool.defer(MODEL, mine, running, here=True)
    assert pool.holding(MODEL) and not pool.holding("other-model")
    clocks.now += HOLD_S / 2
    view.apply({"replica": B, "full": False, "workers": []})
    view.apply({"replica": C, "full": False, "workers": []})
    assert pool.defer(MODEL, mine, running, here=True) and not pool.lapsed()
    clocks.now += HOLD_S  # ann never took the slot: the hold lapses, once
    assert not pool.defer(MODEL, mine, running, here=True) and not pool.holding(MODEL)
    assert pool.lapsed() and not pool.lapsed()
    view.apply({"replica": C, "full": False, "workers": [], "heads": [head("bob", WALL - 30)]})
    assert pool.defer(
        MODEL, mine, running, here=True
    )  # another first waiter there: held for it anew
    view.apply({"replica": C, "full": False, "workers": [], "heads": []})
    assert not pool.defer(MODEL, mine, running, here=True) and not pool.holding(MODEL)
