"""The pool as the public sees it, and ``GET /pool/events``: one SSE stream of its changes.

A snapshot holds only public data: connected workers (:func:`inference.pool_view.public_row`,
no owner), the queue depth, the models, and the admitted peer pools (id and state, no URL).
Never a user id, a token or a prompt. The stream sends a ``pool`` event with the whole
snapshot when it changed since the last one, at most every ``pool_events_interval_s``; the
molecule (``static/molecule.js``) diffs two snapshots to pulse the bonds of workers that
served tokens in between. Peers are read from the database every ``PEER_REFRESH_TICKS`` ticks
only, since they change seldom.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from federation.peers import list_peers
from hub.deps import State
from hub.state import HubState
from inference.pool_view import public_row, worker_rows

router = APIRouter(tags=["web"])

PEER_REFRESH_TICKS = 15


async def public_peers(state: HubState) -> list[dict[str, str]]:
    """Admitted peer pools (id and state), or none when federation is off."""
    if not state.settings.federation.active:
        return []
    down_after = state.settings.federation.down_after_failures
    async with state.db.pool.acquire() as conn:
        peers = await list_peers(conn)
    return [{"pool_id": p.pool_id, "state": p.state(down_after)} for p in peers]


def public_snapshot(state: HubState, peers: list[dict[str, str]]) -> dict[str, Any]:
    """The pool now: workers, queue depth, free slots, models and peers (public data only)."""
    registry = state.workers
    workers = [public_row(row) for row in worker_rows(registry)]
    workers.sort(key=lambda w: (w["name"], w["id"]))
    live = [w for w in registry.workers.values() if w.excluded is None]
    return {
        "workers": workers,
        "queue_depth": len(registry.queue),
        "free_slots": sum(max(w.free_slots, 0) for w in live),
        "in_flight": sum(w["in_flight"] for w in workers),
        "models": [{"id": m.id, "workers": m.workers} for m in registry.models()],
        "peers": peers,
    }


async def pool_snapshot(state: HubState) -> dict[str, Any]:
    """A snapshot with the peers read now (for a page's first render)."""
    return public_snapshot(state, await public_peers(state))


async def pool_events(state: HubState, interval_s: float) -> AsyncIterator[ServerSentEvent]:
    """``pool`` events: the snapshot whenever it changed, checked every ``interval_s``."""
    last = b""
    peers: list[dict[str, str]] = []
    tick = 0
    while True:
        if tick % PEER_REFRESH_TICKS == 0:
            peers = await public_peers(state)
        data = orjson.dumps(public_snapshot(state, peers))
        if data != last:
            last = data
            yield ServerSentEvent(data=data.decode(), event="pool")
        tick += 1
        await anyio.sleep(interval_s)


@router.get("/pool/events")
async def pool_event_stream(request: Request, state: State) -> EventSourceResponse:
    """The pool's public snapshot as server-sent events (``event: pool``), on every change."""
    interval = state.settings.web.pool_events_interval_s
    return EventSourceResponse(pool_events(state, interval), ping=15)
