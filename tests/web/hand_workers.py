"""Workers connected by hand (tests/hub/raw_worker.py) on a thread of their own.

The browser fixture owns the test thread's event loop (Playwright's sync API), so a module that
drives Chromium keeps its hand-driven workers' WebSockets on another thread's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager

import httpx

from tests.hub.conftest import LiveHub, wait_until
from tests.hub.raw_worker import raw_worker


def listed_workers(hub: LiveHub) -> list[str]:
    """Names of the connected workers, as the admin API lists them."""
    headers = {"Authorization": f"Bearer {hub.admin_token}"}
    answer = httpx.get(hub.url + "/admin/api/workers", headers=headers, timeout=30)
    return [w["name"] for w in answer.json()["data"]]


@contextmanager
def hand_workers(hub: LiveHub, names: tuple[str, ...], slots: int = 2) -> Iterator[list[str]]:
    """Connect a worker per name (serving ``m-<name>``) until the block ends."""
    for name in names:
        hub.worker_token_for(name)
    stop = threading.Event()

    async def hold() -> None:
        async with AsyncExitStack() as stack:
            for name in names:
                await stack.enter_async_context(raw_worker(hub, f"m-{name}", slots, name))
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(hold(),), daemon=True)
    thread.start()
    try:
        wait_until(lambda: set(names) <= set(listed_workers(hub)), 30, "the workers to connect")
        yield list(names)
    finally:
        stop.set()
        thread.join(timeout=15)
