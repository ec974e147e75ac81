"""``iamine ledger``: the $IAMINE books from the command line: balances, statements, peers, verify.

Registered on the CLI in ``hub/cli.py``. The ledger itself is ``economy/`` (docs/economy.md);
these commands only read it. They take ``hub.cli``'s helpers when they run, not at import:
``hub.cli`` imports this module to register it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from economy import peering
from economy.accounts import (
    OWNED_KINDS,
    AccountKey,
    AccountKind,
    all_accounts,
    read_balance,
    statement,
)
from economy.errors import LedgerError
from economy.pricing import MICRO
from economy.verify import verify
from hub import accounts

app = typer.Typer(
    help="The $IAMINE ledger: balances, an account's statement, verify the books.",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: IAMINE_DATA_DIR or the user's)."),
]
_POOL_KINDS = {k.value: k for k in AccountKind if k not in OWNED_KINDS}


def credits(micro: int) -> str:
    """Micro-credits as $IAMINE with all six decimals (exact, no float)."""
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{fraction:06d}"


def _run[T](data_dir: Path | None, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    from hub.cli import run_on_connection

    return run_on_connection(data_dir, work, (LedgerError,))


async def _user_names(conn: asyncpg.Connection) -> dict[str, str]:
    return {r["id"]: r["name"] for r in await conn.fetch("SELECT id::text AS id, name FROM users")}


async def _account_key(conn: asyncpg.Connection, name: str) -> AccountKey:
    """Parse a command-line account name (see ``statement``'s help)."""
    if name in _POOL_KINDS:
        return AccountKey(_POOL_KINDS[name])
    prefix, _, rest = name.partition(":")
    if prefix == "peer" and rest:
        return AccountKey.peer_pool(rest)
    if prefix in ("earnings", "user") and rest:
        user = await accounts.get_user(conn, rest)
        return (
            AccountKey.worker_owner(user.id) if prefix == "earnings" else AccountKey.user(user.id)
        )
    return AccountKey.user((await accounts.get_user(conn, name)).id)


def _label(key: AccountKey, names: dict[str, str]) -> str:
    if key.kind is AccountKind.USER:
        return names.get(key.ref, key.ref)
    if key.kind is AccountKind.WORKER_OWNER:
        return f"earnings:{names.get(key.ref, key.ref)}"
    if key.kind is AccountKind.PEER_POOL:
        return f"peer:{key.ref}"
    return key.kind.value


@app.command("balance")
def balance(
    user: Annotated[
        str | None, typer.Argument(help="A user's accounts only (spending and earnings).")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Show balances in $IAMINE: posted, held by open jobs, available (expired holds excluded)."""

    async def work(conn: asyncpg.Connection) -> list[tuple[str, list[str]]]:
        names, now = await _user_names(conn), datetime.now(UTC)
        keys = [a.key for a in await all_accounts(conn)]
        if user is not None:
            found = await accounts.get_user(conn, user)
            keys = [k for k in keys if k.ref == str(found.id) and k.kind in OWNED_KINDS]
        rows = []
        for key in keys:
            b = await read_balance(conn, key, now)
            amounts = [b.balance, b.pending_debits, b.pending_credits, b.available]
            rows.append((_label(key, names), [credits(a) for a in amounts]))
        return rows

    table = Table("account", "balance", "held", "incoming", "available", title="$IAMINE")
    for label, amounts in _run(data_dir, work):
        table.add_row(label, *amounts)
    console.print(table)


@app.command("statement")
def statement_(
    account: Annotated[
        str,
        typer.Argument(
            help="A user name (or user:<name>), earnings:<user> for what their workers earned, "
            "peer:<pool>, or pool_fee, pool_treasury, trial_grant, clearing."
        ),
    ],
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Entries to show.")] = 50,
    before: Annotated[
        int | None, typer.Option(help="Show entries older than this entry id (paging).")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Show an account's entries, newest first, with its balances after each (held is negative)."""

    async def work(conn: asyncpg.Connection) -> list[list[str]]:
        key = await _account_key(conn, account)
        lines = await statement(conn, key, limit=limit, before=before)
        return [
            [
                str(ln.entry_id),
                ln.created_at.isoformat(timespec="seconds"),
                ln.transfer_key,
                f"{ln.phase.value} {ln.side.value}",
                credits(ln.amount),
                credits(ln.balance_after),
                credits(ln.pending_after),
                ln.memo,
            ]
            for ln in lines
        ]

    table = Table(
        "entry", "at", "transfer", "kind", "amount", "balance after", "pending after", "memo"
    )
    for row in _run(data_dir, work):
        table.add_row(*row)
    console.print(table)


@app.command("peers")
def peers_(
    since: Annotated[
        datetime | None, typer.Option(help="Only chats posted at or after this time (ISO).")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Show this pool's books with each peer pool: chats served for it, forwarded to it.

    The peer's own books are compared with these, job by job, by
    ``GET /admin/api/federation/peers/{pool_id}/reconcile`` (docs/federation.md).
    """
    start = since or datetime(1970, 1, 1, tzinfo=UTC)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)

    async def work(conn: asyncpg.Connection) -> list[list[str]]:
        keys = [a.key for a in await all_accounts(conn) if a.key.kind is AccountKind.PEER_POOL]
        rows = []
        for key in keys:
            served = await peering.served_for(conn, key.ref, start)
            forwarded = await peering.forwarded_to(conn, key.ref, start)
            balance = await read_balance(conn, key, datetime.now(UTC))
            rows.append(
                [
                    key.ref,
                    str(len(served)),
                    credits(sum(line.amount for line in served)),
                    str(len(forwarded)),
                    credits(sum(line.amount for line in forwarded)),
                    credits(balance.balance),
                ]
            )
        return rows

    table = Table(
        "peer pool", "served for it", "charged", "forwarded to it", "owed", "balance",
        title="$IAMINE between pools",
    )  # fmt: skip
    for row in _run(data_dir, work):
        table.add_row(*row)
    console.print(table)


@app.command("verify")
def verify_(data_dir: DataDirOption = None) -> None:
    """Recompute every balance from the entries and check every invariant; exit 1 on a problem."""
    report = _run(data_dir, verify)
    console.print(
        f"{report.accounts} accounts, {report.transfers} transfers, {report.entries} entries, "
        f"{report.open_holds} open holds, {report.posted_jobs} jobs charged."
    )
    if report.ok:
        console.print("[bold green]ledger verified[/]: every check passed.")
        return
    for problem in report.problems:
        err_console.print(f"[bold red]problem:[/] {problem}")
    raise typer.Exit(1)
