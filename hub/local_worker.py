"""The hub's own worker: a child process serving the local model, so a fresh hub answers chats.

It runs as a separate process (``python -m hub worker``), not in the hub's event loop: llama.cpp
holds CPU cores for seconds at a time and a crash in native code must not take the hub down. It
connects over the same WebSocket protocol as any volunteer worker, with a worker token the hub
issues at start (revoking the previous one) to the pool's ``operator`` user, and passes it in the
environment rather than on the command line, where other local users could read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

import anyio
import asyncpg
import structlog

from hub import accounts
from hub.config import Settings
from hub.errors import NotFoundError

log = structlog.get_logger()

OPERATOR_USER = "operator"
TOKEN_NAME = "local worker"  # noqa: S105 (a label)
TOKEN_ENV = "IAMINE_WORKER_TOKEN"  # noqa: S105 (the variable's name, not a secret)


async def issue_local_worker_token(conn: asyncpg.Connection) -> str:
    """Revoke the previous local-worker tokens and issue a fresh one for the operator user."""
    async with conn.transaction():
        try:
            operator = await accounts.get_user(conn, OPERATOR_USER)
        except NotFoundError:
            operator = await accounts.create_user(conn, OPERATOR_USER)
        await conn.execute(
            "UPDATE tokens SET revoked_at = now() "
            "WHERE user_id = $1 AND name = $2 AND revoked_at IS NULL",
            operator.id,
            TOKEN_NAME,
        )
        issued = await accounts.create_token(
            conn, user_id=operator.id, scopes=("worker",), name=TOKEN_NAME
        )
    return issued.token


def worker_command(settings: Settings) -> list[str]:
    """The command line of the local worker process."""
    host = settings.server.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (we connect to ourselves, not bind)
        host = "127.0.0.1"
    inference = settings.inference
    command = [
        sys.executable,
        "-m",
        "hub",
        "worker",
        "--hub",
        f"http://{host}:{settings.server.port}",
        "--name",
        "local",
        "--slots",
        str(inference.local_worker_slots),
        "--context",
        str(inference.local_worker_context),
    ]
    if inference.local_worker_model is not None:
        command += ["--model", str(inference.local_worker_model)]
    if inference.local_worker_threads is not None:
        command += ["--threads", str(inference.local_worker_threads)]
    return command


async def run_local_worker(settings: Settings, token: str) -> None:
    """Run the worker process until cancelled, then stop it (SIGTERM, then SIGKILL)."""
    env = {**os.environ, TOKEN_ENV: token}
    process = await asyncio.create_subprocess_exec(*worker_command(settings), env=env)
    log.info("local_worker_started", pid=process.pid)
    try:
        code = await process.wait()
        log.error("local_worker_exited", code=code)
    finally:
        with anyio.CancelScope(shield=True):
            await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout=10)
    except TimeoutError:
        process.kill()
        await process.wait()
    log.info("local_worker_stopped", code=process.returncode)
