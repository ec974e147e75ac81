"""The ``iamine`` commands that run long-lived processes beside a hub: a worker, an MCP server.

Registered on the CLI in ``hub/cli.py``; kept apart because they import the inference engines
and the MCP SDK, which the account and database commands do not need.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, cast

import typer
from pydantic import ValidationError
from rich.console import Console

from hub.config import ServerSettings
from hub.observability import configure_logging

console = Console()
err_console = Console(stderr=True)


BUNDLED_MODEL_ID = "smollm2-135m-instruct"


def worker(
    hub: Annotated[str, typer.Option(help="Hub URL, like http://127.0.0.1:8420.")],
    token: Annotated[
        str,
        typer.Option(envvar="IAMINE_WORKER_TOKEN", help="A worker-scope token (or the env var)."),
    ],
    model: Annotated[
        Path | None, typer.Option(help="GGUF model file (default: the bundled SmolLM2-135M).")
    ] = None,
    model_id: Annotated[
        str | None, typer.Option(help="Name to serve the model under (default: from the file).")
    ] = None,
    upstream: Annotated[
        str | None,
        typer.Option(help="Front an OpenAI-compatible server (llama-server, Ollama, vLLM)."),
    ] = None,
    upstream_key: Annotated[
        str | None, typer.Option(envvar="IAMINE_UPSTREAM_KEY", help="API key of the upstream.")
    ] = None,
    slots: Annotated[int, typer.Option(min=1, help="Jobs run at once.")] = 1,
    name: Annotated[
        str | None,
        typer.Option(help="A label for logs; the pool knows the worker by its token's record."),
    ] = None,
    hardware: Annotated[
        str,
        typer.Option(
            help="gpu, cpu or auto (llama.cpp: its GPU offload; --upstream: this machine's "
            "GPU devices). The hub caps it by the worker's record."
        ),
    ] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="llama.cpp CPU threads.")] = None,
    context: Annotated[
        int | None,
        typer.Option(min=256, help="Context size in tokens (default: the model's trained one)."),
    ] = None,
    log_format: Annotated[
        str,
        typer.Option(
            envvar="IAMINE_WORKER_LOG_FORMAT",
            help="Log lines on stderr: console (readable) or json (one object a line, as the "
            "hub writes them; the hub's local worker follows the hub's).",
        ),
    ] = "console",
    log_level: Annotated[
        str,
        typer.Option(envvar="IAMINE_WORKER_LOG_LEVEL", help="debug, info, warning or error."),
    ] = "info",
) -> None:
    """Serve a model to a hub: llama.cpp in-process, or an upstream server with --upstream."""
    import socket

    from inference.engine import LlamaEngine, bundled_model_path
    from inference.protocol import Hardware, InferenceError
    from inference.upstream import UpstreamEngine
    from inference.worker import detect_hardware, detect_machine_hardware, run_worker

    try:
        log_settings = ServerSettings(log_format=log_format, log_level=log_level)
    except ValidationError as exc:
        first = exc.errors()[0]
        option = "--" + str(first["loc"][0]).replace("_", "-")
        err_console.print(f"[bold red]error:[/] {option} {first['input']!r}: {first['msg']}")
        raise typer.Exit(2) from None
    configure_logging(log_settings)
    worker_name = name or socket.gethostname()
    if hardware not in ("auto", "gpu", "cpu"):
        err_console.print(f"[bold red]error:[/] --hardware is gpu, cpu or auto, not {hardware!r}")
        raise typer.Exit(2)
    stated: Hardware | None = None if hardware == "auto" else cast(Hardware, hardware)

    async def serve_upstream(url: str) -> None:
        async with UpstreamEngine(url, api_key=upstream_key, model=model_id) as engine:
            await engine.refresh_models()
            declared = stated or detect_machine_hardware()
            await run_worker(
                hub, token, engine, worker_name=worker_name, hardware=declared, slots=slots
            )

    async def serve_local(engine: LlamaEngine) -> None:
        declared = stated or detect_hardware()
        await run_worker(
            hub, token, engine, worker_name=worker_name, hardware=declared, slots=slots
        )

    try:
        if upstream is not None:
            _run_until_signal(serve_upstream(upstream))
            return
        path = model or bundled_model_path()
        engine = LlamaEngine(
            path,
            n_ctx=context,
            n_threads=threads,
            model_id=model_id or (BUNDLED_MODEL_ID if model is None else None),
        )
        with console.status(f"Loading {path.name}…", spinner="dots"):
            engine.load()
        console.print(f"Serving [bold]{engine.model_id}[/] to {hub} as {worker_name}.")
        _run_until_signal(serve_local(engine))
    except InferenceError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(1) from None


def _run_until_signal(work: Awaitable[None]) -> None:
    """Run until done or until SIGINT/SIGTERM, which cancel the work (the worker says leave)."""
    import signal

    async def main() -> None:
        task = asyncio.ensure_future(work)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # uvloop (installed with uvicorn[standard]) when present: a worker relays one frame per token.
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    asyncio.run(main(), loop_factory=loop_factory)


def mcp(
    hub: Annotated[
        str | None,
        typer.Option(
            envvar="IAMINE_HUB_URL", help="Hub URL, like http://127.0.0.1:8420 (default: login's)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="IAMINE_TOKEN", help="Your user token (default: the login profile's)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the hub per call.")] = 300.0,
) -> None:
    """Serve the iamine MCP tools on stdio (for Claude Desktop, Cursor...), backed by a hub.

    The hub and the token come from the options (or their env vars), else from the profile
    `iamine login` saved. Nothing but MCP goes to stdout; errors go to stderr.
    """
    import httpx

    from hub.client.errors import ClientError
    from hub.client.profile import resolve_profile
    from mcp_server.server import build_server

    try:
        profile = resolve_profile(hub, token)
    except ClientError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None

    async def main() -> None:
        async with httpx.AsyncClient(base_url=profile.hub_url, timeout=timeout) as client:
            server = build_server(client, lambda _ctx: profile.token)
            await server.run_stdio_async()

    asyncio.run(main())
