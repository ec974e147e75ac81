"""Keep connected workers' trust in step with their records, whoever changed them.

A change through this hub's API (or the checker, or a slash) applies to the live link at once.
One made elsewhere (``iamine workers trust`` from the CLI, another process) is read back every
``trust_sync_s`` by :func:`follow_trust`, one small query over the connected records.
"""

from __future__ import annotations

import anyio
import asyncpg
import structlog

from inference.registry import WorkerRegistry

log = structlog.get_logger()


async def sync_trust(pool: asyncpg.Pool, registry: WorkerRegistry) -> int:
    """Read the trust of every connected worker's record and apply it; return the changes."""
    ids = [link.record_id for link in registry.workers.values() if link.record_id is not None]
    if not ids:
        return 0
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, trust FROM workers WHERE id = ANY($1::uuid[])", ids)
    changed = 0
    for row in rows:
        link = registry.workers.get(str(row["id"]))
        if link is not None and link.trust != row["trust"]:
            registry.apply_trust(link.id, row["trust"])
            changed += 1
    return changed


async def follow_trust(pool: asyncpg.Pool, registry: WorkerRegistry) -> None:
    """Run :func:`sync_trust` every ``trust_sync_s`` until cancelled; a failed read is retried."""
    while True:
        await anyio.sleep(registry.settings.trust_sync_s)
        try:
            await sync_trust(pool, registry)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("trust_sync_failed", error=str(exc))
