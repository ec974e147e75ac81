"""The hybrid logical clock: monotonic, ahead of every HLC it accepted, and wary of the future."""

from __future__ import annotations

import pytest

from federation.errors import InvalidFederationInput
from federation.hlc import HybridClock, pack, physical_ms


class FakeWall:
    """A wall clock the test sets, in milliseconds."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_ticks_follow_the_wall_clock_and_never_run_backwards() -> None:
    wall = FakeWall(1_000_000)
    clock = HybridClock(clock=wall)
    first = clock.tick()
    assert first == pack(1_000_000) and physical_ms(first) == 1_000_000
    second = clock.tick()
    assert second == first + 1  # same millisecond: the logical counter moves
    wall.now = 900_000  # the wall clock jumps back
    assert clock.tick() > second
    wall.now = 2_000_000
    assert clock.tick() == pack(2_000_000)


def test_a_local_change_after_a_received_one_orders_after_it() -> None:
    wall = FakeWall(1_000_000)
    clock = HybridClock(clock=wall)
    received = pack(1_030_000, 7)  # 30 s ahead: accepted
    clock.observe(received)
    assert clock.tick() > received


def test_an_hlc_more_than_sixty_seconds_ahead_is_refused_and_not_observed() -> None:
    wall = FakeWall(1_000_000)
    clock = HybridClock(clock=wall)
    with pytest.raises(InvalidFederationInput) as refused:
        clock.observe(pack(1_060_001))
    assert refused.value.code == "hlc_in_future" and "60.001 s ahead" in refused.value.message
    assert clock.last == 0
    clock.observe(pack(1_060_000))  # exactly 60 s: still accepted


@pytest.mark.parametrize("hlc", [0, -1, 1 << 63])
def test_an_hlc_out_of_range_is_refused(hlc: int) -> None:
    with pytest.raises(InvalidFederationInput, match="out of range"):
        HybridClock(clock=FakeWall(1)).check(hlc)
