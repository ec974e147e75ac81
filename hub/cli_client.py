"""The ``iamine`` user commands: login, chat, models, memory, conversations, account, connect.

They talk to a hub over HTTP with the user's token (``hub/client/``), never to a database:
``iamine login`` saves the hub and token in a profile, ``--hub``/``--token`` (or
``IAMINE_HUB_URL``/``IAMINE_TOKEN``) override it. Every failure is one red ``error: …`` line
and exit 1; Ctrl-C during a one-shot answer cancels the job and exits 130. docs/clients.md.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from hub.client.api import HubClient
from hub.client.chat import ChatSession, default_model, describe_route, interactive, stream_to
from hub.client.errors import ClientError
from hub.client.profile import Profile, delete_profile, hub_root, resolve_profile, save_profile

INTERRUPTED = 130

console = Console()
err_console = Console(stderr=True)

HubOption = Annotated[
    str | None,
    typer.Option("--hub", envvar="IAMINE_HUB_URL", help="Hub URL (default: the login profile's)."),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="IAMINE_TOKEN", help="User token (default: the login profile's)."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the hub's JSON instead.")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=1, help="Seconds to wait for the hub between bytes.")
]


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` in red on one line; the exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(1)


@contextmanager
def reported() -> Iterator[None]:
    """Client errors as one red line and exit 1."""
    try:
        yield
    except ClientError as exc:
        raise fail(exc.message) from None


@contextmanager
def hub_client(hub: str | None, token: str | None, timeout_s: float = 60.0) -> Iterator[HubClient]:
    """A client of the hub in force (profile, options, env vars); errors reported."""
    with reported():
        profile = resolve_profile(hub, token)
        with HubClient(profile, timeout_s) as client:
            yield client


def print_json(value: Any) -> None:
    """JSON on stdout, unstyled."""
    console.out(json.dumps(value, indent=2, ensure_ascii=False), highlight=False)


def login(
    hub: Annotated[str, typer.Option("--hub", envvar="IAMINE_HUB_URL", help="Hub URL.")],
    token: Annotated[
        str | None, typer.Option(help="Your user token (asked, hidden, when left out).")
    ] = None,
) -> None:
    """Check a token against a hub (GET /v1/models) and save both in your profile (0600)."""
    with reported():
        chosen = (token or typer.prompt("Token", hide_input=True)).strip()
        profile = Profile(hub_root(hub), chosen)
        with HubClient(profile, timeout_s=30) as client:
            models = client.get("/v1/models")["data"]
    path = save_profile(profile)
    console.print(
        f"Logged in to {profile.hub_url} ({profile.token_hint}); {len(models)} model(s) served "
        f"now. Profile: {path}",
        soft_wrap=True,
        highlight=False,
    )


def logout() -> None:
    """Delete the saved profile (the token itself stays valid: revoke it on the hub)."""
    removed = delete_profile()
    console.print("Logged out: the profile is removed." if removed else "No profile to remove.")


def chat(
    prompt: Annotated[
        str | None, typer.Argument(help="What to ask (default: stdin when piped, else a prompt).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model id (default: the first of /v1/models).")
    ] = None,
    system: Annotated[str | None, typer.Option(help="A system prompt.")] = None,
    conversation: Annotated[
        str | None, typer.Option(help="Continue this conversation (X-Conversation-Id).")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object when the answer is complete.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the route, worker and memory headers.")
    ] = False,
    timeout: TimeoutOption = 120.0,
    hub: HubOption = None,
    token: TokenOption = None,
) -> None:
    """Ask the pool: one answer for PROMPT (or piped stdin), else an interactive session."""
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise fail("nothing to ask: stdin was empty")
    if prompt is None and json_output:
        raise fail("--json needs a prompt (an argument or stdin)")
    markdown = console.is_terminal
    try:
        with hub_client(hub, token, timeout) as client:
            session = ChatSession(client, model or default_model(client), system, conversation)
            session.resume()
            if prompt is None:
                with contextlib.suppress(ImportError):
                    importlib.import_module("readline")  # line editing and history at the prompt
                read = lambda: console.input("[bold cyan]you>[/] ")  # noqa: E731
                interactive(session, console, err_console, read, markdown=markdown, verbose=verbose)
                return
            reply = (
                session.ask(prompt)
                if json_output
                else stream_to(console, session, prompt, markdown)
            )
    except KeyboardInterrupt:
        err_console.print("[yellow]cancelled[/]")
        raise typer.Exit(INTERRUPTED) from None
    if verbose:
        err_console.print(f"[dim]{escape(describe_route(reply))}[/]", soft_wrap=True)
    if json_output:
        print_json(reply.as_json())


def models_list(
    json_output: JsonOption = False, hub: HubOption = None, token: TokenOption = None
) -> None:
    """The models the pool serves now: context size, tools, workers, free slots."""
    with hub_client(hub, token) as client:
        models = client.get("/v1/models")["data"]
    if json_output:
        print_json(models)
        return
    names = Column("model", no_wrap=True, min_width=max((len(m["id"]) for m in models), default=5))
    table = Table(names, "context", "tools", "workers", "free slots")
    for m in models:
        tools = "yes" if m.get("supports_tools") else "no"
        table.add_row(
            m["id"],
            str(m.get("context_length")),
            tools,
            str(m.get("workers")),
            str(m.get("free_slots")),
        )
    console.print(table)


KOption = Annotated[int, typer.Option("-k", min=1, max=100, help="How many results.")]
QueryOption = Annotated[str | None, typer.Option("--query", "-q", help="Rank by this text.")]
TagsOption = Annotated[
    str | None, typer.Option("--tags", help="Only items with every tag (comma-separated).")
]


def id_column(ids: list[str]) -> Column:
    """An id column that never wraps nor shortens an id (they are copied into commands)."""
    return Column("id", no_wrap=True, min_width=max((len(i) for i in ids), default=2))


def _short(text: str | None, size: int = 80) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= size else text[: size - 1] + "…"


def memory_facts(
    query: QueryOption = None,
    k: KOption = 10,
    tags: TagsOption = None,
    history: Annotated[bool, typer.Option(help="Superseded versions too (no query).")] = False,
    json_output: JsonOption = False,
    hub: HubOption = None,
    token: TokenOption = None,
) -> None:
    """Your facts (L3): the newest, or the closest to --query."""
    with hub_client(hub, token) as client:
        params = {"query": query, "k": k, "tags": tags, "history": history or None}
        facts = client.get("/v1/memory/facts", **params)["data"]
    if json_output:
        print_json(facts)
        return
    table = Table(
        id_column([f["id"] for f in facts]), "fact", "key", "tags", "score" if query else "since"
    )
    for f in facts:
        last = f"{f['score']:.3f}" if query else f["valid_from"][:19]
        table.add_row(f["id"], _short(f["text"]), f["key"] or "", ",".join(f["tags"]), last)
    console.print(table)


def memory_notes(
    query: QueryOption = None,
    k: KOption = 10,
    namespace: Annotated[
        list[str] | None, typer.Option(help="Only this namespace (repeatable).")
    ] = None,
    tags: TagsOption = None,
    json_output: JsonOption = False,
    hub: HubOption = None,
    token: TokenOption = None,
) -> None:
    """Your notes (L4) and those of your shared namespaces: the newest, or the best for --query."""
    with hub_client(hub, token) as client:
        params = {"query": query, "k": k, "tags": tags, "namespace": namespace or None}
        notes = client.get("/v1/memory/notes", **params)["data"]
    if json_output:
        print_json(notes)
        return
    ids = id_column([n["id"] for n in notes])
    table = Table(ids, "namespace", "title", "text", "score" if query else "created")
    for n in notes:
        last = f"{n['score']:.3f}" if query else n["created_at"][:19]
        text = n.get("snippet") or n.get("body")
        table.add_row(n["id"], n["namespace"], n.get("title") or "", _short(text, 60), last)
    console.print(table)


def memory_search(
    query: Annotated[str, typer.Argument(help="What to look for, in your words.")],
    k: KOption = 5,
    json_output: JsonOption = False,
    hub: HubOption = None,
    token: TokenOption = None,
) -> None:
    """One search over your facts and notes, as a chat's recall sees them."""
    with hub_client(hub, token) as client:
        found = client.get("/v1/memory/recall", query=query, k=k)
    if json_output:
        print_json(found)
        return
    ids = id_column([item["id"] for item in [*found["facts"], *found["notes"]]])
    table = Table("kind", ids, "text", "score")
    for f in found["facts"]:
        table.add_row("fact", f["id"], _short(f["text"]), f"{f['score']:.3f}")
    for n in found["notes"]:
        text = n.get("snippet") or n.get("title") or n.get("body")
        table.add_row("note", n["id"], _short(text), f"{n['score']:.3f}")
    console.print(table)


def memory_export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (mode 0600).")
    ] = None,
    hub: HubOption = None,
    token: TokenOption = None,
) -> None:
    """Everything the pool keeps of your memory, decrypted, as JSON (stdout or --output)."""
    with hub_client(hub, token, timeout_s=300) as client, client.download("/v1/memory/export") as r:
        if output is None:
            for block in r.iter_bytes():
                sys.stdout.buffer.write(block)
            sys.stdout.buffer.write(b"\n")
            sys.stdout.flush()
            return
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            for block in r.iter_bytes():
                out.write(block)
    console.print(f"Exported your memory to {output}.", highlight=False)


def memory_forget(
    item: Annotated[str | None, typer.Argument(help="A fact or note id.")] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Crypto-shred all your memory (asks first).")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before --all.")] = False,
    hub: HubOption = None,
    token: TokenOption = None,
) -> None:
    """Forget one fact or note by id, or with --all everything the pool keeps of your memory."""
    if everything == (item is not None):
        raise fail("give either a fact or note id, or --all")
    if everything:
        if not yes and not typer.confirm("Delete all your memory for good?"):
            raise fail("nothing deleted")
        with hub_client(hub, token) as client:
            report = client.request("DELETE", "/v1/memory")
        counts = ", ".join(f"{v} {k}" for k, v in report.items() if isinstance(v, int))
        console.print(f"Deleted all your memory ({counts}).", highlight=False)
        return
    assert item is not None
    try:
        item_id = str(uuid.UUID(item))
    except ValueError:
        raise fail(f"{item!r} is not a fact or note id (a UUID)") from None
    with hub_client(hub, token) as client:
        for kind in ("facts", "notes"):
            try:
                client.request("DELETE", f"/v1/memory/{kind}/{item_id}")
            except ClientError as exc:
                if exc.status == 404:
                    continue
                raise
            console.print(f"Forgot {kind[:-1]} {item_id}.", highlight=False)
            return
    raise fail(f"no fact or note {item_id} of yours")


def conversations(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many.")] = 20,
    json_output: JsonOption = False,
    hub: HubOption = None,
    token: TokenOption = None,
) -> None:
    """Your conversations, most recently active first (`iamine chat --conversation ID`)."""
    with hub_client(hub, token) as client:
        listed = client.get("/v1/conversations", limit=limit)["data"]
    if json_output:
        print_json(listed)
        return
    ids = id_column([c["id"] for c in listed])
    table = Table(ids, "last active", "exchanges", "stored turns")
    for c in listed:
        table.add_row(c["id"], c["last_active_at"][:19], str(c["exchanges"]), str(c["turn_count"]))
    console.print(table)


def account(
    json_output: JsonOption = False, hub: HubOption = None, token: TokenOption = None
) -> None:
    """Your $IAMINE balance, what open chats hold, and your workers' earnings."""
    with hub_client(hub, token) as client:
        try:
            body = client.get("/v1/account")
        except ClientError as exc:
            if exc.status == 404:
                raise fail("this hub keeps no $IAMINE accounts (GET /v1/account is 404)") from None
            raise
    if json_output:
        print_json(body)
        return
    earnings = body.get("earnings", {})
    console.print(
        f"balance {body['balance_iamine']} $IAMINE · held by open chats {body['pending_iamine']} "
        f"· available {body['available_iamine']} · priority {body.get('priority', 'normal')}\n"
        f"earnings: settled {earnings.get('settled_iamine', '0')} · unsettled "
        f"{earnings.get('unsettled_iamine', '0')} · workers {len(body.get('workers', []))}",
        highlight=False,
        soft_wrap=True,
    )


def _target(folder: Path, relative: str) -> Path:
    """Where a file of a client configuration goes: inside ``folder``, never outside it."""
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ClientError(f"the hub sent an unsafe file path {relative!r}")
    return folder.joinpath(*path.parts)


def connect(
    client_name: Annotated[
        str, typer.Argument(metavar="CLIENT", help="opencode, cursor, aider, claude or continue.")
    ],
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the files instead of writing them.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
    folder: Annotated[Path, typer.Option("--dir", help="Project folder to write into.")] = Path(
        "."
    ),
    hub: HubOption = None,
    token: TokenOption = None,
) -> None:
    """Write (or --print) a client's configuration for this hub; tokens stay in IAMINE_TOKEN."""
    with hub_client(hub, token) as client:
        config = client.get(f"/v1/client-config/{client_name}")
        files = [(_target(folder, f["path"]), f) for f in config["files"]]
    if print_only:
        for _, file in files:
            console.out(f"# {file['path']}\n{file['content']}", highlight=False)
    else:
        existing = [str(path) for path, _ in files if path.exists()]
        if existing and not force:
            raise fail(
                f"{', '.join(existing)} already exists: nothing written (--force overwrites)"
            )
        for path, file in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(file["content"], encoding="utf-8")
            console.print(f"Wrote {path}", highlight=False)
    for note in config.get("notes", []):
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer, memory_app: typer.Typer, models_app: typer.Typer) -> None:
    """Add the user commands to the ``iamine`` app and to its ``memory`` and ``models`` groups."""
    app.command()(login)
    app.command()(logout)
    app.command()(chat)
    app.command()(conversations)
    app.command()(account)
    app.command()(connect)
    models_app.command("list")(models_list)
    models_app.info.help = "Models: list the pool's (user), install the embedding model (admin)."
    memory_app.command("facts")(memory_facts)
    memory_app.command("notes")(memory_notes)
    memory_app.command("search")(memory_search)
    memory_app.command("export")(memory_export)
    memory_app.command("forget")(memory_forget)
    memory_app.info.help = "Memory: your facts, notes, export and forget (user); L1 purge (admin)."
