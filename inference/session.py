"""The hub's side of one worker link: hello → welcome, heartbeats, frame dispatch, clean removal.

Transport-agnostic: the hub adapts its WebSocket to :class:`LinkTransport`, so this module never
imports a web framework. A malformed or unexpected frame gets an ``error`` frame back and a log
line; only a flood of them (``max_bad_frames``), silence (``heartbeat_misses`` intervals) or the
death of its token (revoked, expired, its user disabled: the hub says when) ends the link.
Whatever ends it, the worker is removed and its jobs fail over cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import anyio
import structlog

from inference.identity import WorkerRecord, narrow
from inference.link import OutputLimitExceeded, WorkerLink
from inference.protocol import (
    FEATURES,
    PROTOCOL_VERSION,
    Chunk,
    Chunks,
    Done,
    Error,
    ErrorCode,
    Frame,
    Heartbeat,
    Hello,
    InferenceError,
    Leave,
    ProtocolError,
    Welcome,
    encode,
    parse_frame,
)
from inference.registry import WorkerRegistry
from inference.settings import InferenceSettings

log = structlog.get_logger()


@dataclass(frozen=True)
class Credentials:
    """What a worker's token says: the worker record it speaks for, and the token itself."""

    worker: WorkerRecord
    token_id: UUID | None = None


Authenticate = Callable[[str], Awaitable[Credentials]]
"""Checks the token of a ``hello``; raises :class:`InferenceError` (``invalid_token``) to refuse."""

Revoked = Callable[[WorkerLink], Awaitable[str]]
"""Returns, with a reason code, once the link's token may no longer serve."""


class LinkClosed(Exception):
    """The transport is closed (the worker disconnected)."""


class LinkTransport(Protocol):
    """What a worker link needs from its connection."""

    async def receive_text(self) -> str:
        """Next text message; raises :class:`LinkClosed` when the peer is gone."""
        ...

    async def send_text(self, text: str) -> None:
        """Send one whole text message (concurrent calls are safe); :class:`LinkClosed` if gone."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close the connection."""
        ...


class _Sender:
    """Sends frames on one transport from several tasks.

    A transport writes each message whole, so concurrent sends need no lock; a link that closed
    is a ``RuntimeError`` to the sender.
    """

    def __init__(self, transport: LinkTransport) -> None:
        self._transport = transport

    async def __call__(self, frame: Frame) -> None:
        try:
            await self._transport.send_text(encode(frame))
        except LinkClosed as exc:
            raise RuntimeError("worker link closed") from exc


async def _receive_hello(transport: LinkTransport, settings: InferenceSettings) -> Hello:
    try:
        async with asyncio.timeout(settings.hello_timeout_s):
            text = await transport.receive_text()
    except TimeoutError:
        raise ProtocolError(ErrorCode.UNEXPECTED_FRAME, "no hello in time") from None
    if len(text) > settings.max_hello_bytes:
        # Checked before parsing or authenticating: an unauthenticated peer gets no work done.
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"a hello is at most {settings.max_hello_bytes} bytes"
        )
    frame = parse_frame(text)
    if not isinstance(frame, Hello):
        raise ProtocolError(ErrorCode.UNEXPECTED_FRAME, f"expected hello, got {frame.type}")
    if frame.protocol != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_PROTOCOL,
            f"this hub speaks protocol {PROTOCOL_VERSION}, the worker {frame.protocol}",
        )
    return frame


async def serve_worker_link(
    transport: LinkTransport,
    registry: WorkerRegistry,
    authenticate: Authenticate,
    clock: Callable[[], float] = time.monotonic,
    revoked: Revoked | None = None,
) -> None:
    """Run one worker link until it ends; never raises for anything the worker sends.

    ``revoked`` runs beside the link: when it returns, the worker is removed (its jobs fail over),
    told ``invalid_token`` (fatal: it does not reconnect) and the socket closed with code 1008.
    """
    settings = registry.settings
    send = _Sender(transport)
    try:
        hello = await _receive_hello(transport, settings)
        credentials = await authenticate(hello.token)
        record = credentials.worker
        # The record says who the worker is; its hello may only narrow that.
        served = narrow(record, hello.models, hello.hardware, hello.slots)
        if str(record.id) in registry.workers:
            raise InferenceError(
                ErrorCode.ALREADY_CONNECTED,
                f"worker {record.name!r} is already connected; one link per worker record",
            )
    except InferenceError as exc:
        log.warning("worker_refused", code=exc.code, error=exc.message)
        await _send_quietly(send, Error(code=exc.code, message=exc.message))
        await transport.close(1008, exc.code)
        return
    except LinkClosed:
        return
    link = WorkerLink(
        id=str(record.id),
        name=record.name,
        owner_id=record.owner_id,
        models=served.models,
        hardware=served.hardware,
        slots=served.slots,
        send=send,
        token_id=credentials.token_id,
        record_id=record.id,
        trust=record.trust,
    )
    log.info("worker_hello", worker=link.id, name=record.name, label=hello.worker_name)
    await send(
        Welcome(
            worker_id=link.id,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            protocol=PROTOCOL_VERSION,
            features=sorted(FEATURES.intersection(hello.features or ())) or None,
        )
    )
    try:
        await registry.add(link)
    except InferenceError as exc:  # another link of the record won a race with this one
        log.warning("worker_refused", code=exc.code, error=exc.message)
        await _send_quietly(send, Error(code=exc.code, message=exc.message))
        await _close_quietly(transport, exc.code, code=1008)
        return
    reason = "closed"
    revocation: list[str] = []
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_heartbeats, link, send, settings, clock, tasks.cancel_scope)
            if revoked is not None:
                tasks.start_soon(_end_when_revoked, revoked, link, revocation, tasks.cancel_scope)
            reason = await _read_frames(transport, link, registry, send, clock)
            tasks.cancel_scope.cancel()
    finally:
        if revocation:
            reason = revocation[0]
        elif link.last_seen + settings.heartbeat_interval_s * settings.heartbeat_misses < clock():
            reason = "heartbeat_timeout"
        await registry.remove(link.id, reason)
        if revocation:
            message = f"The worker's token no longer works ({reason})."
            await _send_quietly(send, Error(code=ErrorCode.INVALID_TOKEN, message=message))
        await _close_quietly(transport, reason, code=1008 if revocation else 1000)


async def _end_when_revoked(
    revoked: Revoked, link: WorkerLink, revocation: list[str], scope: anyio.CancelScope
) -> None:
    revocation.append(await revoked(link))
    log.warning("worker_token_dead", worker=link.id, name=link.name, reason=revocation[0])
    scope.cancel()


async def _read_frames(
    transport: LinkTransport,
    link: WorkerLink,
    registry: WorkerRegistry,
    send: _Sender,
    clock: Callable[[], float],
) -> str:
    bad_frames = 0
    while True:
        try:
            text = await transport.receive_text()
        except LinkClosed:
            return "disconnected"
        link.last_seen = clock()
        if len(text) > registry.settings.max_frame_bytes:
            await _cut_off(link, send, ErrorCode.FRAME_TOO_LARGE, f"{len(text)} characters")
            return ErrorCode.FRAME_TOO_LARGE
        try:
            frame = parse_frame(text)
            if isinstance(frame, Chunks):
                frame = frame.as_chunk()
            # A token of a running job, nearly every frame: delivered without a detour.
            if isinstance(frame, Chunk) and await registry.deliver(link, frame):
                continue
            problem = await _handle(frame, link, registry)
        except OutputLimitExceeded as exc:
            await _cut_off(link, send, exc.code, exc.message)
            return exc.code
        except ProtocolError as exc:
            problem = Error(code=exc.code, message=exc.message)
        if problem == "leave":
            return "left"
        if isinstance(problem, Error):
            bad_frames += 1
            log.warning(
                "worker_bad_frame", worker=link.id, code=problem.code, error=problem.message
            )
            await _send_quietly(send, problem)
            if bad_frames >= registry.settings.max_bad_frames:
                return "too_many_bad_frames"


async def _cut_off(link: WorkerLink, send: _Sender, code: str, detail: str) -> None:
    """Tell a worker why it is being disconnected; its jobs then fail over elsewhere."""
    log.warning("worker_cut_off", worker=link.id, name=link.name, code=code, detail=detail)
    await _send_quietly(send, Error(code=code, message=f"cut off: {detail}"))


async def _handle(frame: Frame, link: WorkerLink, registry: WorkerRegistry) -> Error | str | None:
    if isinstance(frame, Heartbeat):
        return None
    if isinstance(frame, Leave):
        log.info("worker_leaving", worker=link.id, reason=frame.reason)
        return "leave"
    if isinstance(frame, Chunk | Done | Error):
        if frame.job_id is None:
            assert isinstance(frame, Error)
            log.warning(
                "worker_reported_error", worker=link.id, code=frame.code, error=frame.message
            )
            return None
        if await registry.deliver(link, frame):
            return None
        if isinstance(frame, Error) and frame.code == ErrorCode.CANCELLED:
            return None  # the answer to our own cancel, after we let the job go
        return Error(
            job_id=frame.job_id,
            code=ErrorCode.UNEXPECTED_FRAME,
            message=f"no job {frame.job_id!r} is running on this worker",
        )
    return Error(
        code=ErrorCode.UNEXPECTED_FRAME, message=f"a worker may not send {frame.type!r} frames"
    )


async def _heartbeats(
    link: WorkerLink,
    send: _Sender,
    settings: InferenceSettings,
    clock: Callable[[], float],
    scope: anyio.CancelScope,
) -> None:
    silence_limit = settings.heartbeat_interval_s * settings.heartbeat_misses
    while True:
        await asyncio.sleep(settings.heartbeat_interval_s)
        if clock() - link.last_seen > silence_limit:
            log.warning("worker_silent", worker=link.id, seconds=round(clock() - link.last_seen))
            scope.cancel()
            return
        try:
            await send(Heartbeat(ts=time.time()))
        except RuntimeError:
            scope.cancel()
            return


async def _send_quietly(send: _Sender, frame: Frame) -> None:
    with contextlib.suppress(RuntimeError):
        await send(frame)


async def _close_quietly(transport: LinkTransport, reason: str, code: int = 1000) -> None:
    with contextlib.suppress(LinkClosed, RuntimeError, OSError):
        await transport.close(code, reason[:120])
