"""What the pool looks like now, read from the registry: one row per connected worker.

The admin API (``GET /admin/api/workers``) and the web pages (the admin dashboard, the public
molecule) show the same rows; the public ones drop what names a person (:func:`public_row`).
``tokens_per_s`` is the hub's own measurement, never a figure the worker reported.
"""

from __future__ import annotations

import time
from typing import Any

from inference import identity
from inference.registry import WorkerRegistry

PUBLIC_FIELDS = (
    "id",
    "name",
    "hardware",
    "trust",
    "trust_name",
    "models",
    "slots",
    "in_flight",
    "served_share",
    "target_share",
    "tokens_per_s",
    "tokens_served",
    "excluded",
)
"""The fields of a worker row that anyone may see: no owner, no timings of its link."""


def worker_rows(registry: WorkerRegistry, now: float | None = None) -> list[dict[str, Any]]:
    """Connected workers: trust, served share vs target, measured speed, jobs in flight."""
    links = list(registry.workers.values())
    targets = registry.router.targets(w for w in links if w.excluded is None)
    now = time.monotonic() if now is None else now
    return [
        {
            "id": w.id,
            "name": w.name,
            "owner_id": str(w.owner_id) if w.owner_id else None,
            "hardware": w.hardware,
            "trust": w.trust,
            "trust_name": identity.TRUST_NAMES[w.trust],
            "models": sorted(w.models),
            "slots": w.slots,
            "in_flight": len(w.jobs),
            "served_share": round(registry.router.served_share(w.id), 4),
            "target_share": round(targets.get(w.id, 0.0), 4),
            "tokens_per_s": registry.router.speed(w.id),
            "tokens_served": w.tokens_served,
            "excluded": w.excluded,
            "tools_ok": w.tools_ok,
            "connected_s": round(now - w.connected_at, 1),
            "last_seen_s": round(now - w.last_seen, 1),
        }
        for w in links
    ]


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """A worker row without the fields that are not public (:data:`PUBLIC_FIELDS`)."""
    return {key: row[key] for key in PUBLIC_FIELDS}
