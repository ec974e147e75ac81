"""The hub's own worker: a child process serving the local model, so a fresh hub answers chats.

It runs as a separate process (``python -m hub worker``), not in the hub's event loop: llama.cpp
holds CPU cores for seconds at a time and a crash in native code must not take the hub down. It
connects over the same WebSocket protocol as any volunteer worker, with a worker token the hub
issues at each start (revoking the previous one) to the pool's ``operator`` user, and passes it in
the environment rather than on the command line, where other local users could read it.

:class:`LocalWorker` supervises it: whenever the process exits (a crash, a kill, a refused token)
it is started again after a wait that doubles from ``restart_initial_s`` up to ``restart_max_s``;
a process that ran ``restart_reset_s`` or longer starts the count again. ``/readyz`` reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Literal
from uuid import UUID

import anyio
import asyncpg
import structlog

from hub import accounts
from hub.config import LocalWorkerSettings, Settings
from hub.errors import HubError, NotFoundError
from inference import identity

log = structlog.get_logger()

OPERATOR_USER = "operator"
TOKEN_NAME = "local worker"  # noqa: S105 (a label)
LOCAL_WORKER_NAME = identity.LOCAL_WORKER
TOKEN_ENV = "IAMINE_WORKER_TOKEN"  # noqa: S105 (the variable's name, not a secret)


async def local_worker_record(
    conn: asyncpg.Connection, operator_id: UUID, slots: int
) -> identity.WorkerRecord:
    """The ``local`` worker record: the pool's own machine, trust 3 (granted by the hub itself).

    Registered as GPU-capable so the worker's own hello (which detects the hardware) decides,
    with the configured slots as its cap.
    """
    record = await identity.find_worker(conn, LOCAL_WORKER_NAME)
    if record is None:
        return await identity.register_worker(
            conn,
            name=LOCAL_WORKER_NAME,
            owner_id=operator_id,
            hardware="gpu",
            max_slots=slots,
            trust=identity.GRANTED,
            reason="the hub's own worker",
            hub_own=True,
        )
    if record.owner_id != operator_id:
        raise HubError(f"the worker name {LOCAL_WORKER_NAME!r} belongs to another user")
    record = await identity.update_worker(conn, record.id, hardware="gpu", max_slots=slots)
    if record.trust != identity.GRANTED:
        record = await identity.set_trust(conn, record.id, identity.GRANTED, "the hub's own worker")
    return record


async def issue_local_worker_token(conn: asyncpg.Connection, slots: int = 1) -> str:
    """Revoke the previous local-worker tokens and issue a fresh one for the operator user."""
    async with conn.transaction():
        try:
            operator = await accounts.get_user(conn, OPERATOR_USER)
        except NotFoundError:
            operator = await accounts.create_user(conn, OPERATOR_USER)
        record = await local_worker_record(conn, operator.id, slots)
        await conn.execute(
            "UPDATE tokens SET revoked_at = now() "
            "WHERE user_id = $1 AND name = $2 AND revoked_at IS NULL",
            operator.id,
            TOKEN_NAME,
        )
        issued = await accounts.create_token(
            conn, user_id=operator.id, scopes=("worker",), name=TOKEN_NAME, worker_id=record.id
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
        LOCAL_WORKER_NAME,
        "--slots",
        str(inference.local_worker_slots),
        # One stream, one format: the worker's lines join the hub's on the same stderr.
        "--log-format",
        settings.server.log_format,
        "--log-level",
        settings.server.log_level,
    ]
    if inference.local_worker_context is not None:
        command += ["--context", str(inference.local_worker_context)]
    if inference.local_worker_model is not None:
        command += ["--model", str(inference.local_worker_model)]
    if inference.local_worker_threads is not None:
        command += ["--threads", str(inference.local_worker_threads)]
    return command


State = Literal["disabled", "starting", "running", "restarting"]


def restart_delay_s(settings: LocalWorkerSettings, attempt: int) -> float:
    """Seconds to wait before restart number ``attempt`` (from 1) of a series of quick exits."""
    return float(min(settings.restart_max_s, settings.restart_initial_s * 2 ** (attempt - 1)))


class LocalWorker:
    """The local worker process, restarted with capped exponential backoff whenever it exits."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._clock = clock
        self.enabled = settings.inference.local_worker
        self.state: State = "starting" if self.enabled else "disabled"
        self.pid: int | None = None
        self.attempt = 0  # exits in a row, each after a short run
        self.restarts = 0
        self.last_exit_code: int | None = None
        self._retry_at: float | None = None

    def status(self) -> dict[str, object]:
        """What ``/readyz`` shows: state, process id, crash series, restarts, last exit code."""
        retry_in = None
        if self.state == "restarting" and self._retry_at is not None:
            retry_in = round(max(self._retry_at - self._clock(), 0.0), 3)
        return {
            "state": self.state,
            "pid": self.pid,
            "attempt": self.attempt,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "retry_in_s": retry_in,
        }

    async def run(self) -> None:
        """Keep the worker process running until cancelled, then stop it."""
        reset_s = self._settings.local_worker.restart_reset_s
        while True:
            ran_s = await self._run_once()
            self.attempt = 1 if ran_s >= reset_s else self.attempt + 1
            delay = restart_delay_s(self._settings.local_worker, self.attempt)
            self.state = "restarting"
            self._retry_at = self._clock() + delay
            log.warning(
                "local_worker_restarting",
                attempt=self.attempt,
                in_s=delay,
                last_exit_code=self.last_exit_code,
            )
            await anyio.sleep(delay)
            self.restarts += 1

    async def _run_once(self) -> float:
        """Start the process and wait for it to exit; return how long it ran."""
        started = self._clock()
        try:
            async with self._pool.acquire() as conn:
                token = await issue_local_worker_token(
                    conn, self._settings.inference.local_worker_slots
                )
            process = await asyncio.create_subprocess_exec(
                *worker_command(self._settings), env={**os.environ, TOKEN_ENV: token}
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, HubError) as exc:
            log.error("local_worker_start_failed", error=str(exc))
            self.last_exit_code = None
            return self._clock() - started
        self.pid, self.state = process.pid, "running"
        log.info("local_worker_started", pid=process.pid, attempt=self.attempt)
        try:
            self.last_exit_code = await process.wait()
            log.error("local_worker_exited", code=self.last_exit_code, pid=process.pid)
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(process)
            self.pid = None
        return self._clock() - started


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
