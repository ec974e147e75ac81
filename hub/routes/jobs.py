"""Admin views of the scheduled jobs and the checker's results (admin token)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from hub.deps import AdminPrincipal, State
from hub.errors import HubError, NotFoundError
from hub.scheduler import Scheduler, UnknownJobError, last_runs, recent_runs
from hub.state import HubState
from inference.checker import recent_results

router = APIRouter(prefix="/admin/api", tags=["admin"])

Limit = Annotated[int, Query(ge=1, le=500, description="Most rows returned.")]


def _scheduler(state: HubState) -> Scheduler:
    if state.scheduler is None:
        raise HubError("The scheduler is not running.", code="scheduler_unavailable")
    return state.scheduler


@router.get("/jobs")
async def list_jobs(state: State, _: AdminPrincipal, limit: Limit = 20) -> dict[str, Any]:
    """Every job with its schedule, whether it runs now, its last run; then the newest runs."""
    scheduler = _scheduler(state)
    async with state.db.pool.acquire() as conn:
        last = await last_runs(conn)
        runs = await recent_runs(conn, limit=limit)
    data = []
    for name, spec in scheduler.jobs.items():
        next_run = scheduler.next_run_at(name)
        data.append(
            {
                "name": name,
                "description": spec.description,
                "interval_s": spec.interval_s,
                "scheduled": next_run is not None,
                "next_run_at": next_run.isoformat() if next_run else None,
                "running": scheduler.running(name),
                "needs_hub": spec.needs_hub,
                "last_run": last[name].as_json() if name in last else None,
            }
        )
    return {"object": "list", "data": data, "runs": [r.as_json() for r in runs]}


@router.post("/jobs/{name}/run")
async def run_job_now(name: str, state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Run a job now and answer with its recorded run (``outcome`` ok, error or skipped)."""
    try:
        run = await _scheduler(state).run_now(name, "api")
    except UnknownJobError:
        known = ", ".join(_scheduler(state).jobs)
        raise NotFoundError(f"No job named {name!r} (jobs: {known}).", param="name") from None
    return run.as_json()


@router.get("/benchmarks")
async def list_benchmarks(state: State, _: AdminPrincipal, limit: Limit = 50) -> dict[str, Any]:
    """The checker's newest results, newest first, with the raw answers."""
    async with state.db.pool.acquire() as conn:
        rows = await recent_results(conn, limit)
    return {"object": "list", "data": rows}
