"""The fuzz tests' budget: a fixed, reproducible sample in CI; more, and fresh, on demand.

``IAMINE_FUZZ_EXAMPLES=500 .venv/bin/pytest tests/hub/test_fuzz_api.py`` runs a longer fuzz
(docs/testing.md). Every fuzz module takes its example counts and its randomness from here, so
one variable scales them all: unset, each run draws the same examples (CI never flakes on a
sample it has not seen before); set, each run draws new ones.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES_VARIABLE = "IAMINE_FUZZ_EXAMPLES"
# The seed of CI's fixed sample, for schemathesis (hypothesis derandomizes on its own).
CI_SEED = 20261203


def examples(default: int) -> int:
    """Examples per property (or per API operation): ``IAMINE_FUZZ_EXAMPLES`` or ``default``."""
    value = os.environ.get(FUZZ_EXAMPLES_VARIABLE, "").strip()
    return int(value) if value else default


def is_long_run() -> bool:
    """Whether the caller asked for a longer fuzz (``IAMINE_FUZZ_EXAMPLES`` is set)."""
    return bool(os.environ.get(FUZZ_EXAMPLES_VARIABLE, "").strip())


def fuzz_settings(default: int) -> settings:
    """Hypothesis settings of a fuzz property: the budget above, no per-example deadline."""
    return settings(
        max_examples=examples(default),
        deadline=None,
        derandomize=not is_long_run(),
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
