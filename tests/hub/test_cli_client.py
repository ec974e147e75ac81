"""``iamine`` as a user client: the real binary (``python -m hub``) against a live hub.

Fake workers answer by hand over the real WebSocket, so each answer's text is known. Every
command runs with ``HOME`` and ``XDG_CONFIG_HOME`` in a temporary folder. The interactive mode
runs on a pseudo-terminal (the stdlib's ``pty``: pexpect is not installed), and in-process with
scripted input for the paths a terminal cannot reach cheaply (errors, end of input).
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner
from websockets.asyncio.client import ClientConnection

from hub.cli import app
from hub.client.api import HubClient, describe_error
from hub.client.chat import ChatSession, interactive
from hub.client.profile import Profile
from tests.hub.conftest import LiveHub, free_port, wait_until
from tests.hub.raw_worker import raw_worker

pytestmark = pytest.mark.anyio

MODEL = "cli-model"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment with its own home and config folder, and no IAMINE_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IAMINE_")}
    return env | {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config")}


@pytest.fixture
def user_env(home: dict[str, str], live_hub: LiveHub) -> dict[str, str]:
    """The same, logged in through the environment variables."""
    return home | {"IAMINE_HUB_URL": live_hub.url, "IAMINE_TOKEN": live_hub.user_token}


def iamine(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``iamine`` command (bounded: a hung command fails the test)."""
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        env=env,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 1 with exactly one ``error: …`` line on stderr holding every fragment."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def profile_file(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "iamine" / "profile.json"


def user(hub: LiveHub) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.user_token}"}


async def next_frame(ws: ClientConnection, frame_type: str) -> dict[str, Any]:
    """The worker's next frame of this type (bounded generously: a CLI process starts first)."""
    with anyio.fail_after(60):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] == frame_type:
                return frame


async def answer(ws: ClientConnection, job: dict[str, Any], *chunks: str) -> None:
    """Answer a job in several chunks, then finish it with usage."""
    for text in chunks:
        frame = {"type": "chunk", "job_id": job["job_id"], "delta": {"content": text}}
        await ws.send(json.dumps(frame))
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    done = {"type": "done", "job_id": job["job_id"], "finish_reason": "stop", "model": MODEL}
    await ws.send(json.dumps(done | {"usage": usage}))


async def ask(
    ws: ClientConnection,
    env: dict[str, str],
    *args: str,
    chunks: tuple[str, ...] = ("Hi!",),
    stdin: str | None = None,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run an ``iamine chat`` while the worker answers its job; the result and the job."""
    result: dict[str, subprocess.CompletedProcess[str]] = {}

    async def run() -> None:
        result["cli"] = await anyio.to_thread.run_sync(partial(iamine, env, *args, stdin=stdin))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run)
        job = await next_frame(ws, "job")
        await answer(ws, job, *chunks)
    return result["cli"], job


def test_every_user_command_has_help_text() -> None:
    runner = CliRunner()
    commands = [
        ["login"], ["logout"], ["chat"], ["conversations"], ["account"], ["connect"],
        ["models", "list"], ["memory", "facts"], ["memory", "notes"], ["memory", "search"],
        ["memory", "export"], ["memory", "forget"],
    ]  # fmt: skip
    for command in commands:
        output = runner.invoke(app, [*command, "--help"]).output
        assert "Usage" in output and len(output.splitlines()) > 3, command
    assert "--hub" in runner.invoke(app, ["chat", "--help"]).output


def test_login_saves_a_verified_profile_only_the_user_can_read(
    live_hub: LiveHub, home: dict[str, str]
) -> None:
    result = iamine(home, "login", "--hub", live_hub.url + "/v1/", "--token", live_hub.user_token)
    assert result.returncode == 0, result.stderr
    assert "Logged in" in result.stdout
    assert live_hub.user_token not in result.stdout
    path = profile_file(home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"hub_url": live_hub.url, "token": live_hub.user_token}
    listed = iamine(home, "models", "list")  # the profile alone is enough
    assert listed.returncode == 0, listed.stderr
    logout = iamine(home, "logout")
    assert logout.returncode == 0
    assert not path.exists()
    one_error_line(iamine(home, "models", "list"), "not logged in")


def test_login_with_a_bad_token_saves_nothing(live_hub: LiveHub, home: dict[str, str]) -> None:
    result = iamine(home, "login", "--hub", live_hub.url, "--token", "iam_0123456789_nope")
    one_error_line(result, "refused the token", "iamine login")
    assert not profile_file(home).exists()


def test_login_to_a_hub_that_is_down_is_one_error_line(home: dict[str, str]) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    one_error_line(iamine(home, "login", "--hub", down, "--token", "iam_x_y"), "cannot reach")
    one_error_line(iamine(home, "login", "--hub", "ftp://hub", "--token", "t"), "http://host")
    assert not profile_file(home).exists()


def test_env_vars_override_the_saved_profile(live_hub: LiveHub, home: dict[str, str]) -> None:
    assert (
        iamine(home, "login", "--hub", live_hub.url, "--token", live_hub.user_token).returncode == 0
    )
    overridden = iamine(home | {"IAMINE_TOKEN": "iam_0123456789_revoked"}, "models", "list")
    one_error_line(overridden, "refused the token")
    down = f"http://127.0.0.1:{free_port()}"
    one_error_line(iamine(home, "models", "list", "--hub", down), "cannot reach", down)


async def test_models_list_shows_the_served_models(
    live_hub: LiveHub, user_env: dict[str, str]
) -> None:
    async with raw_worker(live_hub, MODEL, tools=True):
        table = await anyio.to_thread.run_sync(partial(iamine, user_env, "models", "list"))
        as_json = await anyio.to_thread.run_sync(
            partial(iamine, user_env, "models", "list", "--json")
        )
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if MODEL in line)
    assert "2048" in row and "yes" in row
    model = next(m for m in json.loads(as_json.stdout) if m["id"] == MODEL)
    assert model["context_length"] == 2048


async def test_one_shot_chat_streams_the_answer_as_plain_text(
    live_hub: LiveHub, user_env: dict[str, str]
) -> None:
    async with raw_worker(live_hub, MODEL) as ws:
        result, job = await ask(ws, user_env, "chat", "Say hi", chunks=("Hel", "lo **there**"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello **there**\n"  # not a terminal: plain text, as it came
    assert job["messages"] == [{"role": "user", "content": "Say hi"}]
    assert job["model"] == MODEL  # the first model of /v1/models by default


async def test_chat_json_holds_answer_model_conversation_usage_and_route(
    live_hub: LiveHub, user_env: dict[str, str]
) -> None:
    async with raw_worker(live_hub, MODEL) as ws:
        result, _ = await ask(ws, user_env, "chat", "Hi", "--model", MODEL, "--json", "-v")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["answer"] == "Hi!"
    assert reply["model"] == MODEL
    assert reply["usage"]["total_tokens"] == 4
    assert reply["finish_reason"] == "stop"
    assert reply["conversation_id"]
    headers = {k.lower(): v for k, v in reply["headers"].items()}
    assert headers["x-conversation-id"] == reply["conversation_id"]
    assert headers["x-iamine-route"] == "direct"
    assert headers["x-iamine-worker"]
    assert "route: direct" in result.stderr  # -v


async def test_chat_reads_a_piped_prompt_and_sends_the_system_prompt(
    live_hub: LiveHub, user_env: dict[str, str]
) -> None:
    async with raw_worker(live_hub, MODEL) as ws:
        result, job = await ask(
            ws, user_env, "chat", "--system", "Be brief.", stdin="What is 2+2?\n"
        )
    assert result.returncode == 0, result.stderr
    assert job["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    empty = await anyio.to_thread.run_sync(partial(iamine, user_env, "chat", stdin=""))
    one_error_line(empty, "stdin was empty")


def test_chat_errors_are_one_line(live_hub: LiveHub, user_env: dict[str, str]) -> None:
    one_error_line(iamine(user_env, "chat", "hi", "--model", "no-such-model"), "no-such-model")
    bad = user_env | {"IAMINE_TOKEN": "iam_0123456789_nope"}
    one_error_line(iamine(bad, "chat", "hi", "--model", MODEL), "refused the token")
    down = user_env | {"IAMINE_HUB_URL": f"http://127.0.0.1:{free_port()}"}
    one_error_line(iamine(down, "chat", "hi"), "cannot reach the hub")
    one_error_line(iamine(user_env, "chat", "--json", stdin=""), "stdin was empty")


async def test_ctrl_c_during_an_answer_cancels_the_job_and_exits_130(
    live_hub: LiveHub, user_env: dict[str, str]
) -> None:
    async with raw_worker(live_hub, MODEL) as ws:
        popen = partial(
            subprocess.Popen,
            [sys.executable, "-m", "hub", "chat", "Tell me a long story", "--model", MODEL],
            env=user_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        process: subprocess.Popen[str] = await anyio.to_thread.run_sync(popen)
        try:
            job = await next_frame(ws, "job")
            chunk = {"type": "chunk", "job_id": job["job_id"], "delta": {"content": "Once"}}
            await ws.send(json.dumps(chunk))
            process.send_signal(signal.SIGINT)
            cancel = await next_frame(ws, "cancel")
            _, err = await anyio.to_thread.run_sync(partial(process.communicate, timeout=60))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert cancel["job_id"] == job["job_id"]
    assert process.returncode == 130
    assert "cancelled" in err
    assert "Traceback" not in err


async def test_a_conversation_continues_with_its_stored_turns(
    live_hub: LiveHub, user_env: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=live_hub.url, headers=user(live_hub)) as http:
        on = await http.put("/v1/memory/settings", json={"enabled": True})
        assert on.status_code == 200, on.text
        try:
            async with raw_worker(live_hub, MODEL) as ws:
                first, _ = await ask(ws, user_env, "chat", "My name is Ada.", "--json")
                cid = json.loads(first.stdout)["conversation_id"]

                def stored() -> bool:
                    got = httpx.get(
                        f"{live_hub.url}/v1/conversations/{cid}", headers=user(live_hub)
                    )
                    return got.status_code == 200 and len(got.json()["turns"]) == 1

                await anyio.to_thread.run_sync(wait_until, stored, 30, "the first turn in L2")
                second, job = await ask(
                    ws,
                    user_env,
                    "chat",
                    "What is my name?",
                    "--conversation",
                    cid,
                    "--json",
                    chunks=("Ada.",),
                )
        finally:
            await http.put("/v1/memory/settings", json={"enabled": False})
    assert json.loads(second.stdout)["conversation_id"] == cid
    asked = [m for m in job["messages"] if m["role"] in ("user", "assistant")]
    assert asked == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "What is my name?"},
    ]
    listed = await anyio.to_thread.run_sync(partial(iamine, user_env, "conversations", "--json"))
    mine = next(c for c in json.loads(listed.stdout) if c["id"] == cid)
    assert mine["exchanges"] == 2
    table = await anyio.to_thread.run_sync(partial(iamine, user_env, "conversations"))
    assert cid in table.stdout


async def test_interactive_loop_streams_markdown_starts_anew_and_survives_errors(
    live_hub: LiveHub,
) -> None:
    out, err = io.StringIO(), io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    err_console = Console(file=err, width=200)
    lines = iter(["Hello", "/new", "Again", "", "/exit"])
    sessions: list[ChatSession] = []

    def loop() -> None:
        profile = Profile(live_hub.url, live_hub.user_token)
        with HubClient(profile, timeout_s=60) as client:
            session = ChatSession(client, MODEL)
            sessions.append(session)
            interactive(session, console, err_console, lambda: next(lines), markdown=True)
            broken = ChatSession(client, "no-such-model")
            words = iter(["hi", "/exit"])
            interactive(broken, console, err_console, lambda: next(words), markdown=False)

    async with raw_worker(live_hub, MODEL) as ws, anyio.create_task_group() as tasks:
        tasks.start_soon(anyio.to_thread.run_sync, loop)
        first = await next_frame(ws, "job")
        await answer(ws, first, "A **bold** move")
        second = await next_frame(ws, "job")
        await answer(ws, second, "Again!")
    assert first["messages"] == [{"role": "user", "content": "Hello"}]
    assert second["messages"] == [{"role": "user", "content": "Again"}]  # /new forgot Hello
    shown = ANSI.sub("", out.getvalue())
    assert "A bold move" in shown and "**" not in shown  # rendered as Markdown
    assert "Again!" in shown
    assert sessions[0].history[-1] == {"role": "assistant", "content": "Again!"}
    assert "error:" in err.getvalue() and "no-such-model" in err.getvalue()


def read_until(fd: int, text: str, seen: bytearray) -> str:
    """Read a terminal's output until ``text`` shows (escape codes removed); bounded."""
    deadline = time.monotonic() + 60
    while text not in (shown := ANSI.sub("", seen.decode(errors="replace"))):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not ready:
            raise AssertionError(f"{text!r} never showed; the terminal shows {shown!r}")
        seen += os.read(fd, 65536)
    return shown


async def test_interactive_session_on_a_terminal_renders_and_exits(
    live_hub: LiveHub, user_env: dict[str, str]
) -> None:
    terminal, child_side = os.openpty()

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "hub", "chat", "--model", MODEL],
            env=user_env | {"TERM": "xterm-256color", "COLUMNS": "100", "LINES": "40"},
            stdin=child_side,
            stdout=child_side,
            stderr=child_side,
        )

    seen = bytearray()
    async with raw_worker(live_hub, MODEL) as ws:
        process = await anyio.to_thread.run_sync(start)
        os.close(child_side)
        try:
            await anyio.to_thread.run_sync(read_until, terminal, "you>", seen)
            os.write(terminal, b"Hello\n")
            job = await next_frame(ws, "job")
            await answer(ws, job, "A **bold** move")
            await anyio.to_thread.run_sync(read_until, terminal, "A bold move", seen)
            os.write(terminal, b"/exit\n")
            code = await anyio.to_thread.run_sync(partial(process.wait, timeout=60))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            os.close(terminal)
    assert code == 0
    assert job["messages"] == [{"role": "user", "content": "Hello"}]
    assert "**bold**" not in ANSI.sub("", seen.decode(errors="replace"))


def test_interactive_loop_leaves_on_end_of_input(live_hub: LiveHub) -> None:
    def end() -> str:
        raise EOFError

    with HubClient(Profile(live_hub.url, live_hub.user_token)) as client:
        session = ChatSession(client, MODEL)
        interactive(session, Console(file=io.StringIO()), Console(file=io.StringIO()), end,
                    markdown=False)  # fmt: skip
    assert session.history == []


def test_a_busy_pool_error_says_when_to_retry() -> None:
    body = {"error": {"message": "The pool is busy.", "type": "rate_limit_error",
                      "param": None, "code": "pool_busy"}}  # fmt: skip
    error = describe_error(httpx.Response(429, json=body, headers={"Retry-After": "7"}))
    assert error.message == "The pool is busy. (retry after 7 s)"
    assert (error.status, error.code) == (429, "pool_busy")
    plain = describe_error(httpx.Response(502, text="Bad gateway"))
    assert plain.message == "HTTP 502: Bad gateway"


@pytest.fixture
def memory_items(live_hub: LiveHub) -> Iterator[tuple[str, str]]:
    """A fact and a note of the user, made through the API."""
    with httpx.Client(base_url=live_hub.url, headers=user(live_hub), timeout=60) as http:
        fact = http.post(
            "/v1/memory/facts", json={"text": "The user's cat is named Miso.", "tags": ["pets"]}
        )
        note = http.post(
            "/v1/memory/notes",
            json={"namespace": "user:me", "title": "Deploy", "body": "Deploy with make release."},
        )
        assert fact.status_code == 201 and note.status_code == 201, (fact.text, note.text)
        yield fact.json()["id"], note.json()["id"]


def test_memory_commands_list_search_export_and_forget(
    user_env: dict[str, str], memory_items: tuple[str, str], tmp_path: Path
) -> None:
    fact_id, note_id = memory_items
    facts = iamine(user_env, "memory", "facts")
    assert facts.returncode == 0, facts.stderr
    assert fact_id in facts.stdout and "Miso" in facts.stdout
    ranked = json.loads(iamine(user_env, "memory", "facts", "-q", "cat name", "--json").stdout)
    assert ranked[0]["id"] == fact_id
    assert note_id in iamine(user_env, "memory", "notes").stdout
    found = iamine(user_env, "memory", "search", "what is my cat called")
    assert found.returncode == 0, found.stderr
    assert fact_id in found.stdout
    exported = json.loads(iamine(user_env, "memory", "export").stdout)
    assert exported["object"] == "memory.export"
    assert any(f["id"] == fact_id for f in exported["facts"])
    saved = tmp_path / "memory.json"
    assert iamine(user_env, "memory", "export", "-o", str(saved)).returncode == 0
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["object"] == "memory.export"
    assert "Forgot fact" in iamine(user_env, "memory", "forget", fact_id).stdout
    assert "Forgot note" in iamine(user_env, "memory", "forget", note_id).stdout
    one_error_line(iamine(user_env, "memory", "forget", fact_id), "no fact or note")
    one_error_line(iamine(user_env, "memory", "forget", "../../etc"), "not a fact or note id")
    one_error_line(iamine(user_env, "memory", "forget"), "--all")


def test_account_shows_the_balance_and_says_when_the_hub_has_none(
    live_hub: LiveHub, user_env: dict[str, str]
) -> None:
    shown = iamine(user_env, "account")
    assert shown.returncode == 0, shown.stderr
    assert "balance" in shown.stdout and "$IAMINE" in shown.stdout
    body = json.loads(iamine(user_env, "account", "--json").stdout)
    assert body["object"] == "account"
    elsewhere = iamine(user_env, "account", "--hub", f"{live_hub.url}/elsewhere")
    one_error_line(elsewhere, "keeps no $IAMINE accounts")


def test_connect_prints_writes_and_never_overwrites_without_force(
    live_hub: LiveHub, user_env: dict[str, str], tmp_path: Path
) -> None:
    printed = iamine(user_env, "connect", "opencode", "--print")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("# opencode.json\n")
    assert f'"baseURL": "{live_hub.url}/v1"' in printed.stdout
    assert live_hub.user_token not in printed.stdout + printed.stderr
    project = tmp_path / "project"
    written = iamine(user_env, "connect", "aider", "--dir", str(project))
    assert written.returncode == 0, written.stderr
    conf = project / ".aider.conf.yml"
    assert f"{live_hub.url}/v1" in conf.read_text()
    assert (project / ".aider.model.metadata.json").exists()
    conf.write_text("mine\n")
    refused = iamine(user_env, "connect", "aider", "--dir", str(project))
    one_error_line(refused, "already exists", "--force")
    assert conf.read_text() == "mine\n"
    forced = iamine(user_env, "connect", "aider", "--dir", str(project), "--force")
    assert forced.returncode == 0, forced.stderr
    assert conf.read_text() != "mine\n"
    one_error_line(iamine(user_env, "connect", "emacs"), "Known clients")


def test_a_malformed_conversation_id_is_one_error_line(
    live_hub: LiveHub, user_env: dict[str, str]
) -> None:
    bogus = f"bad id {uuid.uuid4().hex}"
    one_error_line(iamine(user_env, "chat", "hi", "--conversation", bogus, "--model", MODEL))
