"""Mid-stream failover with two real worker processes: one is killed while it streams, and the
client's one stream completes on the other."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.hub.conftest import (
    BUNDLED_MODEL,
    LiveHub,
    start_worker,
    stop_worker,
    wait_for_model,
    wait_until,
)

PROMPT = [{"role": "user", "content": "Tell me about the moon in three sentences."}]


@pytest.fixture(scope="module")
def workers(
    live_hub: LiveHub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    logs = tmp_path_factory.mktemp("workers")
    processes = {name: start_worker(live_hub, name, logs / f"{name}.log") for name in ("a", "b")}
    try:
        wait_until(lambda: _worker_names(live_hub) == {"a", "b"}, 60, "both workers to join")
        wait_for_model(live_hub, BUNDLED_MODEL)
        yield processes
    finally:
        for process in processes.values():
            stop_worker(process)


def _worker_names(hub: LiveHub) -> set[str]:
    headers = {"Authorization": f"Bearer {hub.admin_token}"}
    data = httpx.get(f"{hub.url}/admin/api/workers", headers=headers, timeout=5).json()["data"]
    return {w["name"] for w in data}


def _worker_name(hub: LiveHub, worker_id: str) -> str:
    headers = {"Authorization": f"Bearer {hub.admin_token}"}
    data = httpx.get(f"{hub.url}/admin/api/workers", headers=headers, timeout=5).json()["data"]
    names: list[str] = [w["name"] for w in data if w["id"] == worker_id]
    return names[0]


def _body(stream: bool) -> dict[str, Any]:
    return {
        "model": BUNDLED_MODEL,
        "messages": PROMPT,
        "max_tokens": 48,
        "temperature": 0,
        "seed": 7,
        "stream": stream,
        "stream_options": {"include_usage": True} if stream else None,
    }


def test_a_killed_worker_mid_stream_is_replaced_and_the_answer_completes(
    live_hub: LiveHub, workers: dict[str, subprocess.Popen[bytes]]
) -> None:
    auth = {"Authorization": f"Bearer {live_hub.user_token}"}
    whole = httpx.post(
        f"{live_hub.url}/v1/chat/completions", json=_body(False), headers=auth, timeout=60
    ).json()
    expected = whole["choices"][0]["message"]["content"]
    chunks: list[dict[str, Any]] = []
    with httpx.stream(
        "POST", f"{live_hub.url}/v1/chat/completions", json=_body(True), headers=auth, timeout=60
    ) as response:
        victim = workers[_worker_name(live_hub, response.headers["x-iamine-worker"])]
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunks.append(json.loads(line[6:]))
            if len(chunks) == 6:
                victim.send_signal(signal.SIGKILL)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert not any("error" in c for c in chunks)
    assert finishes[-1] in ("stop", "length")
    assert text == expected
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == whole["usage"]["completion_tokens"]
    assert victim.wait(timeout=10) == -signal.SIGKILL
