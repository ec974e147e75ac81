"""The worker side of protocol v1: connect out to the hub, run its jobs on an engine, reconnect.

``run_worker`` keeps one WebSocket to ``{hub_url}/v1/workers/ws``: ``hello`` → ``welcome``,
heartbeats both ways, up to ``slots`` jobs at once, ``leave`` when cancelled. A lost link is
retried with exponential backoff and full jitter; a refused token is fatal.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import os
import platform
import random
import sys
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import anyio
import structlog
from anyio.abc import TaskGroup
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from inference.engine import Engine, EngineError, Finish
from inference.protocol import (
    FEATURE_CHUNKS,
    FEATURES,
    MAX_PIECES,
    PROTOCOL_VERSION,
    Cancel,
    Chunk,
    Done,
    Error,
    ErrorCode,
    Frame,
    Hardware,
    Heartbeat,
    Hello,
    InferenceError,
    Job,
    Leave,
    ProtocolError,
    Welcome,
    encode_bytes,
    encode_chunk,
    encode_pieces,
    parse_frame,
)

log = structlog.get_logger(__name__)

WORKERS_WS_PATH = "/v1/workers/ws"
FATAL_CODES: frozenset[str] = frozenset(
    {ErrorCode.INVALID_TOKEN, ErrorCode.UNSUPPORTED_PROTOCOL, ErrorCode.NOT_ALLOWED}
)
_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_READ_AHEAD = 256  # engine events read ahead of the socket, at most (backpressure beyond)
_CLOSE_WAIT_S = 5.0  # how long a job's end waits for its engine iterator to close


class WorkerError(InferenceError):
    """The hub refused this worker for good (bad token, other protocol): retrying cannot help."""


class _LinkLost(Exception):
    """The connection to the hub is gone or unusable; the worker reconnects."""


@dataclass(frozen=True, kw_only=True)
class _Options:
    slots: int
    handshake_timeout_s: float
    send_timeout_s: float
    missed_heartbeats: int
    leave_timeout_s: float


def detect_hardware() -> Hardware:
    """Say ``gpu`` when llama.cpp was built with GPU offload, else ``cpu``."""
    try:
        llama_cpp = importlib.import_module("llama_cpp")
    except ImportError:
        return "cpu"
    return "gpu" if llama_cpp.llama_supports_gpu_offload() else "cpu"


# NVIDIA and AMD (ROCm) compute device nodes.
GPU_DEVICES = ("/dev/nvidia0", "/dev/kfd")


def detect_machine_hardware(devices: tuple[str, ...] = GPU_DEVICES) -> Hardware:
    """Say ``gpu`` when this machine has a GPU an inference server can use, else ``cpu``.

    For ``--upstream`` workers, whose server usually runs on the same machine: an NVIDIA or AMD
    compute device node, or Apple silicon (Metal). A remote upstream should pass ``--hardware``.
    Either way the hub caps it by the worker's record: a CPU record is served as CPU.
    """
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "gpu"
    return "gpu" if any(os.path.exists(d) for d in devices) else "cpu"


def worker_version() -> str:
    """The installed iamine-hub version, sent in ``hello``."""
    try:
        return importlib.metadata.version("iamine-hub")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def workers_ws_url(hub_url: str) -> str:
    """Turn a hub URL (http, https, ws or wss) into its worker WebSocket URL."""
    parts = urlsplit(hub_url)
    scheme = _SCHEMES.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a hub URL: {hub_url!r} (expected http(s):// or ws(s)://host)")
    path = parts.path.rstrip("/")
    if not path.endswith(WORKERS_WS_PATH):
        path += WORKERS_WS_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def backoff_delay(attempt: int, *, initial_s: float, cap_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, initial·2^attempt)]."""
    return rng.uniform(0, min(cap_s, initial_s * 2 ** min(attempt, 32)))


async def run_worker(
    hub_url: str,
    token: str,
    engine: Engine,
    *,
    worker_name: str,
    hardware: Hardware,
    slots: int = 1,
    version: str | None = None,
    connect_timeout_s: float = 10.0,
    handshake_timeout_s: float = 10.0,
    send_timeout_s: float = 10.0,
    missed_heartbeats: int = 3,
    leave_timeout_s: float = 2.0,
    backoff_initial_s: float = 1.0,
    backoff_max_s: float = 60.0,
    max_frame_bytes: int = 16 * 2**20,
    rng: random.Random | None = None,
) -> None:
    """Serve the hub's jobs until cancelled, then say ``leave``; raise ``WorkerError`` if refused.

    Every timeout is a parameter (the hub's settings supply them). Reconnects never stop on their
    own: only cancellation or a fatal refusal (``invalid_token``, ``unsupported_protocol``) ends it.
    """
    url = workers_ws_url(hub_url)
    options = _Options(
        slots=slots,
        handshake_timeout_s=handshake_timeout_s,
        send_timeout_s=send_timeout_s,
        missed_heartbeats=missed_heartbeats,
        leave_timeout_s=leave_timeout_s,
    )
    rng = rng or random.Random()
    attempt = 0
    while True:
        session: _Session | None = None
        reason = "the session ended"
        try:
            async with connect(
                url,
                open_timeout=connect_timeout_s,
                close_timeout=leave_timeout_s,
                ping_interval=None,  # liveness is the protocol's own heartbeat
                max_size=max_frame_bytes,
                compression=None,  # frames are ~100 bytes, one per token: deflate costs more
            ) as websocket:
                hello = Hello(
                    protocol=PROTOCOL_VERSION,
                    token=token,
                    worker_name=worker_name,
                    models=engine.models(),
                    hardware=hardware,
                    slots=slots,
                    version=version or worker_version(),
                    features=sorted(FEATURES),
                )
                session = _Session(websocket, engine, options)
                await session.run(hello)
        except (OSError, TimeoutError, WebSocketException, ProtocolError, _LinkLost) as exc:
            reason = repr(exc)
        if session is not None and session.welcomed:
            attempt = 0
        delay = backoff_delay(attempt, initial_s=backoff_initial_s, cap_s=backoff_max_s, rng=rng)
        log.warning("hub_link_lost", url=url, error=reason, retry_in_s=round(delay, 3))
        attempt += 1
        await anyio.sleep(delay)


@dataclass
class _RunningJob:
    job: Job
    scope: anyio.CancelScope


class _Session:
    """One connection's life: handshake, heartbeats, jobs; it ends by raising why."""

    def __init__(self, websocket: ClientConnection, engine: Engine, options: _Options) -> None:
        self._websocket = websocket
        self._engine = engine
        self._options = options
        self._jobs: dict[str, _RunningJob] = {}
        self._task_group: TaskGroup | None = None
        self._failure: BaseException | None = None
        self.welcomed = False
        self._pieces_agreed = False

    async def run(self, hello: Hello) -> None:
        try:
            await self._send(hello)
            welcome = await self._handshake()
            self.welcomed = True
            self._pieces_agreed = FEATURE_CHUNKS in (welcome.features or ())
            log.info("worker_welcomed", worker_id=welcome.worker_id, slots=self._options.slots)
            silence_s = welcome.heartbeat_interval_s * self._options.missed_heartbeats
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_group.start_soon(self._send_heartbeats, welcome.heartbeat_interval_s)
                try:
                    await self._receive(silence_s)
                except (_LinkLost, WorkerError, WebSocketException, OSError) as exc:
                    self._fail(exc)
        except anyio.get_cancelled_exc_class():
            await self._leave("shutdown")
            raise
        if self._failure is not None:
            raise self._failure

    async def _handshake(self) -> Welcome:
        with anyio.fail_after(self._options.handshake_timeout_s):
            while True:
                frame = parse_frame(await self._websocket.recv())
                if isinstance(frame, Welcome):
                    if frame.protocol != PROTOCOL_VERSION:
                        message = f"hub speaks protocol {frame.protocol}, not {PROTOCOL_VERSION}"
                        raise WorkerError(ErrorCode.UNSUPPORTED_PROTOCOL, message)
                    return frame
                if isinstance(frame, Error):
                    _raise_if_fatal(frame)
                    raise _LinkLost(f"hub refused the hello: {frame.code}: {frame.message}")
                if not isinstance(frame, Heartbeat):
                    raise ProtocolError(ErrorCode.UNEXPECTED_FRAME, f"{frame.type} before welcome")

    async def _receive(self, silence_s: float) -> None:
        while True:
            try:
                with anyio.fail_after(silence_s):
                    text = await self._websocket.recv()
            except TimeoutError:
                raise _LinkLost(f"hub silent for {silence_s:g} s") from None
            try:
                frame = parse_frame(text)
            except ProtocolError as exc:
                log.warning("hub_frame_invalid", code=exc.code, error=exc.message)
                await self._send(Error(code=exc.code, message=exc.message))
                continue
            await self._handle(frame)

    async def _handle(self, frame: Frame) -> None:
        if isinstance(frame, Job):
            await self._start(frame)
        elif isinstance(frame, Cancel):
            running = self._jobs.get(frame.job_id)
            if running is not None:
                running.scope.cancel()
        elif isinstance(frame, Error):
            _raise_if_fatal(frame)
            log.warning("hub_error", job_id=frame.job_id, code=frame.code, error=frame.message)
        elif not isinstance(frame, Heartbeat):
            message = f"a worker does not accept {frame.type!r} frames"
            await self._send(Error(code=ErrorCode.UNEXPECTED_FRAME, message=message))

    async def _start(self, job: Job) -> None:
        refusal: tuple[ErrorCode, str] | None = None
        if job.job_id in self._jobs:
            refusal = (ErrorCode.DUPLICATE_JOB, "a job with this id is already running")
        elif len(self._jobs) >= self._options.slots:
            refusal = (ErrorCode.SLOTS_FULL, f"all {self._options.slots} slots are busy")
        elif job.model not in {model.id for model in self._engine.models()}:
            refusal = (ErrorCode.UNKNOWN_MODEL, f"this worker does not serve {job.model!r}")
        if refusal is not None:
            await self._send(Error(job_id=job.job_id, code=refusal[0], message=refusal[1]))
            return
        running = _RunningJob(job=job, scope=anyio.CancelScope())
        self._jobs[job.job_id] = running
        log.debug("job_started", job_id=job.job_id, model=job.model, running=len(self._jobs))
        assert self._task_group is not None
        self._task_group.start_soon(self._run_job, running)

    async def _run_job(self, running: _RunningJob) -> None:
        """Top-level handler of one job: whatever happens, the hub hears how it ended."""
        job = running.job
        try:
            outcome = await self._stream(running)
        except _LinkLost:
            return
        except TimeoutError:
            message = f"not done within {job.deadline_s:g} s"
            outcome = Error(job_id=job.job_id, code=ErrorCode.DEADLINE_EXCEEDED, message=message)
        except EngineError as exc:
            outcome = Error(job_id=job.job_id, code=exc.code, message=exc.message)
        except Exception:
            log.exception("job_failed", job_id=job.job_id)
            message = "the worker failed on this job"
            outcome = Error(job_id=job.job_id, code=ErrorCode.INTERNAL_ERROR, message=message)
        finally:
            # Free the slot before the final frame: the hub may send the next job at once.
            self._jobs.pop(job.job_id, None)
        try:
            await self._send(outcome)
        except _LinkLost:
            return
        finally:  # logged after the frame is on its way: the hub's answer does not wait for it
            log.info("job_ended", job_id=job.job_id, outcome=_describe(outcome))

    async def _stream(self, running: _RunningJob) -> Done | Error:
        """Relay the engine's events as chunks; return the job's final frame.

        Text pieces the engine made ready together (several tokens in one upstream read, or
        produced while the socket was busy) leave as one ``chunks`` frame once the hub agreed
        to the feature: one message, one write and one read on the hub instead of one per token.
        """
        job = running.job
        done: Done | None = None
        with running.scope, anyio.fail_after(job.deadline_s):
            async with aclosing(ready_together(self._engine.generate(job))) as batches:
                async for batch in batches:
                    texts: list[str | None] = []
                    for event in batch:
                        if isinstance(event, Finish):
                            done = Done(
                                job_id=job.job_id,
                                finish_reason=event.finish_reason,
                                usage=event.usage,
                                model=event.model,
                            )
                        elif event.tool_calls is None:
                            texts.append(event.content)
                        else:
                            await self._send_texts(job.job_id, texts)
                            texts = []
                            await self._send(Chunk(job_id=job.job_id, delta=event))
                    await self._send_texts(job.job_id, texts)
        if running.scope.cancelled_caught:
            return Error(job_id=job.job_id, code=ErrorCode.CANCELLED, message="cancelled")
        if done is None:
            message = "the engine ended without finishing"
            return Error(job_id=job.job_id, code=ErrorCode.ENGINE_ERROR, message=message)
        return done

    async def _send_heartbeats(self, interval_s: float) -> None:
        while True:
            await anyio.sleep(interval_s)
            try:
                await self._send(Heartbeat(ts=time.time()))
            except _LinkLost:
                return

    async def _send_texts(self, job_id: str, texts: list[str | None]) -> None:
        """Send text pieces: one ``chunks`` frame per :data:`MAX_PIECES` if agreed, else each."""
        if len(texts) > 1 and self._pieces_agreed:
            for start in range(0, len(texts), MAX_PIECES):
                pieces = [text or "" for text in texts[start : start + MAX_PIECES]]
                await self._send_bytes(encode_pieces(job_id, pieces), "chunks")
            return
        for text in texts:
            await self._send_bytes(encode_chunk(job_id, text), "chunk")

    async def _send(self, frame: Frame) -> None:
        """Send one frame; a failure to send ends the session."""
        await self._send_bytes(encode_bytes(frame), frame.type)

    async def _send_bytes(self, data: bytes, kind: str) -> None:
        """Send one encoded frame as a text message; a failure to send ends the session.

        A message is written whole, so concurrent senders need no lock, and the write returns
        at once unless the socket's buffer is full: only then can the hub's silence stall it,
        so only then is ``send_timeout_s`` armed (not a timer per token).
        """
        websocket = self._websocket
        try:
            if not websocket.paused:
                await websocket.send(data, text=True)
                return
            with anyio.fail_after(self._options.send_timeout_s):
                await websocket.send(data, text=True)
        except (TimeoutError, WebSocketException, OSError) as exc:
            self._fail(exc)
            raise _LinkLost(f"could not send {kind}: {exc!r}") from exc

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    async def _leave(self, reason: str) -> None:
        """Say goodbye and close, shielded: this runs while the worker is being cancelled."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._options.leave_timeout_s):
            try:
                await self._websocket.send(encode_bytes(Leave(reason=reason)), text=True)
                await self._websocket.close(code=1001, reason="worker leaving")
            except (WebSocketException, OSError) as exc:
                log.info("leave_not_sent", error=repr(exc))


@dataclass(frozen=True)
class _Raised:
    """An exception of the engine, carried to the task that relays its events."""

    error: Exception


_END = object()
"""Put after the last event of the engine."""


async def ready_together[T](events: AsyncGenerator[T, None]) -> AsyncGenerator[list[T], None]:
    """Yield ``events`` in lists of those that were ready together, in order.

    A child task reads ahead (at most :data:`_READ_AHEAD` events) while the caller sends the
    previous list; whatever accumulated meanwhile comes as the next list. The child owns the
    iterator and closes it, on cancellation too; the engine's exceptions are raised to the
    caller as they are, after the events that came before them. A plain asyncio task rather
    than a task group: a task group cannot be held across the ``yield`` of a generator that
    its consumer may close or cancel (the closing would come out as an exception group).
    """
    queue: asyncio.Queue[object] = asyncio.Queue(_READ_AHEAD)

    async def pump() -> None:
        async with aclosing(events) as source:
            try:
                async for event in source:
                    await queue.put(event)  # returns at once while there is room
            # Handed over, not handled: the caller raises it in its own task.
            except Exception as exc:
                await queue.put(_Raised(exc))
                return
        await queue.put(_END)

    reader = asyncio.ensure_future(pump())
    try:
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            ready: list[T] = []
            for item in batch:
                if item is _END:
                    if ready:
                        yield ready
                    return
                if isinstance(item, _Raised):
                    if ready:
                        yield ready
                    raise item.error
                ready.append(cast("T", item))
            yield ready
    finally:
        reader.cancel()
        # The engine's iterator is closed before the job's last frame goes, within a bound: an
        # engine stuck in one long step (a prompt being read) finishes closing on its own.
        with anyio.CancelScope(shield=True):
            await asyncio.wait([reader], timeout=_CLOSE_WAIT_S)
        if not reader.done():
            log.warning("engine_slow_to_stop", waited_s=_CLOSE_WAIT_S)


def _raise_if_fatal(frame: Error) -> None:
    if frame.code in FATAL_CODES:
        if frame.code == ErrorCode.INVALID_TOKEN:
            message = f"the hub refused the worker token ({frame.message}); check the token"
        else:
            message = f"the hub refused this worker: {frame.message}"
        raise WorkerError(frame.code, message)


def _describe(outcome: Done | Error) -> str:
    return outcome.finish_reason if isinstance(outcome, Done) else outcome.code
