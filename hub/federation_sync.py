"""The ``federation_sync`` job: one gossip round, then the notes' anti-entropy with the same peers.

The gossip itself lives in ``federation/gossip.py``; this module binds it to the running hub:
what this pool offers (:func:`local_capabilities`, from the live registry and the pool's
prices), and the note sync that rides on each round (``state.note_sync``, when present: changes
since each peer's watermark every round, the Merkle backstop every ``merkle_every`` rounds,
tombstone collection with it). The job keeps its own history bounded: gossip log rows and its
own ``job_runs`` rows older than ``gossip_log_keep_s`` are purged as it goes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

import asyncpg
import structlog

from federation import peers
from federation.errors import FederationError
from federation.gossip import Gossip, purge_log
from hub.scheduler import JobResult
from inference.pool_config import PoolConfig
from inference.registry import WorkerRegistry
from memory.errors import MemoryStoreError

log = structlog.get_logger()

FEDERATION_SYNC = "federation_sync"
MERKLE_EVERY = 12
"""Rounds between two Merkle exchanges with the peers of a round (about a minute at 5 s)."""
PURGE_EVERY = 60


class NoteSyncer(Protocol):
    """The note anti-entropy a round drives (``federation/notes_sync.py``)."""

    async def push_changes(self, peer: peers.Peer) -> dict[str, Any]: ...

    async def reconcile(self, peer: peers.Peer) -> dict[str, Any]: ...

    async def collect_tombstones(self) -> int: ...


def local_capabilities(
    registry: WorkerRegistry, config: Callable[[], PoolConfig]
) -> Callable[[], dict[str, Any]]:
    """What this pool offers peers: models its chat-trusted workers serve, free slots, price.

    Only workers at or above the chat trust floor count (a peer's users are users too), and
    ``tokens_per_s`` is the median speed the router measured for the model's workers (for the
    peer's information; a peer ranks this pool by its own measurement).
    """

    def capabilities() -> dict[str, Any]:
        pool_config = config()
        floor = pool_config.trust.required("chat")
        models = []
        for summary in registry.models():
            if summary.workers == 0 or not registry.serves(summary.id, floor):
                continue
            price = pool_config.ledger.price(summary.id)
            models.append(
                {
                    "model": summary.id,
                    "free_slots": summary.free_slots,
                    "price_per_1k": price.completion_per_1k,
                    "prompt_price_per_1k": price.prompt_per_1k,
                    "tokens_per_s": registry.median_speed(summary.id),
                }
            )
        return {"models": models}

    return capabilities


async def sync_round(gossip: Gossip, note_sync: NoteSyncer | None) -> JobResult:
    """One ``federation_sync`` run: gossip, then notes with the peers that answered."""
    report = await gossip.round()
    detail = report.as_dict()
    if note_sync is not None and report.ok:
        detail["notes"] = await _sync_notes(gossip, note_sync, report.ok)
    if report.round % PURGE_EVERY == 1:
        detail["purged"] = await _purge(gossip)
    summary = (
        f"round {report.round}: gossiped with {len(report.ok)}/{len(report.peers)} peer(s)"
        + (f", {len(report.failed)} failed" if report.failed else "")
        + (f"; status changes {report.changed}" if report.changed else "")
        + (f"; admitted {len(report.admitted)}" if report.admitted else "")
    )
    return JobResult("ok", summary, detail)


async def _sync_notes(gossip: Gossip, note_sync: NoteSyncer, pool_ids: list[str]) -> dict[str, Any]:
    merkle = gossip.counter % MERKLE_EVERY == 0
    results: dict[str, Any] = {}
    async with gossip.pool.acquire() as conn:
        chosen = [p for p in await peers.list_peers(conn) if p.pool_id in pool_ids]
    for peer in chosen:
        try:
            stats = await note_sync.push_changes(peer)
            if merkle:
                stats = {"push": stats, "merkle": await note_sync.reconcile(peer)}
            results[peer.pool_id] = stats
        except FederationError as exc:
            results[peer.pool_id] = {"error": f"{exc.code}: {exc.message}"}
        except (MemoryStoreError, asyncpg.PostgresError, OSError) as exc:
            # This pool's own trouble (no embedding model, the database): the notes wait for
            # the next round; gossip, already done, is not undone.
            log.warning("federation_notes_sync_failed", peer=peer.pool_id, error=str(exc))
            results[peer.pool_id] = {"error": f"local: {type(exc).__name__}: {exc}"[:300]}
    if merkle:
        results["tombstones_collected"] = await note_sync.collect_tombstones()
    return results


async def _purge(gossip: Gossip) -> dict[str, int]:
    before = gossip.clock() - timedelta(seconds=gossip.settings.gossip_log_keep_s)
    async with gossip.pool.acquire() as conn:
        logged = await purge_log(conn, before)
        status = await conn.execute(
            "DELETE FROM job_runs WHERE job = $1 AND started_at < $2", FEDERATION_SYNC, before
        )
    return {"gossip_log": logged, "job_runs": int(status.split()[-1])}
