"""RED, the pool's admin daemon: read the pool, ask a model for a plan, apply what is safe.

One run (:func:`run_red`):

1. **Gather** the pool's state: workers (speed, shares, in-flight and failed jobs, tool-call
   verdicts, exclusions), the routing policy, the queue, the checker's latest results, recent job
   runs and table sizes. No user ids and no message text ever go into it.
2. **Plan**: ask the model (a :data:`Planner`, injectable; by default a pool job at low priority,
   grammar-constrained to the plan's JSON schema) for ``{"actions": [...], "playbook": "..."}``.
3. **Validate** every action (``inference/red_plan.py``): any answer, however poor, yields only
   allow-listed, bounded actions, and the report says why each other one was rejected.
4. **Apply** the accepted actions only when ``apply`` is on; otherwise they are ``would_apply``
   (dry run, the default). Alerts change nothing and are raised in both modes.
5. **Report** to ``red_reports`` and write a new **playbook** version: the model's own notes,
   which it reads again on its next run (or the previous text when it wrote none). The admin can
   read, replace and roll back the playbook; every change is a new version.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import asyncpg
import structlog
from pydantic import BaseModel, Field, ValidationError

from inference import checker
from inference.dispatch import Degraded, JobFailed, run_job
from inference.exclusions import recent_exclusions
from inference.pool_config import PoolConfig, save_pool_config
from inference.protocol import Chunk, Job, SamplingParams
from inference.red_plan import (
    RED_EXCLUSION,
    Action,
    AdjustShare,
    ExcludeWorker,
    Plan,
    PlanBounds,
    PurgeL1,
    RaiseAlert,
    ReadmitWorker,
    WorkerView,
    World,
    parse_plan,
    shares_after,
)
from inference.registry import WorkerRegistry
from inference.roles import DEFAULT_MODEL

log = structlog.get_logger()

RED_USER = "red"
WATCHED_TABLES = (
    "l1_messages",
    "conversation_turns",
    "conversations",
    "worker_benchmarks",
    "worker_exclusions",
    "job_runs",
    "red_reports",
)

Planner = Callable[[list[dict[str, Any]]], Awaitable[str]]
PurgeL1Effect = Callable[[], Awaitable[int]]


class RedSettings(PlanBounds):
    """The RED admin daemon: the ``IAMINE_RED__*`` group of the hub's settings."""

    apply: bool = Field(
        False, description="Apply accepted actions; off (the default), RED only reports them."
    )
    model: str = Field(DEFAULT_MODEL, min_length=1, description="Pool model that writes plans.")
    max_tokens: int = Field(512, gt=0, le=8192, description="Most tokens of one plan.")
    timeout_s: float = Field(
        180.0, gt=0, description="Most seconds the model may take for a plan, queue included."
    )
    priority: int = Field(
        50, ge=0, description="Queue priority of RED's jobs (user traffic is 0; lower is first)."
    )


class PlannerUnavailable(Exception):
    """No worker could write the plan (none serves the model, or none was free)."""


class _PlanDocument(BaseModel):
    actions: list[Action]
    playbook: str


PLAN_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "red_plan", "schema": _PlanDocument.model_json_schema()},
}

SYSTEM_PROMPT = """You are RED, the admin agent of a cooperative AI pool.
Read the pool's state and answer with one JSON object only:
{{"actions": [...], "playbook": "your notes for your next run"}}
Allowed actions (anything else is refused):
- {{"action": "exclude_worker", "worker_id": "...", "reason": "..."}}: a worker that fails or is
  far too slow; never the last worker of a model.
- {{"action": "readmit_worker", "worker_id": "..."}}: a worker excluded by the checker or by you
  that now looks healthy.
- {{"action": "adjust_share", "hardware": "gpu" or "cpu", "share": 0.5}}: target share of work of
  a hardware class, between {share_min} and {share_max}, at most {step} away from the current one.
- {{"action": "purge_l1"}}: delete expired L1 messages when l1_messages is large.
- {{"action": "alert", "severity": "info" or "warning" or "critical", "message": "..."}}
At most {max_actions} actions. When the pool is healthy, propose no action.
Keep the playbook short: what you learned about this pool, what to watch next time."""


@dataclass(frozen=True)
class PlaybookVersion:
    """One version of RED's playbook."""

    version: int
    text: str
    source: str
    report_id: int | None
    created_at: datetime


async def gather_state(
    registry: WorkerRegistry, conn: asyncpg.Connection, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The pool's state as RED sees it (no user ids, no message text)."""
    links = list(registry.workers.values())
    targets = registry.router.targets(w for w in links if w.excluded is None)
    now = time.monotonic()
    workers = [
        {
            "id": w.id,
            "name": w.name,
            "hardware": w.hardware,
            "models": sorted(w.models),
            "slots": w.slots,
            "in_flight": len(w.jobs),
            "jobs_done": w.jobs_done,
            "jobs_failed": w.jobs_failed,
            "error_rate": round(w.jobs_failed / (w.jobs_done + w.jobs_failed), 3)
            if w.jobs_done + w.jobs_failed
            else None,
            "tokens_per_s": registry.router.speed(w.id),
            "served_share": round(registry.router.served_share(w.id), 4),
            "target_share": round(targets.get(w.id, 0.0), 4),
            "tools_ok": w.tools_ok,
            "excluded": w.excluded,
        }
        for w in links
    ]
    waiting = registry.queue.snapshot(now)
    exclusions = await recent_exclusions(conn)
    return {
        "workers": workers,
        "policy": {
            "class_shares": registry.config.class_shares,
            "worker_shares": registry.config.worker_shares,
            "queue_wait_s": registry.config.queue_wait_s,
        },
        "queue": {
            "depth": len(waiting),
            "longest_wait_ms": max((int(str(w["waited_ms"])) for w in waiting), default=0),
        },
        "checker": [_brief_check(r) for r in await checker.recent_results(conn, 20)],
        "exclusions": [
            {"worker": e.worker_name, "reason": e.reason, "detail": e.detail}
            for e in exclusions[:10]
        ],
        "job_runs": await _recent_job_runs(conn),
        "tables": await _table_rows(conn),
        **(extra or {}),
    }


def _brief_check(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("worker_id", "worker_name", "model", "generation_tps", "ttft_ms", "passed", "error")
    return {k: row[k] for k in keep} | {"tools_ok": row["tools_ok"]}


async def _recent_job_runs(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT DISTINCT ON (job) job, outcome, summary, ended_at FROM job_runs "
        "ORDER BY job, started_at DESC"
    )
    return [{"job": r["job"], "outcome": r["outcome"], "summary": r["summary"][:200]} for r in rows]


async def _table_rows(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE relname = ANY($1::text[])",
        list(WATCHED_TABLES),
    )
    return {r["relname"]: int(r["n_live_tup"]) for r in rows}


def red_messages(
    state: dict[str, Any], playbook: PlaybookVersion | None, settings: RedSettings
) -> list[dict[str, Any]]:
    """The planner's chat: the rules, then the playbook and the state."""
    system = SYSTEM_PROMPT.format(
        share_min=settings.share_min,
        share_max=settings.share_max,
        step=settings.max_share_step,
        max_actions=settings.max_actions,
    )
    notes = playbook.text if playbook and playbook.text else "(empty: this is your first run)"
    compact = json.dumps(state, default=str, separators=(",", ":"))
    user = f"Your playbook:\n{notes}\n\nPool state:\n{compact}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def pool_planner(registry: WorkerRegistry, settings: RedSettings) -> Planner:
    """The default planner: one low-priority pool job on ``settings.model``."""

    async def plan(messages: list[dict[str, Any]]) -> str:
        if not registry.serves(settings.model):
            raise PlannerUnavailable(f"no worker serves {settings.model!r}")
        job = Job(
            job_id=uuid.uuid4().hex,
            model=settings.model,
            messages=messages,
            params=SamplingParams(
                max_tokens=settings.max_tokens, temperature=0.2, response_format=PLAN_FORMAT
            ),
            deadline_s=settings.timeout_s,
        )
        parts: list[str] = []
        events = run_job(
            registry,
            job,
            needs_tools=False,
            user=RED_USER,
            priority=settings.priority,
            min_trust=registry.config.trust.required("red"),
        )
        try:
            async for event in events:
                if isinstance(event, Degraded):
                    raise PlannerUnavailable(event.reason)
                if isinstance(event, Chunk):
                    parts.append(event.delta.content or "")
        finally:
            if isinstance(events, AsyncGenerator):
                await events.aclose()
        return "".join(parts)

    return plan


def _class_shares(config: PoolConfig) -> dict[str, float]:
    return {str(hardware): share for hardware, share in config.class_shares.items()}


def world_of(registry: WorkerRegistry) -> World:
    """The pool as the plan check sees it."""
    return World(
        workers={
            w.id: WorkerView(w.id, w.name, frozenset(w.models), w.excluded)
            for w in registry.workers.values()
        },
        class_shares=_class_shares(registry.config),
    )


async def _apply(
    action: Action, registry: WorkerRegistry, pool: asyncpg.Pool, purge_l1: PurgeL1Effect
) -> str:
    """Carry out one accepted action; return what happened (raises ValueError if it cannot)."""
    if isinstance(action, ExcludeWorker | ReadmitWorker):
        link = registry.workers.get(action.worker_id)
        if link is None:
            raise ValueError("the worker left before the plan was applied")
        if isinstance(action, ExcludeWorker):
            registry.exclude(link, RED_EXCLUSION, action.reason)
            return f"excluded {link.name}"
        registry.readmit(link)
        return f"readmitted {link.name}"
    if isinstance(action, AdjustShare):
        current = registry.config
        shares = shares_after(_class_shares(current), action.hardware, action.share)
        try:
            config = PoolConfig.model_validate({**current.model_dump(), "class_shares": shares})
        except ValidationError as exc:
            raise ValueError(exc.errors()[0]["msg"]) from exc
        async with pool.acquire() as conn:
            await save_pool_config(conn, config)
        registry.set_config(config)
        return f"class shares are now {config.class_shares}"
    if isinstance(action, PurgeL1):
        return f"purged {await purge_l1()} expired L1 message(s)"
    assert isinstance(action, RaiseAlert)
    log.warning("red_alert", severity=action.severity, message=action.message)
    return f"alert raised ({action.severity})"


async def _carry_out(
    plan: Plan,
    registry: WorkerRegistry,
    pool: asyncpg.Pool,
    settings: RedSettings,
    purge_l1: PurgeL1Effect,
) -> None:
    for verdict in plan.accepted:
        assert verdict.action is not None
        if not settings.apply and not isinstance(verdict.action, RaiseAlert):
            verdict.status, verdict.reason = "would_apply", "dry run: red apply is off"
            continue
        try:
            verdict.reason = await _apply(verdict.action, registry, pool, purge_l1)
            verdict.status = "applied"
        except (ValueError, asyncpg.PostgresError) as exc:
            verdict.status, verdict.reason = "failed", str(exc)


@dataclass
class RedRun:
    """The outcome of one run, as the scheduler records it."""

    report_id: int
    outcome: Literal["ok", "error", "skipped"]
    summary: str
    report: dict[str, Any]


async def run_red(
    registry: WorkerRegistry,
    pool: asyncpg.Pool,
    settings: RedSettings,
    planner: Planner,
    purge_l1: PurgeL1Effect,
    *,
    extra_state: dict[str, Any] | None = None,
) -> RedRun:
    """One RED run: gather, plan, validate, apply (or not), report, new playbook version."""
    started = datetime.now(UTC)
    async with pool.acquire() as conn:
        state = await gather_state(registry, conn, extra_state)
        playbook = await current_playbook(conn)
    answer: str | None = None
    outcome: Literal["ok", "error", "skipped"] = "ok"
    try:
        with anyio.fail_after(settings.timeout_s):
            answer = await planner(red_messages(state, playbook, settings))
        plan = parse_plan(answer, world_of(registry), settings)
    except PlannerUnavailable as exc:
        outcome, plan = "skipped", Plan(error=f"no plan: {exc}")
    except JobFailed as exc:
        outcome, plan = "error", Plan(error=f"the model failed: {exc.message} ({exc.code})")
    except TimeoutError:
        outcome = "error"
        plan = Plan(error=f"the model took longer than {settings.timeout_s:g} s")
    await _carry_out(plan, registry, pool, settings, purge_l1)
    summary = summarise(plan, settings)
    report: dict[str, Any] = {
        "started_at": started.isoformat(),
        "ended_at": datetime.now(UTC).isoformat(),
        "mode": "apply" if settings.apply else "dry_run",
        "model": settings.model,
        "outcome": outcome,
        "summary": summary,
        "plan_error": plan.error,
        "actions": [v.as_json() for v in plan.verdicts],
        "answer": None if answer is None else answer[:8_000],
        "playbook_seen": playbook.version if playbook else None,
        "state": state,
    }
    report_id, version = await _store(pool, report, started, plan, playbook, settings)
    report |= {"id": report_id, "playbook_version": version}
    return RedRun(report_id, outcome, summary, report)


def summarise(plan: Plan, settings: RedSettings) -> str:
    """One line on what the run did."""
    if plan.error is not None and not plan.verdicts:
        return plan.error
    counts: dict[str, int] = {}
    for verdict in plan.verdicts:
        counts[verdict.status] = counts.get(verdict.status, 0) + 1
    parts = [f"{n} {status}" for status, n in sorted(counts.items())] or ["no action proposed"]
    mode = "apply" if settings.apply else "dry run"
    return f"{mode}: " + ", ".join(parts)


async def _store(
    pool: asyncpg.Pool,
    report: dict[str, Any],
    started: datetime,
    plan: Plan,
    previous: PlaybookVersion | None,
    settings: RedSettings,
) -> tuple[int, int]:
    text = plan.playbook if plan.playbook is not None else (previous.text if previous else "")
    async with pool.acquire() as conn, conn.transaction():
        report_id: int = await conn.fetchval(
            "INSERT INTO red_reports (started_at, ended_at, mode, model, outcome, report) "
            "VALUES ($1, now(), $2, $3, $4, $5::jsonb) RETURNING id",
            started,
            report["mode"],
            settings.model,
            report["outcome"],
            json.dumps(report, default=str),
        )
        version = await write_playbook(conn, text, "red", report_id)
        await conn.execute(
            "UPDATE red_reports SET report = report || jsonb_build_object('id', id, "
            "'playbook_version', $2::bigint) WHERE id = $1",
            report_id,
            version.version,
        )
    return report_id, version.version


async def list_reports(conn: asyncpg.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The newest RED reports, newest first."""
    rows = await conn.fetch("SELECT report FROM red_reports ORDER BY id DESC LIMIT $1", limit)
    return [json.loads(r["report"]) for r in rows]


def _version(row: asyncpg.Record) -> PlaybookVersion:
    return PlaybookVersion(
        row["version"], row["text"], row["source"], row["report_id"], row["created_at"]
    )


async def current_playbook(conn: asyncpg.Connection) -> PlaybookVersion | None:
    """The playbook in force (its newest version), or None before the first run."""
    row = await conn.fetchrow(
        "SELECT version, text, source, report_id, created_at FROM red_playbook "
        "ORDER BY version DESC LIMIT 1"
    )
    return _version(row) if row is not None else None


async def playbook_versions(conn: asyncpg.Connection, limit: int = 50) -> list[PlaybookVersion]:
    """The newest playbook versions, newest first."""
    rows = await conn.fetch(
        "SELECT version, text, source, report_id, created_at FROM red_playbook "
        "ORDER BY version DESC LIMIT $1",
        limit,
    )
    return [_version(r) for r in rows]


async def write_playbook(
    conn: asyncpg.Connection, text: str, source: str, report_id: int | None = None
) -> PlaybookVersion:
    """Add a version (the new playbook in force)."""
    row = await conn.fetchrow(
        "INSERT INTO red_playbook (text, source, report_id) VALUES ($1, $2, $3) "
        "RETURNING version, text, source, report_id, created_at",
        text,
        source,
        report_id,
    )
    return _version(row)


async def rollback_playbook(conn: asyncpg.Connection, version: int) -> PlaybookVersion | None:
    """Make an older version's text current again, as a new version; None if it never existed."""
    text = await conn.fetchval("SELECT text FROM red_playbook WHERE version = $1", version)
    if text is None:
        return None
    return await write_playbook(conn, text, "rollback")
