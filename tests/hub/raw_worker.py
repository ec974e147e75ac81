"""A worker driven by hand over a raw WebSocket, for tests of misbehaviour and routing."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.hub.conftest import LiveHub


def hello(
    token: str, model: str, slots: int = 1, name: str = "by-hand", tools: bool = False
) -> dict[str, Any]:
    return {
        "type": "hello",
        "protocol": 1,
        "token": token,
        "worker_name": name,
        "models": [{"id": model, "context_size": 2048, "supports_tools": tools}],
        "hardware": "cpu",
        "slots": slots,
        "version": "test",
    }


async def receive(ws: ClientConnection, frame_type: str) -> dict[str, Any]:
    """The next frame of this type (heartbeats in between are skipped)."""
    with anyio.fail_after(10):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] == frame_type:
                return frame


@asynccontextmanager
async def raw_worker(
    hub: LiveHub,
    model: str,
    slots: int = 1,
    name: str | None = None,
    tools: bool = False,
    token: str | None = None,
) -> AsyncIterator[ClientConnection]:
    """A connected, welcomed worker that keeps sending heartbeats (so slow tests keep it).

    It speaks for the worker record ``name`` (an established test worker, made on first use;
    a fresh one when no name is given) unless ``token`` names another.
    """
    name = name or f"by-hand-{uuid.uuid4().hex[:8]}"
    token = token or hub.worker_token_for(name)
    async with connect(hub.ws_url) as ws:
        await ws.send(json.dumps(hello(token, model, slots, name, tools)))
        welcome = await receive(ws, "welcome")
        assert welcome["protocol"] == 1
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_heartbeats, ws, welcome["heartbeat_interval_s"] / 2)
            try:
                yield ws
            finally:
                tasks.cancel_scope.cancel()


async def _heartbeats(ws: ClientConnection, interval_s: float) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await anyio.sleep(interval_s)
            await ws.send(json.dumps({"type": "heartbeat", "ts": time.time()}))


def chat(hub: LiveHub, model: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(
        f"{hub.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {hub.user_token}"},
        timeout=30,
    )


async def models(hub: LiveHub) -> set[str]:
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{hub.url}/v1/models", headers={"Authorization": f"Bearer {hub.user_token}"}
        )
    return {m["id"] for m in response.json()["data"]}


async def worker_counts(hub: LiveHub) -> dict[str, int]:
    """``/v1/models`` as model id → connected workers (0 for a model seen lately)."""
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{hub.url}/v1/models", headers={"Authorization": f"Bearer {hub.user_token}"}
        )
    return {m["id"]: m["workers"] for m in response.json()["data"]}


async def answer(ws: ClientConnection, job: dict[str, Any], text: str) -> None:
    """Finish a job with one chunk of text and a done frame."""
    await ws.send(
        json.dumps({"type": "chunk", "job_id": job["job_id"], "delta": {"content": text}})
    )
    await ws.send(
        json.dumps(
            {
                "type": "done",
                "job_id": job["job_id"],
                "finish_reason": "stop",
                "model": job["model"],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        )
    )
