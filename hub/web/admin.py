"""The admin dashboard's pool pages: the live overview, jobs, RED, the checker's benchmarks.

Every page reads what the admin API reads, through the same domain functions: the worker rows
of :mod:`inference.pool_view`, the queue's snapshot, exclusions, the scheduler's runs, RED's
reports and playbook, the checker's results. The overview is live twice over: the molecule
follows ``GET /pool/events``, and its tables re-render every few seconds through htmx
(``/admin/pool/tables``); without JavaScript the page shows them as they were when loaded.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from hub import accounts
from hub.scheduler import UnknownJobError, last_runs, recent_runs
from hub.state import HubState
from hub.web.pool import pool_snapshot
from hub.web.session import CsrfChecked, WebAdminDep, WebForbidden, hub_state
from hub.web.templating import render
from inference.checker import recent_results
from inference.exclusions import recent_exclusions
from inference.pool_view import worker_rows
from inference.red import current_playbook, list_reports, playbook_versions, write_playbook

router = APIRouter()

JobName = Annotated[str, Path(pattern=r"^[a-z0-9_]{1,64}$")]


async def pool_tables(state: HubState) -> dict[str, Any]:
    """Workers (with their owners' names), exclusions, the queue and the models, as of now."""
    registry = state.workers
    async with state.db.pool.acquire() as conn:
        exclusions = await recent_exclusions(conn)
        owners = {str(u.id): u.name for u in await accounts.list_users(conn)}
    workers = worker_rows(registry)
    for row in workers:
        row["owner"] = owners.get(row["owner_id"] or "", "")
    return {
        "workers": sorted(workers, key=lambda w: w["name"]),
        "exclusions": exclusions,
        "queue": registry.queue.snapshot(time.monotonic()),
        "models": registry.models(),
    }


@router.get("/admin")
async def overview(request: Request, _: WebAdminDep) -> HTMLResponse:
    """The pool now: the molecule, workers, exclusions, queue and models."""
    state = hub_state(request)
    context = {"pool": await pool_snapshot(state), **await pool_tables(state)}
    return render(request, "admin/overview.html", context)


@router.get("/admin/pool/tables")
async def overview_tables(request: Request, _: WebAdminDep) -> HTMLResponse:
    """The overview's tables alone (htmx refreshes them in place)."""
    return render(request, "admin/_pool_tables.html", await pool_tables(hub_state(request)))


@router.get("/admin/jobs")
async def jobs_page(request: Request, _: WebAdminDep) -> HTMLResponse:
    """Every scheduled job with its schedule and last run, then the newest runs."""
    state = hub_state(request)
    scheduler = state.scheduler
    async with state.db.pool.acquire() as conn:
        last = await last_runs(conn)
        runs = await recent_runs(conn, limit=30)
    jobs = []
    if scheduler is not None:
        for name, spec in scheduler.jobs.items():
            next_run = scheduler.next_run_at(name)
            jobs.append(
                {
                    "name": name,
                    "description": spec.description,
                    "interval_s": spec.interval_s,
                    "next_run_at": next_run,
                    "running": scheduler.running(name),
                    "last_run": last.get(name),
                }
            )
    return render(request, "admin/jobs.html", {"jobs": jobs, "runs": runs})


@router.post("/admin/jobs/{name}/run")
async def run_job(request: Request, name: JobName, _: WebAdminDep, __: CsrfChecked) -> Response:
    """Run a job now (as ``POST /admin/api/jobs/{name}/run``), then back to the jobs page."""
    scheduler = hub_state(request).scheduler
    if scheduler is None:
        raise WebForbidden("The scheduler is not running in this hub.", 503)
    try:
        await scheduler.run_now(name, "api")  # the admin API's trigger: same action
    except UnknownJobError:
        raise WebForbidden(f"No job named {name!r}.", 404) from None
    return RedirectResponse("/admin/jobs", status_code=303)


@router.get("/admin/red")
async def red_page(request: Request, _: WebAdminDep) -> HTMLResponse:
    """RED's newest reports, and the playbook in force with its versions."""
    async with hub_state(request).db.pool.acquire() as conn:
        reports = await list_reports(conn, 10)
        current = await current_playbook(conn)
        versions = await playbook_versions(conn, 10)
    context = {"reports": reports, "current": current, "versions": versions}
    return render(request, "admin/red.html", context)


@router.post("/admin/red/playbook")
async def change_playbook(
    request: Request,
    _: WebAdminDep,
    __: CsrfChecked,
    text: Annotated[str, Form(min_length=1, max_length=20_000)],
) -> Response:
    """Set the playbook's text: a new version becomes current (source ``admin``)."""
    async with hub_state(request).db.pool.acquire() as conn:
        await write_playbook(conn, text, "admin")
    return RedirectResponse("/admin/red", status_code=303)


@router.get("/admin/benchmarks")
async def benchmarks_page(request: Request, _: WebAdminDep) -> HTMLResponse:
    """The checker's newest results: speed, first-token time, known answer, tools."""
    async with hub_state(request).db.pool.acquire() as conn:
        results = await recent_results(conn, 50)
    return render(request, "admin/benchmarks.html", {"results": results})
