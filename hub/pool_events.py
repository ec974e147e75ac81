"""Pool-wide events between hub replicas: what one replica changes, the others apply at once.

With several replicas on one database (docs/scale-out.md), a token revoked through replica A
must stop working on B and C now, not when their caches expire or their sweep comes round. Each
replica announces on the bus (``hub/bus.py``, subject ``<prefix>.events``) what it changed on
purpose, and applies what the others announce:

- ``token``: a token revoked (or its worker blacklisted) — dropped from the cache, its worker
  links and MCP streams ended (``TokenResolver.forget``);
- ``user``: a user disabled — every token of theirs dropped (``TokenResolver.forget_user``);
- ``pool_config``: a new pool configuration — each replica reads it from the database (where
  the replica that changed it saved it first) and applies it to the router.

The bus is trusted as far as it goes, and no further: an event only makes a replica drop what it
caches or re-read the database. A forged ``token`` or ``user`` event can close links and streams
that then reconnect (the token is checked again against the database); a forged
``pool_config`` makes replicas re-read the configuration they already have. Still, run NATS on
a private network with credentials (docs/scale-out.md).

Announcing never blocks the request that made the change: events go through a bounded queue to
one sender task. An event lost (the NATS server away, the queue full) is not a hole: the token
sweep (``auth.revocation_check_s``) and the configuration reload at start still bring every
replica to the database's state, only later.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from pydantic import ValidationError

from hub.auth import TokenResolver
from hub.bus import NatsBus
from inference.pool_config import load_pool_config
from inference.registry import WorkerRegistry

log = structlog.get_logger()

SUBJECT = "events"
QUEUE_SIZE = 10_000


class PoolEvents:
    """This replica's side of the pool-wide events."""

    def __init__(
        self,
        bus: NatsBus,
        tokens: TokenResolver,
        workers: WorkerRegistry,
        pool: asyncpg.Pool,
        replica: str,
    ) -> None:
        self.bus = bus
        self._pool = pool
        self.replica = replica
        self._tokens = tokens
        self._workers = workers
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)

    def attach(self) -> None:
        """Announce this replica's changes: hook the token resolver and the registry."""
        self._tokens.on_token_dead = lambda token_id, reason: self._announce(
            {"kind": "token", "token_id": str(token_id), "reason": reason}
        )
        self._tokens.on_user_disabled = lambda user_id: self._announce(
            {"kind": "user", "user_id": str(user_id)}
        )
        self._workers.on_config = lambda _config: self._announce({"kind": "pool_config"})

    def _announce(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait({**event, "replica": self.replica})
        except asyncio.QueueFull:
            log.warning("pool_event_dropped", kind=event["kind"], backstop="the periodic sweep")

    async def run(self) -> None:
        """Subscribe, then send queued announcements until cancelled."""
        await self.bus.subscribe(SUBJECT, self.receive)
        while True:
            event = await self._queue.get()
            await self.bus.publish(SUBJECT, event)

    async def receive(self, event: dict[str, Any]) -> None:
        """Apply another replica's event (this replica's own come back too, and are skipped)."""
        if event.get("replica") == self.replica:
            return
        try:
            await self._apply(event)
        except (
            KeyError,
            ValueError,
            TypeError,
            ValidationError,
            asyncpg.PostgresError,
            OSError,
        ) as exc:
            log.warning("pool_event_unreadable", kind=event.get("kind"), error=str(exc)[:200])

    async def _apply(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "token":
            self._tokens.forget(UUID(event["token_id"]), str(event["reason"]), announce=False)
        elif kind == "user":
            self._tokens.forget_user(UUID(event["user_id"]), announce=False)
        elif kind == "pool_config":
            async with self._pool.acquire() as conn:
                config = await load_pool_config(conn)
            self._workers.set_config(config, announce=False)
        else:
            raise ValueError(f"unknown event kind {kind!r}")
        log.info("pool_event_applied", kind=kind, replica=event.get("replica"))
