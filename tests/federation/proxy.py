"""A controllable proxy in front of one hub: the test cuts and heals the links to it.

A hub's public URL is its proxy's address, so every peer reaches it through the proxy. The proxy
reads each HTTP/1.1 request's head (keep-alive connections carry several) and, while a link is
cut, drops the connection instead of forwarding a request signed by a cut pool (the ``keyid``
of its ``Signature-Input``), as a network partition would: the caller sees no answer at all.
:meth:`LinkProxy.cut` with no pool cuts every signed request; unsigned ones (the admin API)
always pass, so the test can still drive a cut-off hub.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from tests.hub.conftest import free_port

_KEYID = re.compile(rb'keyid="(iam1[a-z2-7]{52})"', re.IGNORECASE)
_LENGTH = re.compile(rb"^content-length:\s*(\d+)\s*$", re.IGNORECASE | re.MULTILINE)
_MAX_HEAD = 65_536
EVERYONE = "*"


class LinkProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target``; runs its own event loop thread."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._cut: set[str] = set()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.dropped = 0

    @property
    def url(self) -> str:
        """The origin peers use for the hub behind this proxy."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LinkProxy:
        """Listen (returns once the port accepts connections)."""
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def cut(self, *pool_ids: str) -> None:
        """Refuse requests signed by these pools (none named: by every pool)."""
        with self._lock:
            self._cut |= set(pool_ids) or {EVERYONE}

    def heal(self) -> None:
        """Forward everything again."""
        with self._lock:
            self._cut.clear()

    def _blocked(self, head: bytes) -> bool:
        found = _KEYID.search(head)
        with self._lock:
            if found is None:
                return False
            return EVERYONE in self._cut or found[1].decode().lower() in self._cut

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            with suppress(Exception):
                self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        pipe: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                if len(head) > _MAX_HEAD or b"transfer-encoding" in head.lower():
                    return  # the hubs' clients send bodies with a Content-Length
                length = _LENGTH.search(head)
                body = await reader.readexactly(int(length[1])) if length else b""
                if self._blocked(head):
                    self.dropped += 1
                    return
                if upstream is None:
                    upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
                    pipe = asyncio.create_task(_pipe(upstream[0], writer))
                upstream[1].write(head + body)
                await upstream[1].drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if pipe is not None:
                pipe.cancel()
            if upstream is not None:
                upstream[1].close()
            writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with suppress(ConnectionError):
        while chunk := await source.read(65_536):
            sink.write(chunk)
            await sink.drain()
    sink.close()


@contextmanager
def partition(proxies: dict[str, LinkProxy], side: set[str]) -> Iterator[None]:
    """Cut every link between the pools in ``side`` and the others (keys: pool ids)."""
    others = set(proxies) - side
    for pool_id, proxy in proxies.items():
        proxy.cut(*(others if pool_id in side else side))
    try:
        yield
    finally:
        for proxy in proxies.values():
            proxy.heal()
