"""The trial chat's quotas: so many messages per client address and per browser in a window.

Visitors have no account, so the pool bounds what each may ask: a message counts against the
client's IP address and against its ``iamine_trial`` cookie (a random id the page sets), and
is refused when either already used its quota within the last ``window_s``. Counts live in
this process only (a restart forgets them; the quotas are a courtesy bound, not billing).
The number of keys held is bounded: past ``max_keys``, the keys idle longest are forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from hub.errors import HubError


class TrialQuotaExceeded(HubError):
    """A visitor used up the trial chat's quota; ``retry_after_s`` says when one frees."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "trial_quota_exceeded"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, code=self.code)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Limits:
    """How many messages one key may send within ``window_s``."""

    per_ip: int
    per_cookie: int
    window_s: float


class TrialQuota:
    """Sliding-window message counts per ``ip:…`` and ``cookie:…`` key."""

    def __init__(self, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self._sent: OrderedDict[str, deque[float]] = OrderedDict()
        self._max_keys = max_keys
        self._clock = clock

    def _recent(self, key: str, now: float, window_s: float) -> deque[float]:
        times = self._sent.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - window_s:
            times.popleft()
        return times

    def take(self, ip: str, cookie: str | None, limits: Limits) -> None:
        """Count one message of this visitor, or raise :class:`TrialQuotaExceeded`."""
        now = self._clock()
        keys = [(f"ip:{ip}", limits.per_ip)]
        if cookie:
            keys.append((f"cookie:{cookie}", limits.per_cookie))
        for key, limit in keys:
            times = self._recent(key, now, limits.window_s)
            if len(times) >= limit:
                wait = int(times[0] + limits.window_s - now) + 1 if times else int(limits.window_s)
                raise TrialQuotaExceeded(
                    f"The trial chat allows {limit} messages per {_span(limits.window_s)} "
                    f"from one {'address' if key.startswith('ip:') else 'browser'}; "
                    f"try again in {_span(wait)}, or sign up to chat with your own account.",
                    retry_after_s=wait,
                )
        for key, _ in keys:
            times = self._recent(key, now, limits.window_s)
            times.append(now)
            self._sent[key] = times
            self._sent.move_to_end(key)
        while len(self._sent) > self._max_keys:
            self._sent.popitem(last=False)


def _span(seconds: float) -> str:
    """``90`` → ``2 minutes``; ``3600`` → ``1 hour``; under two minutes in seconds."""
    if seconds < 120:
        return f"{int(seconds)} seconds"
    if seconds < 7200:
        return f"{round(seconds / 60)} minutes"
    return f"{round(seconds / 3600)} hours"
