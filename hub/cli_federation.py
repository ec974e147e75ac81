"""``iamine federation``: this pool's identity, invites, peers, and what gossip knows of them.

``id`` prints the pool id (its key's fingerprint), public key and public URL; ``invite`` mints a
one-time invite for another pool's admin; ``peers add`` joins a pool with its admin's invite and
fingerprint; ``peers list``, ``remove`` and ``ping``; ``members`` shows each peer's liveness and
offers as gossip left them; ``candidates list`` and ``admit`` handle the pools learned through
gossip. Like the other admin commands these work on the database and the data directory;
``peers add`` and ``ping`` also reach the other pool (docs/federation.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import httpx
import typer
from rich.console import Console
from rich.table import Table

from federation import candidates, membership, peers
from federation.client import PeerClient, utc_now
from federation.errors import FederationError
from federation.identity import PoolIdentity, key_file, load_or_create_identity, parse_pool_id
from federation.service import admit_introduced, introduce, mint_invite
from hub.config import Settings

app = typer.Typer(
    help="Federation: this pool's id, invites and peers (docs/federation.md).",
    no_args_is_help=True,
)
peers_app = typer.Typer(help="Peer pools: add, list, remove, ping.", no_args_is_help=True)
app.add_typer(peers_app, name="peers")
candidates_app = typer.Typer(
    help="Pools learned through gossip: list, admit.", no_args_is_help=True
)
app.add_typer(candidates_app, name="candidates")
console = Console()
err_console = Console(stderr=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: IAMINE_DATA_DIR or the user's)."),
]
PoolIdArgument = Annotated[str, typer.Argument(help="The peer's pool id (iam1…).")]


def _settings(data_dir: Path | None) -> Settings:
    from hub.cli import load_settings

    return load_settings(data_dir)


def _identity(settings: Settings) -> PoolIdentity:
    try:
        return load_or_create_identity(settings.data_dir)
    except FederationError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(1) from None


def _run[T](settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    from hub.cli import run_on_connection

    return run_on_connection(settings.data_dir, work, (FederationError,))


def _require_active(settings: Settings) -> str:
    if not settings.federation.active or settings.federation.public_url is None:
        err_console.print(
            "[bold red]error:[/] federation is off: set IAMINE_FEDERATION__ENABLED=true and "
            "IAMINE_FEDERATION__PUBLIC_URL (this hub's origin as peers reach it)."
        )
        raise typer.Exit(1)
    return settings.federation.public_url


@asynccontextmanager
async def _client(settings: Settings, conn: asyncpg.Connection) -> AsyncIterator[PeerClient]:
    """A signing client that records peers' backoff on the command's one connection."""

    @asynccontextmanager
    async def acquire() -> AsyncIterator[asyncpg.Connection]:
        yield conn

    identity = _identity(settings)
    async with httpx.AsyncClient(timeout=settings.federation.request_timeout_s) as http:
        yield PeerClient(identity, settings.federation, http, acquire)


@app.command("id")
def show_id(data_dir: DataDirOption = None) -> None:
    """Print this pool's id, public key and public URL (the key is made on first use)."""
    settings = _settings(data_dir)
    identity = _identity(settings)
    url = settings.federation.public_url
    console.print(f"pool id     {identity.pool_id}", highlight=False)
    console.print(f"public key  {identity.public_key_text}", highlight=False)
    console.print(
        f"public url  {url or '(not set: IAMINE_FEDERATION__PUBLIC_URL)'}", highlight=False
    )
    console.print(f"federation  {'on' if settings.federation.active else 'off'}")
    console.print(f"key file    {key_file(settings.data_dir)}", highlight=False)


@app.command("invite")
def invite(
    expires: Annotated[
        str | None, typer.Option(help="Lifetime such as 30m, 1h or 7d (default: the setting).")
    ] = None,
    for_pool: Annotated[
        str | None, typer.Option("--for", help="Only this pool id may use the invite.")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Mint a one-time invite and print what the other pool's admin needs (shown once)."""
    from hub.cli import parse_duration

    settings = _settings(data_dir)
    _require_active(settings)
    ttl = parse_duration(expires) if expires else None
    identity = _identity(settings)

    async def work(conn: asyncpg.Connection) -> dict[str, Any]:
        return await mint_invite(
            conn, identity, settings.federation, now=utc_now(), ttl=ttl, for_pool_id=for_pool
        )

    minted = _run(settings, work)
    console.print(
        f"Invite for pool [bold]{minted['pool_id']}[/], one use, until {minted['expires_at']}."
    )
    console.print("Give the other pool's admin this command (check the fingerprint out of band):")
    console.print(
        f"iamine federation peers add {minted['url']} --fingerprint {minted['pool_id']} "
        f"--invite {minted['invite']}",
        soft_wrap=True,
        highlight=False,
    )


@peers_app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="The other pool's public URL (its origin).")],
    fingerprint: Annotated[str, typer.Option(help="Its pool id, as its admin told you.")],
    invite_code: Annotated[str, typer.Option("--invite", help="The invite its admin minted.")],
    data_dir: DataDirOption = None,
) -> None:
    """Peer with another pool: say hello with its invite, check its key against the fingerprint."""
    settings = _settings(data_dir)
    own_url = _require_active(settings)

    async def work(conn: asyncpg.Connection) -> peers.Peer:
        async with _client(settings, conn) as client:
            intro = await introduce(client, own_url, url, fingerprint, invite_code)
        return await admit_introduced(conn, intro, utc_now())

    peer = _run(settings, work)
    console.print(f"Peered with [bold]{peer.pool_id}[/] at {peer.url}.", highlight=False)


@peers_app.command("list")
def list_(data_dir: DataDirOption = None) -> None:
    """Admitted peers with their state (ok, failing, down) and backoff."""
    settings = _settings(data_dir)
    down_after = settings.federation.down_after_failures
    table = Table("pool id", "url", "state", "failures", "next try", "admitted", "last seen")
    for peer in _run(settings, peers.list_peers):
        table.add_row(
            peer.pool_id,
            peer.url,
            peer.state(down_after),
            str(peer.consecutive_failures),
            f"{peer.next_try_at:%Y-%m-%d %H:%M:%S}" if peer.next_try_at else "now",
            f"{peer.admitted_at:%Y-%m-%d %H:%M} ({peer.admitted_by})",
            f"{peer.last_seen_at:%Y-%m-%d %H:%M:%S}" if peer.last_seen_at else "never",
        )
    console.print(table)


@peers_app.command("remove")
def remove(pool_id: PoolIdArgument, data_dir: DataDirOption = None) -> None:
    """Forget a peer: its requests are refused from now on."""
    settings = _settings(data_dir)

    async def work(conn: asyncpg.Connection) -> peers.Peer:
        return await peers.remove_peer(conn, parse_pool_id(pool_id))

    removed = _run(settings, work)
    console.print(f"Removed peer [bold]{removed.pool_id}[/] ({removed.url}).", highlight=False)


@peers_app.command("ping")
def ping(pool_id: PoolIdArgument, data_dir: DataDirOption = None) -> None:
    """Call a peer's signed ping now (whatever its backoff) and print its answer."""
    settings = _settings(data_dir)
    _require_active(settings)

    async def work(conn: asyncpg.Connection) -> dict[str, Any]:
        peer = await peers.get_peer(conn, parse_pool_id(pool_id))
        async with _client(settings, conn) as client:
            return await client.call(peer, "GET", "/v1/federation/ping")

    answer = _run(settings, work)
    console.print(
        f"{answer.get('pool_id')} answered at {answer.get('time')} (it sees us as "
        f"{answer.get('peer')}).",
        highlight=False,
    )


@app.command("members")
def members(data_dir: DataDirOption = None) -> None:
    """Each peer's liveness as this pool judges it (gossip), and the models it last offered."""
    settings = _settings(data_dir)

    async def work(
        conn: asyncpg.Connection,
    ) -> tuple[list[membership.Member], dict[str, list[str]]]:
        found = await membership.list_members(conn)
        rows = await conn.fetch(
            "SELECT pool_id, model, free_slots FROM peer_capabilities ORDER BY pool_id, model"
        )
        offers: dict[str, list[str]] = {}
        for row in rows:
            offers.setdefault(row["pool_id"], []).append(f"{row['model']} ({row['free_slots']})")
        return found, offers

    found, offers = _run(settings, work)
    table = Table("pool id", "status", "heartbeat", "heard", "suspected by", "offers (free slots)")
    for member in found:
        table.add_row(
            member.pool_id,
            member.status,
            f"{member.incarnation}:{member.heartbeat}",
            f"{member.heartbeat_at:%Y-%m-%d %H:%M:%S}" if member.heartbeat_at else "never",
            str(len(member.suspected_by)),
            ", ".join(offers.get(member.pool_id, [])) or "-",
        )
    console.print(table)


@candidates_app.command("list")
def candidates_list(data_dir: DataDirOption = None) -> None:
    """Pools learned through peers' gossip, not admitted here, with who vouches for them."""
    settings = _settings(data_dir)
    table = Table("pool id", "url", "vouched by", "first seen")
    for candidate in _run(settings, candidates.list_candidates):
        table.add_row(
            candidate.pool_id,
            candidate.url,
            ", ".join(v[:16] + "…" for v in candidate.vouched_by) or "nobody now",
            f"{candidate.first_seen_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


@candidates_app.command("admit")
def candidates_admit(pool_id: PoolIdArgument, data_dir: DataDirOption = None) -> None:
    """Admit a candidate as a peer, with the key and URL its vouchers listed."""
    settings = _settings(data_dir)

    async def work(conn: asyncpg.Connection) -> peers.Peer:
        return await candidates.admit_candidate(conn, parse_pool_id(pool_id), utc_now())

    peer = _run(settings, work)
    console.print(f"Admitted [bold]{peer.pool_id}[/] at {peer.url}.", highlight=False)
