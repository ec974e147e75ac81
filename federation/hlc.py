"""Hybrid logical clocks (Kulkarni et al., 2014) for the versions of ``fed:`` notes.

An HLC is one comparable integer: physical Unix milliseconds shifted left 16 bits, plus a logical
counter. It never runs backwards, stays close to the wall clock, and is always above every HLC this
pool has accepted, so a local edit made after receiving a version orders after it on every pool.
A received HLC more than ``max_drift_ms`` (60 s) ahead of this pool's wall clock is refused: one
pool with a bad clock must not drag every other pool's clock, and win every conflict, with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from federation.errors import InvalidFederationInput

LOGICAL_BITS = 16
MAX_DRIFT_MS = 60_000
# The largest HLC a bigint column holds.
MAX_HLC = (1 << 63) - 1


def wall_ms() -> int:
    """The wall clock in Unix milliseconds."""
    return time.time_ns() // 1_000_000


def physical_ms(hlc: int) -> int:
    """The physical part of an HLC, in Unix milliseconds."""
    return hlc >> LOGICAL_BITS


def pack(millis: int, logical: int = 0) -> int:
    """The HLC of ``millis`` with a logical counter (below 2**16)."""
    return (millis << LOGICAL_BITS) | logical


class HybridClock:
    """This pool's HLC: :meth:`tick` for a local change, :meth:`observe` for a received one."""

    def __init__(
        self,
        last: int = 0,
        *,
        clock: Callable[[], int] = wall_ms,
        max_drift_ms: int = MAX_DRIFT_MS,
    ) -> None:
        self.last = last
        self._clock = clock
        self._max_drift_ms = max_drift_ms

    def tick(self) -> int:
        """A new HLC for a local change: above the last one, at least the wall clock."""
        self.last = max(self.last + 1, pack(self._clock()))
        return self.last

    def check(self, hlc: int) -> None:
        """Refuse an HLC that is not positive or lies too far in the future."""
        if not 0 < hlc <= MAX_HLC:
            raise InvalidFederationInput(f"HLC {hlc} is out of range.", param="hlc")
        ahead = physical_ms(hlc) - self._clock()
        if ahead > self._max_drift_ms:
            raise InvalidFederationInput(
                f"HLC {hlc} is {ahead / 1000:.3f} s ahead of this pool's clock (at most "
                f"{self._max_drift_ms / 1000:.0f} s): the sending pool's clock is wrong.",
                code="hlc_in_future",
                param="hlc",
            )

    def observe(self, hlc: int) -> None:
        """Move past a received HLC (checked with :meth:`check` first)."""
        self.check(hlc)
        self.last = max(self.last, hlc)
