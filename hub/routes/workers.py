"""The worker endpoint: ``/v1/workers/ws`` (protocol v1, see docs/worker-protocol.md)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from hub import blacklist
from hub.auth import Principal
from hub.errors import AuthenticationError
from hub.state import HubState
from inference import identity
from inference.link import WorkerLink
from inference.protocol import ErrorCode, InferenceError
from inference.session import Credentials, LinkClosed, serve_worker_link

router = APIRouter(tags=["workers"])


class _WebSocketLink:
    """Adapts a Starlette WebSocket to the inference package's link transport."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket

    async def receive_text(self) -> str:
        message = await self._ws.receive()
        if message["type"] == "websocket.disconnect":
            raise LinkClosed
        text: str | None = message.get("text")
        if text is None:
            data: bytes = message.get("bytes") or b""
            return data.decode("utf-8", errors="replace")
        return text

    async def send_text(self, text: str) -> None:
        try:
            await self._ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise LinkClosed from exc

    async def close(self, code: int, reason: str) -> None:
        if self._ws.application_state != WebSocketState.DISCONNECTED:
            try:
                await self._ws.close(code, reason)
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                raise LinkClosed from exc


@router.websocket("/v1/workers/ws")
async def worker_link(websocket: WebSocket) -> None:
    """Accept a worker; it authenticates in its ``hello`` with a ``worker``-scope token.

    The token's worker record (``inference/identity.py``) says who the worker is: its name,
    owner, hardware, allowed models, slot cap and trust; the hello may only narrow them.

    The link lasts only as long as the token works: revoking it, its expiry or disabling its user
    closes the link (see :mod:`hub.revocation`).
    """
    state: HubState = websocket.state.hub
    await websocket.accept()

    async def authenticate(token: str) -> Credentials:
        try:
            principal: Principal = await state.tokens.resolve(token)
        except AuthenticationError as exc:
            state.metrics.auth_failures.labels(exc.code).inc()
            raise InferenceError(ErrorCode.INVALID_TOKEN, exc.message) from None
        if "worker" not in principal.scopes or principal.worker_id is None:
            raise InferenceError(ErrorCode.INVALID_TOKEN, "This token lacks the 'worker' scope.")
        async with state.db.pool.acquire() as conn:
            record = await identity.get_worker(conn, principal.worker_id)
            banned = await blacklist.is_blacklisted(conn, "worker", str(principal.worker_id))
        if record is None:  # deleted between the token check and now
            raise InferenceError(ErrorCode.INVALID_TOKEN, "This token's worker is gone.")
        if banned:
            raise InferenceError(ErrorCode.INVALID_TOKEN, "This worker is on the pool's blacklist.")
        return Credentials(worker=record, token_id=principal.token_id)

    async def revoked(link: WorkerLink) -> str:
        assert link.token_id is not None  # set from the credentials above
        return await state.tokens.leases.wait(link.token_id, link.owner_id)

    await serve_worker_link(_WebSocketLink(websocket), state.workers, authenticate, revoked=revoked)
