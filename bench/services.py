"""The processes a benchmark measures: start them, wait until they answer, meter them, stop them.

Every child gets its own session (so a Ctrl-C in the terminal reaches only the benchmark, which
then stops the children in order) and writes its output to a log file in the run's work
directory; when a child dies early, its log's tail is in the error. :class:`Services` stops
everything it started when its ``with`` block ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
HUB_COMMAND = (sys.executable, "-m", "hub")
_TOKEN = re.compile(r"\biam_[0-9a-f]+_[A-Za-z0-9_-]+")


class ServiceError(RuntimeError):
    """A service failed to start or to become ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log(message: str) -> None:
    """Progress for humans, on stderr (stdout carries only the result line)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Service:
    """One child process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        """The last lines the process wrote."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def processes(self) -> list[psutil.Process]:
        """The process and its descendants (for CPU accounting)."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL to its process group if it is still there after ``grace_s``."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log(f"{self.name} ignored SIGTERM for {grace_s:g} s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


@dataclass
class Services:
    """Children of one benchmark run, stopped in reverse order of start."""

    workdir: Path
    started: list[Service] = field(default_factory=list)
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Service:
        """Start ``argv`` in the repository root with its output in ``<workdir>/<name>.log``."""
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                list(argv),
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, process, log_path)
        self.started.append(service)
        return service

    def on_close(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` after every service has stopped."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        """Stop every service, newest first, then run the cleanups."""
        while self.started:
            service = self.started.pop()
            try:
                service.stop()
            except (OSError, subprocess.SubprocessError) as exc:
                log(f"could not stop {service.name}: {exc!r}")
        for cleanup in reversed(self._cleanups):
            cleanup()
        self._cleanups.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so ``finally`` blocks stop the children either way."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def wait_ready(
    service: Service,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    ready: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
    timeout_s: float = 120.0,
) -> None:
    """Poll ``url`` until ``ready`` says so; fail early, with its log, if the process dies."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if not service.alive():
                raise ServiceError(f"{service.name} exited early:\n{service.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if ready(await client.get(url, headers=headers)):
                    return
            await asyncio.sleep(0.1)
    raise ServiceError(f"{service.name} not ready after {timeout_s:g} s:\n{service.log_tail()}")


def start_stub(services: Services, tokens: int) -> tuple[Service, str]:
    """Start ``bench/stub_upstream.py``; return it and its base URL (without ``/v1``)."""
    port = free_port()
    argv = [sys.executable, str(REPO / "bench" / "stub_upstream.py"), "--port", str(port)]
    service = services.start("stub", [*argv, "--tokens", str(tokens)])
    return service, f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class Hub:
    """A running hub and the tokens a benchmark needs."""

    service: Service
    url: str
    data_dir: Path
    user_token: str
    env: dict[str, str]
    worker_tokens: dict[str, str] = field(default_factory=dict)

    def auth(self) -> dict[str, str]:
        """The user token as request headers."""
        return {"Authorization": f"Bearer {self.user_token}"}

    def worker_token(self, name: str) -> str:
        """The token of the worker record ``name``, registered on first use.

        A record per worker name (one link per record), registered by the admin at trust 3 as
        the pool's own machines: GPU class allowed, 1024 slots, any model.
        """
        if name not in self.worker_tokens:
            output = iamine(
                self.env, "workers", "register", name, "--owner", "bench",
                "--hardware", "gpu", "--slots", "1024", "--trust", "3",
            )  # fmt: skip
            match = _TOKEN.search(output)
            if match is None:
                raise ServiceError(f"no token in the output of iamine workers register:\n{output}")
            self.worker_tokens[name] = match[0]
        return self.worker_tokens[name]

    def postgres(self) -> list[psutil.Process]:
        """The embedded PostgreSQL server and its backends (for CPU accounting)."""
        try:
            pid = int((self.data_dir / "pg" / "postmaster.pid").read_text().split()[0])
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
            return []


def hub_env(data_dir: Path, port: int) -> dict[str, str]:
    """The environment of every ``iamine`` command of the run: its own data dir and port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IAMINE_")}
    return env | {
        "IAMINE_DATA_DIR": str(data_dir),
        "IAMINE_SERVER__PORT": str(port),
        "IAMINE_SERVER__LOG_LEVEL": "warning",
        "IAMINE_INFERENCE__LOCAL_WORKER": "false",
    }


def iamine(env: dict[str, str], *args: str) -> str:
    """Run one ``iamine`` CLI command to completion and return its output."""
    done = subprocess.run(
        [*HUB_COMMAND, *args],
        cwd=REPO,
        env=env | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise ServiceError(f"iamine {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def issue_token(env: dict[str, str], user: str, *, scope: str) -> str:
    """Issue a token with ``iamine tokens create`` and parse it from the output."""
    output = iamine(env, "tokens", "create", "--user", user, "--scope", scope, "--name", scope)
    match = _TOKEN.search(output)
    if match is None:
        raise ServiceError(f"no token in the output of iamine tokens create:\n{output}")
    return match[0]


async def start_hub(
    services: Services, name: str = "hub", settings: dict[str, str] | None = None
) -> Hub:
    """Create a user and tokens with the CLI, then run ``iamine serve`` until ready.

    ``name`` names its data directory and log; ``settings`` adds ``IAMINE_*`` variables.
    """
    data_dir = services.workdir / f"{name}-data"
    port = free_port()
    env = hub_env(data_dir, port) | (settings or {})
    # The embedded PostgreSQL outlives a hub that is killed; stop it by its pid file then.
    services.on_close(lambda: stop_postgres(data_dir))
    iamine(env, "users", "create", "bench")
    user_token = issue_token(env, "bench", scope="user")
    service = services.start(name, [*HUB_COMMAND, "serve"], env)
    url = f"http://127.0.0.1:{port}"
    await wait_ready(service, f"{url}/readyz")
    return Hub(service, url, data_dir, user_token, env)


async def start_worker(
    services: Services, hub: Hub, model: str, *args: str, name: str = "worker"
) -> Service:
    """Run ``iamine worker`` against ``hub`` and wait until ``/v1/models`` lists ``model``."""
    argv = [*HUB_COMMAND, "worker", "--hub", hub.url, "--name", name, *args]
    token = hub.worker_token(name)
    service = services.start(name, argv, hub.env | {"IAMINE_WORKER_TOKEN": token})

    def listed(response: httpx.Response) -> bool:
        return response.status_code == 200 and any(
            entry.get("id") == model for entry in response.json().get("data", [])
        )

    await wait_ready(service, f"{hub.url}/v1/models", headers=hub.auth(), ready=listed)
    return service


def stop_postgres(data_dir: Path) -> None:
    """Stop an embedded PostgreSQL left running in ``data_dir`` (its hub was killed)."""
    pid_file = data_dir / "pg" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        process = psutil.Process(pid)
    except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
        return
    if "postgres" not in process.name():
        return
    log(f"stopping the embedded PostgreSQL (pid {pid}) left by the hub")
    process.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown
    with contextlib.suppress(psutil.TimeoutExpired):
        process.wait(timeout=15)


def cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    """User plus system CPU seconds the processes have used so far."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = process.cpu_times()
            total += times.user + times.system
    return total
