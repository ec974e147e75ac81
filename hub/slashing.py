"""Slashing and dispute resolution from the hub: the ledger, the worker's trust and its live link.

The economy slashes money (economy/slashing.py); only the hub knows worker records and live
links. So here, in one transaction, the ledger's slash (unsettled earnings forfeited, users
refunded, the penalty from the owner to the pool treasury, the event and its evidence) and the
trust reset to 0; after the commit, the connected worker's live link drops to trust 0 so it
gets no job that needs more, at once.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from economy.disputes import Decision, Dispute, resolve_dispute
from economy.ledger import Ledger
from economy.slashing import SlashingEvent, find_event, slash
from hub.errors import NotFoundError
from hub.state import HubState
from inference import identity


def ledger_of(state: HubState) -> Ledger:
    """The hub's ledger under the live pool config's policy (the chat path's when billing runs)."""
    if state.billing is not None:
        return state.billing.ledger()
    return Ledger(state.workers.config.ledger, lambda: datetime.now(UTC))


def finding_key(worker_id: UUID, reason: str, evidence: dict[str, Any]) -> str:
    """A slash key from what was found: the same finding reported twice slashes once."""
    canonical = json.dumps([str(worker_id), reason, evidence], sort_keys=True, default=str)
    return "finding-" + hashlib.sha256(canonical.encode()).hexdigest()[:40]


async def _reset(conn: asyncpg.Connection, event: SlashingEvent) -> None:
    """Reset the slashed worker's trust to 0 (a record deleted since keeps its event)."""
    if await identity.get_worker(conn, event.worker_id) is not None:
        await identity.reset_trust(conn, event.worker_id, f"slashed: {event.reason}"[:200])


def _drop_link(state: HubState, worker_id: UUID) -> None:
    state.workers.apply_trust(str(worker_id), identity.NEW)


async def slash_worker(
    state: HubState,
    worker_id: UUID,
    reason: str,
    evidence: dict[str, Any],
    *,
    key: str | None = None,
) -> dict[str, Any]:
    """Slash a worker for a finding (a failed canary, forged usage, a wrong model).

    Contract, for the checker and the admin:

    - ``worker_id`` is the worker record's id; an unknown one raises :class:`NotFoundError`.
    - ``reason`` (1–500 characters) and ``evidence`` (a JSON object: prompt, expected and
      received answers, usage...) are stored with the event and shown by
      ``GET /admin/api/slashing``; bad ones raise :class:`economy.errors.InvalidLedgerInput`.
    - ``key`` makes it idempotent; by default it is derived from the worker, the reason and the
      evidence (:func:`finding_key`), so the same finding reported twice slashes once. A key
      seen before returns its first event and changes nothing (trust included).
    - In one transaction: every unsettled earning of the worker is forfeited (each job's user
      refunded), the live pool config's ``ledger.slash_penalty`` moves from the owner's account
      to the pool treasury (into debt if need be), the event is recorded, and the worker's trust
      is reset to 0. After the commit the worker's live link drops to trust 0.
    - Returns the event as the admin API shows it. Call it outside a database transaction.
    """
    key = key or finding_key(worker_id, reason, evidence)
    ledger = ledger_of(state)
    async with state.db.pool.acquire() as conn:
        record = await identity.get_worker(conn, worker_id)
        if record is None:
            raise NotFoundError(f"No worker has id {worker_id}.", param="worker_id")
        if (seen := await find_event(conn, key)) is not None and seen.worker_id == worker_id:
            return seen.as_dict()
        async with conn.transaction():
            event = await slash(
                conn,
                ledger,
                worker_id,
                record.owner_id,
                reason,
                evidence,
                ledger.policy.slash_penalty,
                key=key,
            )
            await _reset(conn, event)
    _drop_link(state, worker_id)
    return event.as_dict()


async def resolve(
    state: HubState, dispute_id: int, decision: Decision, note: str
) -> tuple[Dispute, SlashingEvent | None]:
    """Resolve a dispute; an upheld one slashes the worker and resets its trust, in one go."""
    ledger = ledger_of(state)
    async with state.db.pool.acquire() as conn, conn.transaction():
        dispute, event = await resolve_dispute(conn, ledger, dispute_id, decision, note)
        if event is not None:
            await _reset(conn, event)
    if event is not None:
        _drop_link(state, event.worker_id)
    return dispute, event
