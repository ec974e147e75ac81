"""``iamine workers``: register workers, list them with their trust, change them, set trust.

On the database, like the other admin commands. A running hub sees a trust change within
``IAMINE_INFERENCE__TRUST_SYNC_S``; hardware, slots and models apply from the worker's next
connection. The model is in ``inference/identity.py`` and docs/trust.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, cast

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from hub import accounts
from inference import identity
from inference.protocol import Hardware

TRUST_REASON = "set by the admin"

app = typer.Typer(
    help="Worker records: register, list, update, set trust (docs/trust.md).",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: IAMINE_DATA_DIR or the user's)."),
]
NameArgument = Annotated[str, typer.Argument(help="The worker's name (unique in the pool).")]
HardwareOption = Annotated[str | None, typer.Option(help="gpu or cpu.")]
SlotsOption = Annotated[int | None, typer.Option(min=1, max=1024, help="Most jobs at once.")]
ModelOption = Annotated[
    list[str] | None,
    typer.Option("--model", help="A model it may serve (repeatable; none: any in the catalog)."),
]


def _run[T](data_dir: Path | None, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    from hub.cli import run_on_connection

    return run_on_connection(data_dir, work, (identity.WorkerRecordError,))


def _hardware(value: str | None) -> Hardware | None:
    if value not in (None, "gpu", "cpu"):
        err_console.print(f"[bold red]error:[/] hardware is gpu or cpu, not {value!r}")
        raise typer.Exit(2)
    return cast(Hardware | None, value)


async def _record(conn: asyncpg.Connection, name: str) -> identity.WorkerRecord:
    record = await identity.find_worker(conn, name)
    if record is None:
        raise identity.WorkerRecordError(f"No worker named {name!r}.", param="name")
    return record


@app.command("register")
def register(
    name: NameArgument,
    owner: Annotated[str, typer.Option(help="The user who owns it (and earns for it).")],
    hardware: HardwareOption = "cpu",
    slots: SlotsOption = identity.DEFAULT_SLOTS,
    model: ModelOption = None,
    trust: Annotated[
        int, typer.Option(min=0, max=3, help="0 new (default) … 3 granted by the admin.")
    ] = identity.NEW,
    data_dir: DataDirOption = None,
) -> None:
    """Register a worker for a user and print its token once (give it to the worker)."""
    chosen = _hardware(hardware) or "cpu"

    async def work(conn: asyncpg.Connection) -> str:
        async with conn.transaction():
            user = await accounts.get_user(conn, owner)
            record = await identity.register_worker(
                conn,
                name=name,
                owner_id=user.id,
                hardware=chosen,
                max_slots=slots or identity.DEFAULT_SLOTS,
                models=model or [],
                trust=trust,
                reason="registered by the admin",
            )
            issued = await accounts.create_token(
                conn, user_id=user.id, scopes=("worker",), name=name, worker_id=record.id
            )
        return issued.token

    token = _run(data_dir, work)
    console.print(f"Worker [bold]{name}[/] registered for {owner} at trust {trust}.")
    console.print("Its token (shown once; run it with IAMINE_WORKER_TOKEN=…):")
    console.print(token, soft_wrap=True, highlight=False)


@app.command("token")
def token(name: NameArgument, data_dir: DataDirOption = None) -> None:
    """Issue another token for an existing worker (for its owner) and print it once."""

    async def work(conn: asyncpg.Connection) -> str:
        record = await _record(conn, name)
        issued = await accounts.create_token(
            conn, user_id=record.owner_id, scopes=("worker",), name=name, worker_id=record.id
        )
        return issued.token

    console.print(_run(data_dir, work), soft_wrap=True, highlight=False)


@app.command("list")
def list_(
    owner: Annotated[str | None, typer.Option(help="Only this user's workers.")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Registered workers with their trust level (connected or not)."""

    async def work(conn: asyncpg.Connection) -> list[identity.WorkerRecord]:
        owner_id = (await accounts.get_user(conn, owner)).id if owner else None
        return await identity.list_workers(conn, owner_id)

    table = Table("name", "hardware", "slots", "models", "trust", "verified jobs", "since")
    for record in _run(data_dir, work):
        table.add_row(
            record.name,
            record.hardware,
            str(record.max_slots),
            ", ".join(record.models) or "any",
            f"{record.trust} {identity.TRUST_NAMES[record.trust]}",
            str(record.verified_jobs),
            f"{record.trust_changed_at:%Y-%m-%d %H:%M} ({record.trust_reason})",
        )
    console.print(table)


@app.command("update")
def update(
    name: NameArgument,
    hardware: HardwareOption = None,
    slots: SlotsOption = None,
    model: ModelOption = None,
    any_model: Annotated[
        bool, typer.Option("--any-model", help="Allow any model in the catalog again.")
    ] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Change what a worker is registered for (applies from its next connection)."""
    chosen = _hardware(hardware)
    models: list[str] | None = [] if any_model else model

    async def work(conn: asyncpg.Connection) -> identity.WorkerRecord:
        record = await _record(conn, name)
        return await identity.update_worker(
            conn, record.id, hardware=chosen, max_slots=slots, models=models
        )

    record = _run(data_dir, work)
    allowed = ", ".join(record.models) or "any model"
    console.print(f"{name}: {record.hardware}, {record.max_slots} slots, {allowed}.")


@app.command("trust")
def trust(
    name: NameArgument,
    level: Annotated[int, typer.Argument(min=0, max=3, help="0 new … 3 granted.")],
    reason: Annotated[str, typer.Option(help="Why (kept in its trust history).")] = TRUST_REASON,
    data_dir: DataDirOption = None,
) -> None:
    """Set a worker's trust level (a running hub applies it within seconds)."""

    async def work(conn: asyncpg.Connection) -> identity.WorkerRecord:
        record = await _record(conn, name)
        return await identity.set_trust(conn, record.id, level, reason)

    record = _run(data_dir, work)
    console.print(f"{name}: trust {record.trust} ({identity.TRUST_NAMES[record.trust]}).")
