"""The admin dashboard's economy page: ledger accounts and transfers, disputes to resolve.

The ledger reads as ``GET /admin/api/ledger`` does (:func:`hub.routes.account.ledger_overview`);
disputes are listed with :func:`economy.disputes.list_disputes` and resolved through
:func:`hub.slashing.resolve`, exactly as ``POST /admin/api/disputes/{id}/resolve``: upheld,
the worker is slashed; rejected, the earning settles as usual.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Path, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from economy.disputes import Decision, list_disputes
from economy.errors import DisputeNotFound, DisputeRefused, IdempotencyConflict
from hub.errors import HubError
from hub.routes.account import ledger_overview
from hub.slashing import resolve
from hub.web.session import CsrfChecked, WebAdminDep, WebForbidden, hub_state
from hub.web.templating import render

router = APIRouter()


@router.get("/admin/ledger")
async def ledger_page(request: Request, _: WebAdminDep) -> HTMLResponse:
    """Balances of every account, the newest transfers, and every dispute."""
    async with hub_state(request).db.pool.acquire() as conn:
        ledger = await ledger_overview(conn, 50)
        disputes = await list_disputes(conn, limit=100)
    context = {"ledger": ledger, "disputes": [d.as_dict(admin=True) for d in disputes]}
    return render(request, "admin/ledger.html", context)


@router.post("/admin/disputes/{dispute_id}/resolve")
async def resolve_dispute(
    request: Request,
    dispute_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    _: WebAdminDep,
    __: CsrfChecked,
    decision: Annotated[Decision, Form()],
    note: Annotated[str, Form(max_length=2_000)] = "",
) -> Response:
    """Uphold (refund, slash the worker, reset its trust) or reject (release) a dispute."""
    try:
        await resolve(hub_state(request), dispute_id, decision, note)
    except DisputeNotFound as exc:
        raise WebForbidden(exc.message, 404) from None
    except (DisputeRefused, IdempotencyConflict) as exc:
        raise WebForbidden(exc.message, 409) from None
    except HubError as exc:
        raise WebForbidden(exc.message, exc.status_code) from None
    return RedirectResponse("/admin/ledger", status_code=303)
