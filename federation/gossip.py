"""Push-pull gossip between pools: heartbeats, suspicions, admitted peers and capabilities.

Each round (the ``federation_sync`` job) this pool beats its heartbeat, judges its peers
(``federation/membership.py``), and sends a signed ``POST /v1/federation/gossip`` to a few
random peers whose backoff allows a call. The message and the answer have the same shape, so
both sides learn from one exchange:

```json
{"pool_id": "iam1…", "heartbeat": [incarnation, counter],
 "members": [{"pool_id": "iam1…", "url": "https://…", "public_key": "…", "heartbeat": [i, n]}],
 "suspects": ["iam1…"],
 "capabilities": {"models": [{"model": "…", "free_slots": 3, "price_per_1k": 2000,
                               "tokens_per_s": 41.5}]}}
```

What a peer says is a claim. Heartbeats it relays can only keep a peer alive, never kill it;
its suspicions count as its own vote only; the pools it lists become candidates, not peers; its
capabilities choose where overflow goes but its stated speed is never used (this pool measures).
Each exchange is one row of ``gossip_log``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import anyio
import asyncpg
import orjson
import structlog

from federation import candidates, membership, peers
from federation.capabilities import parse_capabilities
from federation.client import Clock, utc_now
from federation.errors import FederationError, InvalidFederationInput
from federation.identity import POOL_ID_PATTERN, decode_public_key, encode_public_key
from federation.service import Federation, Inbound
from federation.settings import normalise_origin
from federation.signatures import SignedRequest

log = structlog.get_logger()

GOSSIP_PATH = "/v1/federation/gossip"
MAX_MEMBERS = 1_000
CapabilitiesSource = Callable[[], dict[str, Any]]
"""This pool's own capabilities as gossip states them (``{"models": [...]}``)."""


@dataclass(frozen=True)
class GossipMessage:
    """A validated gossip message (or answer)."""

    pool_id: str
    heartbeat: membership.Heartbeat
    members: list[tuple[candidates.Listed, membership.Heartbeat | None]]
    suspects: list[str]
    capabilities: dict[str, Any]


def parse_message(data: Any) -> GossipMessage:
    """Validate a gossip body; :class:`InvalidFederationInput` names what is wrong.

    Member entries that are malformed are dropped one by one; the message itself must have a
    pool id, a heartbeat and well-formed capabilities.
    """
    if not isinstance(data, dict):
        raise InvalidFederationInput("A gossip message is a JSON object.")
    pool_id = data.get("pool_id")
    if not isinstance(pool_id, str):
        raise InvalidFederationInput("pool_id must be a string.", param="pool_id")
    beat = membership.parse_heartbeat(data.get("heartbeat"))
    if beat is None:
        raise InvalidFederationInput(
            "heartbeat must be [incarnation, counter], non-negative integers.", param="heartbeat"
        )
    raw_members = data.get("members", [])
    raw_suspects = data.get("suspects", [])
    if not isinstance(raw_members, list) or len(raw_members) > MAX_MEMBERS:
        raise InvalidFederationInput(
            f"members is a list of at most {MAX_MEMBERS}.", param="members"
        )
    if not isinstance(raw_suspects, list) or len(raw_suspects) > MAX_MEMBERS:
        raise InvalidFederationInput(
            f"suspects is a list of at most {MAX_MEMBERS} pool ids.", param="suspects"
        )
    capabilities = data.get("capabilities", {"models": []})
    try:
        parse_capabilities(capabilities)
    except ValueError as exc:
        raise InvalidFederationInput(str(exc), param="capabilities") from None
    return GossipMessage(
        pool_id=pool_id,
        heartbeat=beat,
        members=[m for m in map(_member_entry, raw_members) if m is not None],
        # Only well-formed pool ids: anything else could name no peer anyway.
        suspects=[s for s in raw_suspects if isinstance(s, str) and POOL_ID_PATTERN.match(s)],
        capabilities=capabilities,
    )


def _member_entry(entry: Any) -> tuple[candidates.Listed, membership.Heartbeat | None] | None:
    if not isinstance(entry, dict):
        return None
    pool_id, url, key = entry.get("pool_id"), entry.get("url"), entry.get("public_key")
    if not isinstance(pool_id, str) or not isinstance(url, str) or not isinstance(key, str):
        return None
    try:
        listed = candidates.Listed(pool_id, decode_public_key(key), normalise_origin(url))
    except (InvalidFederationInput, ValueError):
        return None
    return listed, membership.parse_heartbeat(entry.get("heartbeat"))


@dataclass
class RoundReport:
    """What one gossip round did (the ``federation_sync`` job's detail)."""

    round: int
    peers: list[str] = field(default_factory=list)
    ok: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    changed: dict[str, str] = field(default_factory=dict)
    admitted: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON."""
        return {
            "round": self.round,
            "peers": self.peers,
            "ok": self.ok,
            "failed": self.failed,
            "changed": self.changed,
            "admitted": self.admitted,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
        }


class Gossip:
    """This pool's side of gossip: its heartbeat, its messages, and what it learns from peers."""

    def __init__(
        self,
        federation: Federation,
        pool: asyncpg.Pool,
        capabilities: CapabilitiesSource,
        *,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self.federation = federation
        self.settings = federation.settings
        self.pool = pool
        self._capabilities = capabilities
        self.clock = clock
        self._rng = rng or random.Random()
        self.incarnation = int(clock().timestamp() * 1000)
        self.counter = 0

    @property
    def me(self) -> str:
        """This pool's id."""
        return self.federation.identity.pool_id

    async def message(self, conn: asyncpg.Connection) -> dict[str, Any]:
        """This pool's gossip: its heartbeat, its peers with theirs, its suspicions, its offers."""
        beats = {m.pool_id: m for m in await membership.list_members(conn)}
        members = []
        for peer in await peers.list_peers(conn):
            member = beats.get(peer.pool_id)
            members.append(
                {
                    "pool_id": peer.pool_id,
                    "url": peer.url,
                    "public_key": encode_public_key(peer.public_key),
                    "heartbeat": list(member.beat) if member and member.incarnation else None,
                }
            )
        return {
            "pool_id": self.me,
            "heartbeat": [self.incarnation, self.counter],
            "members": members,
            "suspects": await membership.suspected_by_me(conn, self.me),
            "capabilities": self._capabilities(),
        }

    async def apply(
        self, conn: asyncpg.Connection, sender: peers.Peer, message: GossipMessage, now: datetime
    ) -> None:
        """Learn from ``sender``'s message (already authenticated as coming from it).

        Runs in the caller's transaction, under the membership lock.
        """
        if message.pool_id != sender.pool_id:
            raise InvalidFederationInput("pool_id is not the sender's.", param="pool_id")
        await membership.lock_membership(conn)
        await membership.ensure_members(conn, [sender.pool_id])
        await membership.observe_heartbeat(conn, sender.pool_id, message.heartbeat, now)
        admitted = {p.pool_id for p in await peers.list_peers(conn)}
        unknown = []
        for listed, beat in message.members:
            if listed.pool_id in (self.me, sender.pool_id):
                continue
            if listed.pool_id in admitted:
                if beat is not None:
                    await membership.observe_heartbeat(conn, listed.pool_id, beat, now)
            else:
                unknown.append(listed)
        await membership.record_suspicions(conn, sender.pool_id, message.suspects, self.me)
        await candidates.vouch(conn, sender.pool_id, unknown, now)
        # The URL is the one this pool admitted, never one the message names.
        self.federation.capabilities.update(sender.pool_id, sender.url, message.capabilities, now)
        await _store_capabilities(conn, sender.pool_id, message.capabilities, now)

    async def receive(self, inbound: Inbound) -> tuple[dict[str, Any], SignedRequest]:
        """Answer a peer's gossip with this pool's own, after learning from it."""
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            sender_id, request = await self.federation.authenticate(conn, inbound)
            try:
                body = orjson.loads(inbound.body)
            except orjson.JSONDecodeError:
                raise InvalidFederationInput("The gossip body is not JSON.") from None
            message = parse_message(body)
            sender = await peers.get_peer(conn, sender_id)
            await self.apply(conn, sender, message, now)
            answer = await self.message(conn)
            await _log(
                conn,
                now,
                sender_id,
                "in",
                ok=True,
                sent=len(orjson.dumps(answer)),
                received=len(inbound.body),
                detail=_detail(message),
            )
        return answer, request

    async def round(self) -> RoundReport:
        """One round: beat, judge the peers, gossip with a few, admit by quorum if configured."""
        self.counter += 1
        now = self.clock()
        report = RoundReport(self.counter)
        async with self.pool.acquire() as conn:
            known = await peers.list_peers(conn)
            await membership.ensure_members(conn, [p.pool_id for p in known])
            report.changed = dict(
                await membership.judge(
                    conn,
                    self.me,
                    suspect_after=timedelta(seconds=self.settings.suspect_after_s),
                    configured_quorum=self.settings.dead_quorum,
                    admitted_at={p.pool_id: p.admitted_at for p in known},
                    now=now,
                )
            )
            for member in await membership.list_members(conn):
                self.federation.capabilities.set_dead(member.pool_id, member.status == "dead")
            admitted = await candidates.admit_by_quorum(
                conn, self.settings.admit_quorum, [p.pool_id for p in known], now
            )
            report.admitted = [p.pool_id for p in admitted]
            message = await self.message(conn)
        for pool_id, status in report.changed.items():
            log.info("federation_peer_status", peer=pool_id, status=status)
        for peer in admitted:
            log.info("federation_peer_admitted", peer=peer.pool_id, by=peer.admitted_by)
        due = [p for p in known if p.due(now)]
        chosen = self._rng.sample(due, min(self.settings.gossip_fanout, len(due)))
        report.peers = [p.pool_id for p in chosen]
        payload = orjson.dumps(message)
        async with anyio.create_task_group() as group:
            for peer in chosen:
                group.start_soon(self._exchange, peer, message, len(payload), report)
        self._forget_removed({p.pool_id for p in known})
        return report

    async def _exchange(
        self, peer: peers.Peer, message: dict[str, Any], size: int, report: RoundReport
    ) -> None:
        report.bytes_sent += size
        try:
            answer = await self.federation.client.call(peer, "POST", GOSSIP_PATH, message)
            parsed = parse_message(answer)
        except FederationError as exc:
            report.failed[peer.pool_id] = f"{exc.code}: {exc.message}"
            async with self.pool.acquire() as conn:
                await _log(
                    conn,
                    self.clock(),
                    peer.pool_id,
                    "out",
                    ok=False,
                    sent=size,
                    received=0,
                    detail={},
                    error=report.failed[peer.pool_id],
                )
            return
        received = len(orjson.dumps(answer))
        report.bytes_received += received
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            await self.apply(conn, peer, parsed, now)
            await _log(
                conn,
                now,
                peer.pool_id,
                "out",
                ok=True,
                sent=size,
                received=received,
                detail=_detail(parsed),
            )
        report.ok.append(peer.pool_id)

    def _forget_removed(self, admitted: set[str]) -> None:
        for offer in self.federation.capabilities.snapshot():
            if offer.pool_id not in admitted:
                self.federation.capabilities.forget(offer.pool_id)


def _detail(message: GossipMessage) -> dict[str, Any]:
    models = parse_capabilities(message.capabilities)
    return {
        "heartbeat": list(message.heartbeat),
        "members": len(message.members),
        "suspects": message.suspects[:20],
        "models": [m[0] for m in models][:50],
    }


async def _store_capabilities(
    conn: asyncpg.Connection, pool_id: str, capabilities: dict[str, Any], now: datetime
) -> None:
    rows = [(pool_id, m, slots, price, now) for m, slots, price in parse_capabilities(capabilities)]
    await conn.execute("DELETE FROM peer_capabilities WHERE pool_id = $1", pool_id)
    if rows:
        await conn.executemany(
            "INSERT INTO peer_capabilities (pool_id, model, free_slots, price_per_1k, updated_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            rows,
        )


async def _log(
    conn: asyncpg.Connection,
    at: datetime,
    peer: str,
    direction: str,
    *,
    ok: bool,
    sent: int,
    received: int,
    detail: dict[str, Any],
    error: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO gossip_log (at, peer, direction, ok, bytes_sent, bytes_received, detail, "
        "error) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)",
        at,
        peer,
        direction,
        ok,
        sent,
        received,
        orjson.dumps(detail).decode(),
        error,
    )


async def purge_log(conn: asyncpg.Connection, before: datetime) -> int:
    """Delete gossip log rows older than ``before``; return how many."""
    status = await conn.execute("DELETE FROM gossip_log WHERE at < $1", before)
    return int(status.split()[-1])


async def recent_log(conn: asyncpg.Connection, limit: int = 100) -> list[dict[str, Any]]:
    """The latest gossip exchanges, newest first."""
    rows = await conn.fetch(
        "SELECT at, peer, direction, ok, bytes_sent, bytes_received, detail, error "
        "FROM gossip_log ORDER BY at DESC, id DESC LIMIT $1",
        limit,
    )
    return [
        {
            "at": row["at"].isoformat(),
            "peer": row["peer"],
            "direction": row["direction"],
            "ok": row["ok"],
            "bytes_sent": row["bytes_sent"],
            "bytes_received": row["bytes_received"],
            "detail": orjson.loads(row["detail"]),
            "error": row["error"],
        }
        for row in rows
    ]
