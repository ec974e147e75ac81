"""Restart: a hub killed with SIGKILL while it acknowledges writes loses none of them.

The hub runs as a real ``python -m hub serve`` process on its own database. Writer threads
store facts, notes (``user:me``) and tokens through the API as fast as it answers and record
every write that got a 2xx; the test SIGKILLs the hub while they write, starts a new hub on the
same database, and reads every acknowledged write back through the API with the user's token.
A fact's text is encrypted under the user's data key, so reading it back also proves that the
token still opens the memory after the crash. Writes that got no answer may or may not be there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hub.conftest import _drop, _prepare, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
# Enough acknowledged writes of each kind that the kill lands among them, not before.
WRITES_BEFORE_KILL = 20
WRITERS_PER_KIND = 2
WORDS = ("amber", "basil", "cedar", "ember", "fjord", "garnet", "harbor", "indigo", "lagoon")


@dataclass
class HubProcess:
    """``python -m hub serve`` on a test database, started and stopped by the test."""

    database_url: str
    data_dir: Path
    embedding_model_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start(self) -> None:
        """Start a hub on a free port and wait until it is ready."""
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("IAMINE_")} | {
            "IAMINE_DATABASE_URL": self.database_url,
            "IAMINE_DATA_DIR": str(self.data_dir),
            "IAMINE_SERVER__PORT": str(port),
            "IAMINE_SERVER__LOG_LEVEL": "warning",
            "IAMINE_INFERENCE__LOCAL_WORKER": "false",
            "IAMINE_MEMORY__FACTS_EXTRACTION": "false",
            "IAMINE_MEMORY__EMBEDDING_MODEL_DIR": str(self.embedding_model_dir),
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hub", "serve"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{port}"
        wait_until(self._ready, 120, "the hub to be ready")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the hub exited early:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL the hub: no lifespan shutdown, no drained queues."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=15) == -signal.SIGKILL

    def stop(self) -> None:
        """Stop the hub if it runs (SIGTERM, then SIGKILL)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


@dataclass
class Acknowledged:
    """Writes the hub answered with a 2xx, by kind: what the answer said was stored."""

    facts: dict[str, str] = field(default_factory=dict)  # id -> text
    notes: dict[str, str] = field(default_factory=dict)  # id -> body
    tokens: dict[str, str] = field(default_factory=dict)  # id -> token text
    lock: threading.Lock = field(default_factory=threading.Lock)

    def counts(self) -> tuple[int, int, int]:
        """How many of each kind were acknowledged so far."""
        with self.lock:
            return len(self.facts), len(self.notes), len(self.tokens)


@pytest.fixture
def hub(
    pg_admin_uri: str, tmp_path: Path, embedding_model_dir: Path
) -> Iterator[tuple[HubProcess, str]]:
    """A hub process on a fresh database, and the token of its one user."""
    name = f"restart_{uuid.uuid4().hex[:12]}"
    url, user_token, _ = asyncio.run(_prepare(pg_admin_uri, name))
    process = HubProcess(url, tmp_path / "data", embedding_model_dir, tmp_path / "hub.log")
    try:
        process.start()
        yield process, user_token
    finally:
        process.stop()
        asyncio.run(_drop(pg_admin_uri, name))


def fact_text(label: str) -> str:
    """A sentence that differs from the others in words, not only in its label (the hub merges
    near-duplicates, and the answer then names the fact it merged into)."""
    digest = uuid.uuid5(uuid.NAMESPACE_OID, label).int
    a, b, c = (WORDS[(digest >> shift) % len(WORDS)] for shift in (0, 16, 32))
    return f"The user's {a} box {label} holds {b} and {c} seeds."


def write_until_refused(
    hub: HubProcess, token: str, stop: threading.Event, write: Callable[[httpx.Client, int], None]
) -> None:
    """Call ``write`` again and again until told to stop or the hub stops answering."""
    with httpx.Client(
        base_url=hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        index = 0
        while not stop.is_set():
            try:
                write(http, index)
            except httpx.TransportError:
                return  # the hub is gone; this write was never acknowledged
            index += 1


def writers(acked: Acknowledged, prefix: str) -> list[Callable[[httpx.Client, int], None]]:
    """One write function per kind, each recording what a 2xx acknowledged."""

    def fact(http: httpx.Client, index: int) -> None:
        response = http.post("/v1/memory/facts", json={"text": fact_text(f"{prefix}-{index}")})
        if response.is_success:
            body = response.json()
            with acked.lock:
                acked.facts[body["id"]] = body["text"]

    def note(http: httpx.Client, index: int) -> None:
        text = f"note {prefix}-{index}: remember the {WORDS[index % len(WORDS)]} plan"
        response = http.post("/v1/memory/notes", json={"namespace": "user:me", "body": text})
        if response.is_success:
            body = response.json()
            with acked.lock:
                acked.notes[body["id"]] = body["body"]

    def token(http: httpx.Client, index: int) -> None:
        response = http.post("/v1/tokens", json={"name": f"{prefix}-{index}", "scopes": ["user"]})
        if response.is_success:
            body = response.json()
            with acked.lock:
                acked.tokens[body["id"]] = body["token"]

    return [fact, note, token]


def run_writers_and_kill(hub: HubProcess, token: str) -> Acknowledged:
    """Write from several threads, SIGKILL the hub while they write, wait for them to notice."""
    acked = Acknowledged()
    stop = threading.Event()
    threads = [
        threading.Thread(target=write_until_refused, args=(hub, token, stop, write), daemon=True)
        for n in range(WRITERS_PER_KIND)
        for write in writers(acked, f"w{n}")
    ]
    for thread in threads:
        thread.start()
    try:
        wait_until(
            lambda: min(acked.counts()) >= WRITES_BEFORE_KILL, 120, "writes to be acknowledged"
        )
        hub.kill()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a writer did not stop"
    return acked


def stored(http: httpx.Client, path: str, token: str | None = None) -> dict[str, Any] | None:
    """GET ``path`` (with another token if given): its JSON, or None when it is 404."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    response = http.get(path, headers=headers)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    return body


def lost(http: httpx.Client, path: str, field: str, written: dict[str, str]) -> dict[str, str]:
    """The acknowledged items (id -> text) that read back as missing or different."""
    found = {i: stored(http, path.format(i)) for i in written}
    return {i: text for i, text in written.items() if (found[i] or {}).get(field) != text}


def test_every_acknowledged_write_survives_a_hub_killed_while_writing(
    hub: tuple[HubProcess, str],
) -> None:
    process, token = hub
    acked = run_writers_and_kill(process, token)

    process.start()
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=process.url, headers=auth, timeout=30) as http:
        lost_facts = lost(http, "/v1/memory/facts/{}", "text", acked.facts)
        lost_notes = lost(http, "/v1/memory/notes/{}", "body", acked.notes)
        listed = {t["id"]: t for t in (stored(http, "/v1/tokens") or {})["data"]}
        lost_tokens = [i for i in acked.tokens if i not in listed or listed[i]["revoked_at"]]
        # Each new token signs in and opens the same memory: its key wrap was committed with it.
        locked = [
            i for i, issued in acked.tokens.items()
            if stored(http, "/v1/memory/facts?k=1", token=issued) is None
        ]  # fmt: skip
    assert (lost_facts, lost_notes, lost_tokens, locked) == ({}, {}, [], [])
