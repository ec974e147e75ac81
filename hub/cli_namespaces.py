"""``iamine namespaces``: the admin's commands for shared note namespaces, on the database.

Registered on the CLI in ``hub/cli.py``. The model (who creates, reads and writes a namespace)
is in ``memory/namespaces.py`` and docs/memory.md. The commands take ``hub.cli``'s helpers when
they run, not at import: ``hub.cli`` imports this module to register it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated
from uuid import UUID

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from hub import accounts
from memory import namespaces
from memory.errors import MemoryStoreError
from memory.namespaces import WriteRule

app = typer.Typer(
    help="Shared note namespaces: create, list, delete; subscribe users; allow users to create.",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: IAMINE_DATA_DIR or the user's)."),
]
NameArgument = Annotated[str, typer.Argument(help="pool:<name> or fed:<name>.")]
UserArgument = Annotated[str, typer.Argument(help="User name.")]


def _run[T](data_dir: Path | None, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    from hub.cli import run_on_connection

    return run_on_connection(data_dir, work, (MemoryStoreError,))


@app.command("create")
def create(
    name: NameArgument,
    open_: Annotated[bool, typer.Option("--open", help="Any user may subscribe themself.")] = False,
    write_rule: Annotated[
        WriteRule, typer.Option(help="members: every subscriber writes; owner: only its owner.")
    ] = WriteRule.MEMBERS,
    owner: Annotated[
        str | None, typer.Option(help="User who owns it (and is subscribed to it).")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create a shared namespace; nobody reads it until subscribed (or it is --open)."""

    async def work(conn: asyncpg.Connection) -> None:
        owner_id = None if owner is None else (await accounts.get_user(conn, owner)).id
        await namespaces.create_namespace(
            conn, name, write_rule=write_rule, open=open_, owner_id=owner_id
        )

    _run(data_dir, work)
    console.print(f"Created {name} ({'open' if open_ else 'closed'}, {write_rule.value} write).")


@app.command("list")
def list_(data_dir: DataDirOption = None) -> None:
    """List shared namespaces with their rule, openness, owner, notes and subscribers."""
    found = _run(data_dir, namespaces.all_namespaces)
    table = Table("name", "write", "access", "owner", "notes", "subscribers")
    for n in found:
        table.add_row(
            n.name,
            n.write_rule.value,
            "open" if n.open else "closed",
            n.owner or "(admin)",
            str(n.notes),
            ", ".join(n.subscribers),
        )
    console.print(table)


@app.command("delete")
def delete(name: NameArgument, data_dir: DataDirOption = None) -> None:
    """Delete a shared namespace with every note in it and its subscriptions."""
    count = _run(data_dir, lambda conn: namespaces.delete_namespace(conn, name))
    console.print(f"Deleted {name} and its {count} note(s).")


async def _user_id(conn: asyncpg.Connection, user: str) -> UUID:
    return (await accounts.get_user(conn, user)).id


@app.command("subscribe")
def subscribe(name: NameArgument, user: UserArgument, data_dir: DataDirOption = None) -> None:
    """Subscribe a user to a namespace: their chats and searches then read it."""

    async def work(conn: asyncpg.Connection) -> None:
        await namespaces.subscribe(conn, name, await _user_id(conn, user), by_admin=True)

    _run(data_dir, work)
    console.print(f"Subscribed {user} to {name}.")


@app.command("unsubscribe")
def unsubscribe(name: NameArgument, user: UserArgument, data_dir: DataDirOption = None) -> None:
    """Unsubscribe a user from a namespace (the notes they wrote there stay)."""

    async def work(conn: asyncpg.Connection) -> None:
        await namespaces.unsubscribe(conn, name, await _user_id(conn, user))

    _run(data_dir, work)
    console.print(f"Unsubscribed {user} from {name}.")


@app.command("grant")
def grant(user: UserArgument, data_dir: DataDirOption = None) -> None:
    """Allow a user to create shared namespaces (which they then own)."""

    async def work(conn: asyncpg.Connection) -> None:
        await namespaces.grant_creation(conn, await _user_id(conn, user))

    _run(data_dir, work)
    console.print(f"{user} may now create shared namespaces.")


@app.command("revoke")
def revoke(user: UserArgument, data_dir: DataDirOption = None) -> None:
    """Withdraw a user's permission to create shared namespaces (theirs stay)."""

    async def work(conn: asyncpg.Connection) -> None:
        await namespaces.revoke_creation(conn, await _user_id(conn, user))

    _run(data_dir, work)
    console.print(f"{user} may no longer create shared namespaces.")
