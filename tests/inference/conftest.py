"""Fixtures shared by the inference tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run anyio tests on asyncio only: the worker's WebSocket library is asyncio-based."""
    return "asyncio"
