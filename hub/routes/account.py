"""A user's $IAMINE account (``/v1/account``) and the admin's view of the ledger.

Amounts are integer micro-credits (``MICRO`` make one $IAMINE), each beside its exact decimal
string (``*_iamine``). A user sees only their own accounts: what they spend from, what their
workers earned (settled to them, or still unsettled per worker until settlement releases it),
and their workers' trust. ``/admin/api/ledger`` lists every account and the recent transfers;
``/admin/api/ledger/verify`` recomputes the books (``iamine ledger verify``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Query

from economy.accounts import (
    Account,
    AccountKey,
    AccountKind,
    Balance,
    StatementLine,
    all_accounts,
    read_balance,
)
from economy.accounts import statement as account_statement
from economy.errors import AccountNotFound
from economy.transfers import Transfer
from economy.verify import verify
from hub import accounts
from hub.auth import Principal
from hub.billing import UNFUNDED_PRIORITY
from hub.cli_ledger import credits
from hub.deps import AdminPrincipal, State, UserPrincipal
from hub.errors import PermissionDeniedError
from inference import identity

router = APIRouter(prefix="/v1", tags=["account"])
admin_router = APIRouter(prefix="/admin/api", tags=["admin"])

Limit = Annotated[int, Query(ge=1, le=200, description="Items per page.")]
Before = Annotated[
    int | None, Query(ge=1, description="Cursor: only items older than this id (`next_before`).")
]


def _money(name: str, micro: int) -> dict[str, int | str]:
    return {name: micro, f"{name}_iamine": credits(micro)}


def _user_id(principal: Principal) -> UUID:
    if principal.user_id is None:
        raise PermissionDeniedError("This token acts for no user.")
    return principal.user_id


async def _balance(conn: asyncpg.Connection, key: AccountKey, now: datetime) -> Balance:
    """An account's balance, zero when it was never opened."""
    try:
        return await read_balance(conn, key, now)
    except AccountNotFound:
        return Balance(key, 0, 0, 0)


@router.get("/account")
async def get_account(state: State, principal: UserPrincipal) -> dict[str, Any]:
    """The caller's balance, what open chats hold, what they may spend, earnings and workers.

    ``pending`` is what the holds of unfinished chats reserve; ``available`` is the balance less
    that. ``priority`` is ``lowest`` while the caller's latest chat found no funds: their chats
    are still answered, behind the others. ``earnings.settled`` is what their workers earned and
    settlement released; ``earnings.unsettled`` is still within the dispute window.
    """
    user_id = _user_id(principal)
    now = datetime.now(UTC)
    async with state.db.pool.acquire() as conn:
        spending = await _balance(conn, AccountKey.user(user_id), now)
        settled = await _balance(conn, AccountKey.worker_owner(user_id), now)
        records = await identity.list_workers(conn, user_id)
        unsettled = [
            (await _balance(conn, AccountKey.worker_earnings(r.id), now)).balance for r in records
        ]
    billing = state.billing
    lowest = billing is not None and billing.priority(user_id) == UNFUNDED_PRIORITY
    return {
        "object": "account",
        "user_id": str(user_id),
        **_money("balance", spending.balance),
        **_money("pending", spending.pending_debits),
        **_money("available", spending.available),
        "priority": "lowest" if lowest else "normal",
        "earnings": {
            **_money("settled", settled.balance),
            **_money("unsettled", sum(unsettled)),
        },
        "workers": [
            {**record.as_dict(), **_money("unsettled", amount)}
            for record, amount in zip(records, unsettled, strict=True)
        ],
    }


async def _own_accounts(conn: asyncpg.Connection, user_id: UUID) -> dict[AccountKey, str]:
    """The caller's ledger accounts, each with the label its entries show."""
    owned = {AccountKey.user(user_id): "spending", AccountKey.worker_owner(user_id): "earnings"}
    for record in await identity.list_workers(conn, user_id):
        owned[AccountKey.worker_earnings(record.id)] = f"worker:{record.name}"
    return owned


@router.get("/account/ledger")
async def account_ledger(
    state: State, principal: UserPrincipal, limit: Limit = 50, before: Before = None
) -> dict[str, Any]:
    """The caller's ledger entries, newest first: spending, earnings, and each worker's.

    Page back with ``before=next_before``. An entry of an earning names no transfer: the job
    it paid for is another user's.
    """
    user_id = _user_id(principal)
    lines: list[tuple[str, AccountKey, StatementLine]] = []
    async with state.db.pool.acquire() as conn:
        for key, label in (await _own_accounts(conn, user_id)).items():
            try:
                found = await account_statement(conn, key, limit=limit + 1, before=before)
            except AccountNotFound:
                continue
            lines.extend((label, key, line) for line in found)
    lines.sort(key=lambda item: item[2].entry_id, reverse=True)
    page = lines[:limit]
    data = [
        {
            "id": line.entry_id,
            "account": label,
            "transfer": line.transfer_key if key.kind is AccountKind.USER else None,
            "kind": line.kind,
            "side": line.side.value,
            "phase": line.phase.value,
            **_money("amount", line.amount),
            **_money("balance_after", line.balance_after),
            **_money("pending_after", line.pending_after),
            "created_at": line.created_at.isoformat(),
            "memo": line.memo,
        }
        for label, key, line in page
    ]
    more = len(lines) > limit
    return {
        "object": "list",
        "data": data,
        "has_more": more,
        "next_before": page[-1][2].entry_id if more else None,
    }


def _account_out(account: Account, expired: int, names: dict[UUID, str]) -> dict[str, Any]:
    key = account.key
    owner = None
    if key.kind in (AccountKind.USER, AccountKind.WORKER_OWNER):
        owner = names.get(UUID(key.ref))
    held = account.debits_pending - expired
    return {
        "account": str(key),
        "kind": key.kind.value,
        "ref": key.ref or None,
        "user": owner,
        **_money("balance", account.balance),
        **_money("pending", held),
        **_money("available", account.balance - held),
    }


def _transfer_out(transfer: Transfer) -> dict[str, Any]:
    return {
        "id": transfer.id,
        "key": transfer.key,
        "kind": transfer.kind.value,
        **_money("amount", transfer.amount),
        "job_id": transfer.job_id,
        "funded": transfer.funded,
        "request": transfer.request,
        "expires_at": transfer.expires_at.isoformat() if transfer.expires_at else None,
        "memo": transfer.memo,
        "created_at": transfer.created_at.isoformat(),
    }


@admin_router.get("/ledger")
async def admin_ledger(
    state: State, _: AdminPrincipal, limit: Limit = 50, before: Before = None
) -> dict[str, Any]:
    """Every ledger account with its balance (expired holds excluded), and transfers, newest first.

    Transfers page back with ``before=next_before``; accounts are listed whole.
    """
    async with state.db.pool.acquire() as conn:
        return await ledger_overview(conn, limit, before)


async def ledger_overview(
    conn: asyncpg.Connection, limit: int, before: int | None = None
) -> dict[str, Any]:
    """Every account with its balance (expired holds excluded), and a page of transfers."""
    now = datetime.now(UTC)
    found = await all_accounts(conn)
    expired = dict(
        await conn.fetch(
            "SELECT account_id, sum(amount)::bigint FROM ledger_open_holds "
            "WHERE expires_at <= $1 GROUP BY account_id",
            now,
        )
    )
    names = {user.id: user.name for user in await accounts.list_users(conn)}
    rows = await conn.fetch(
        "SELECT * FROM ledger_transfers WHERE ($1::bigint IS NULL OR id < $1) "
        "ORDER BY id DESC LIMIT $2",
        before,
        limit + 1,
    )
    transfers = [Transfer.from_row(row) for row in rows]
    page = transfers[:limit]
    more = len(transfers) > limit
    return {
        "object": "ledger",
        "accounts": [_account_out(a, expired.get(a.id, 0), names) for a in found],
        "transfers": [_transfer_out(t) for t in page],
        "has_more": more,
        "next_before": page[-1].id if more else None,
    }


@admin_router.get("/ledger/verify")
async def admin_ledger_verify(state: State, _: AdminPrincipal) -> dict[str, Any]:
    """Recompute every balance from the entries and check every invariant (never writes)."""
    async with state.db.pool.acquire() as conn:
        report = await verify(conn)
    return {
        "object": "ledger_verification",
        "ok": report.ok,
        "accounts": report.accounts,
        "transfers": report.transfers,
        "entries": report.entries,
        "open_holds": report.open_holds,
        "posted_jobs": report.posted_jobs,
        "problems": list(report.problems),
    }
