"""The hub's scheduled jobs: L1 purge, the checker, the RED daemon, federation sync, settlement,
and the large users' fact indexes.

:data:`CATALOG` describes them (the CLI lists it without a running hub); :func:`build_jobs`
binds them to a running hub's state for the scheduler. ``l1_purge`` and ``fact_indexes`` need
only the database, so ``iamine jobs run`` runs them in the CLI's process (:func:`local_job`);
the checker and RED
need live workers, and settlement the live pool config, so the CLI asks the running hub to run
them. The checker runs the canaries too (:func:`build_canaries`: the same object checks each
new worker as it joins).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from economy.settlement import run_settlement
from hub.cli_ledger import credits
from hub.config import Settings
from hub.errors import HubError
from hub.federation_sync import FEDERATION_SYNC, sync_round
from hub.observability import Metrics
from hub.scheduler import JobResult, JobSpec
from hub.slashing import ledger_of, slash_worker
from hub.state import HubState
from inference import identity
from inference.canaries import Canaries
from inference.checker import run_checker
from inference.red import Planner, pool_planner, run_red
from memory.facts import index_large_owners
from memory.l1 import purge_expired_l1
from memory.settings import MemorySettings

L1_PURGE = "l1_purge"
CHECKER = "checker"
RED = "red"
SETTLEMENT = "settlement"
FACT_INDEXES = "fact_indexes"


@dataclass(frozen=True)
class JobInfo:
    """A job as the CLI and the admin API describe it."""

    name: str
    description: str
    needs_hub: bool
    interval: Callable[[Settings], float]


CATALOG: dict[str, JobInfo] = {
    info.name: info
    for info in (
        JobInfo(
            L1_PURGE,
            "Delete L1 messages past their TTL.",
            needs_hub=False,
            interval=lambda s: s.jobs.l1_purge_interval_s,
        ),
        JobInfo(
            CHECKER,
            "Benchmark every worker; check a known answer and tool calls; run canaries.",
            needs_hub=True,
            interval=lambda s: s.jobs.checker_interval_s,
        ),
        JobInfo(
            RED,
            "Admin daemon: read the pool, plan from an allow-list, report.",
            needs_hub=True,
            interval=lambda s: s.jobs.red_interval_s,
        ),
        JobInfo(
            FEDERATION_SYNC,
            "Gossip with a few peers (liveness, peers, capabilities); sync fed: notes with them.",
            needs_hub=True,
            interval=lambda s: s.federation.gossip_interval_s if s.federation.active else 0.0,
        ),
        JobInfo(
            SETTLEMENT,
            "Release earnings past the dispute window; close a ledger period; count verified jobs.",
            needs_hub=True,
            interval=lambda s: s.jobs.settlement_interval_s,
        ),
        JobInfo(
            FACT_INDEXES,
            "Give each user with many facts an HNSW index of their own; drop those no longer due.",
            needs_hub=False,
            interval=lambda s: s.jobs.fact_indexes_interval_s,
        ),
    )
}


async def purge_l1(conn: asyncpg.Connection, settings: MemorySettings) -> int:
    """Delete every expired L1 message; return how many."""
    return await purge_expired_l1(conn, datetime.now(UTC), batch=settings.l1_purge_batch)


async def fact_indexes(conn: asyncpg.Connection, settings: MemorySettings) -> JobResult:
    """Index the large users' facts (``conn`` outside any transaction: builds are concurrent)."""
    changed = await index_large_owners(conn, min_facts=settings.facts_owner_index_min)
    if changed.skipped:
        return JobResult("skipped", "another session is indexing")
    detail = {
        "created": [str(user) for user in changed.created],
        "dropped": [str(user) for user in changed.dropped],
    }
    line = f"{len(changed.created)} index(es) created, {len(changed.dropped)} dropped"
    return JobResult("ok", line, detail)


def _spec(info: JobInfo, settings: Settings, run: Callable[[], Awaitable[JobResult]]) -> JobSpec:
    return JobSpec(info.name, info.description, info.interval(settings), info.needs_hub, run)


def local_job(name: str, settings: Settings, conn: asyncpg.Connection) -> JobSpec | None:
    """The job bound to one connection, for jobs that need only the database (else None)."""
    if name == FACT_INDEXES:
        return _spec(CATALOG[name], settings, lambda: fact_indexes(conn, settings.memory))
    if name != L1_PURGE:
        return None

    async def run() -> JobResult:
        purged = await purge_l1(conn, settings.memory)
        return JobResult("ok", f"purged {purged} expired L1 message(s)", {"purged": purged})

    return _spec(CATALOG[L1_PURGE], settings, run)


def route_counts(metrics: Metrics) -> dict[str, int]:
    """Chat jobs by route since the hub started (``degraded`` counts failures to serve)."""
    counts: dict[str, int] = {}
    for metric in metrics.routes.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                counts[sample.labels["route"]] = int(sample.value)
    return counts


async def _trusted(conn: asyncpg.Connection, worker_id: UUID) -> bool:
    """Earnings are released only to workers that passed canaries (trust 1 or more)."""
    trust = await conn.fetchval("SELECT trust FROM workers WHERE id = $1", worker_id)
    return trust is not None and trust >= identity.VERIFIED


_UPHELD_SINCE_RESET = """
SELECT DISTINCT d.worker_id FROM disputes d
WHERE d.status = 'upheld' AND d.worker_id = ANY($1::uuid[])
  AND d.resolved_at > coalesce((SELECT max(e.created_at) FROM worker_trust_events e
                                WHERE e.worker_id = d.worker_id AND e.to_level = 0), '-infinity')
"""


async def settle(state: HubState) -> JobResult:
    """One settlement run, then the settled jobs count towards each worker's establishment.

    Workers with an upheld dispute since their last trust reset do not count. An uphold resets
    trust in its own transaction, so this bars only a worker whose reset did not happen.
    """
    config, registry = state.workers.config, state.workers
    async with state.db.pool.acquire() as conn:
        summary = await run_settlement(conn, ledger_of(state), _trusted)
        counts = summary.counts()
        barred = await conn.fetch(_UPHELD_SINCE_RESET, list(counts))
        for row in barred:
            counts.pop(row["worker_id"], None)
        established = config.trust.established_jobs
        promoted = await identity.count_verified_jobs(conn, counts, established)
    for worker_id in promoted:
        registry.apply_trust(str(worker_id), identity.ESTABLISHED)
    period = "" if summary.period is None else f"; closed period {summary.period.id}"
    line = (
        f"settled {summary.jobs} earning(s), {credits(summary.amount)} $IAMINE; "
        f"{summary.held} held for trust; {len(promoted)} worker(s) established{period}"
    )
    return JobResult("ok", line, {**summary.as_dict(), "promoted": [str(w) for w in promoted]})


def build_canaries(state: HubState) -> Canaries:
    """The hub's canaries: told of each worker that joins, slashing through the ledger.

    The lifespan runs :meth:`Canaries.run` (new workers are checked soon after they join) and
    hands the object to :func:`build_jobs` (the checker's sweep).
    """

    async def slash(worker_id: UUID, reason: str, evidence: dict[str, Any]) -> object:
        return await slash_worker(state, worker_id, reason, evidence)

    canaries = Canaries(state.workers, state.db.pool, state.settings.checker, slash)
    state.workers.on_join = canaries.request
    return canaries


def build_jobs(
    state: HubState, planner: Planner | None = None, canaries: Canaries | None = None
) -> list[JobSpec]:
    """Every job, bound to the running hub (``planner`` replaces RED's model call)."""
    settings, pool, registry = state.settings, state.db.pool, state.workers

    async def l1() -> JobResult:
        async with pool.acquire() as conn:
            purged = await purge_l1(conn, settings.memory)
        return JobResult("ok", f"purged {purged} expired L1 message(s)", {"purged": purged})

    async def check() -> JobResult:
        if not registry.workers:
            return JobResult("skipped", "no worker is connected")
        summary = await run_checker(registry, pool, settings.checker)
        checked = summary["checked"]
        passed = sum(1 for c in checked if c["passed"])
        line = (
            f"checked {len(checked)}: {passed} passed, {len(checked) - passed} failed; "
            f"{len(summary['skipped'])} skipped, {len(summary['excluded'])} excluded"
        )
        if canaries is not None:
            verdicts = summary["canaries"] = await canaries.sweep()
            outcomes = Counter(v["outcome"] for v in verdicts)
            line += (
                f"; canaries: {outcomes['passed']} passed, {outcomes['failed']} failed, "
                f"{outcomes['inconclusive']} inconclusive"
            )
        return JobResult("ok", line, summary)

    async def purge_effect() -> int:
        async with pool.acquire() as conn:
            return await purge_l1(conn, settings.memory)

    async def red() -> JobResult:
        run = await run_red(
            registry,
            pool,
            settings.red,
            planner or pool_planner(registry, settings.red),
            purge_effect,
            extra_state={"routes": route_counts(state.metrics)},
        )
        return JobResult(run.outcome, run.summary, {"report_id": run.report_id})

    async def settlement() -> JobResult:
        return await settle(state)

    async def indexes() -> JobResult:
        async with pool.acquire() as conn:
            return await fact_indexes(conn, settings.memory)

    async def federation_sync() -> JobResult:
        if state.gossip is None:
            return JobResult("skipped", "federation is off")
        return await sync_round(state.gossip, state.note_sync)

    runs = {
        L1_PURGE: l1,
        CHECKER: check,
        RED: red,
        FEDERATION_SYNC: federation_sync,
        SETTLEMENT: settlement,
        FACT_INDEXES: indexes,
    }
    return [_spec(info, settings, runs[name]) for name, info in CATALOG.items()]


def hub_url(settings: Settings) -> str:
    """Where this data directory's hub listens, by its settings (a wildcard means loopback)."""
    host = settings.server.host
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - reading the bind address, not binding
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port}"


async def run_on_hub(url: str, token: str, name: str, timeout_s: float) -> dict[str, Any]:
    """Ask a running hub to run a job now (``POST /admin/api/jobs/{name}/run``); its run."""
    try:
        async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout_s) as client:
            response = await client.post(
                f"/admin/api/jobs/{name}/run", headers={"Authorization": f"Bearer {token}"}
            )
    except httpx.TransportError as exc:
        raise HubError(
            f"Cannot reach the hub at {url} ({type(exc).__name__}). The {name} job runs in the "
            "hub, which holds the live workers: start `iamine serve`, or pass --hub URL.",
            code="hub_unreachable",
        ) from exc
    body: dict[str, Any] = response.json()
    if response.status_code != 200:
        error = body.get("error", {})
        raise HubError(f"The hub refused: {error.get('message', response.text)}", code="hub_error")
    return body
