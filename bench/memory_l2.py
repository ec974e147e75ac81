"""Benchmark L2: append and read throughput (turns/s) of encrypted turns vs the same rows in clear.

Starts its own embedded PostgreSQL in a temporary directory, migrates it, and runs both paths in
the same run on the same server. The plaintext peer exists only here: a table shaped like
``conversation_turns`` whose rows hold the turn's JSON as bytes, written with the same sequence
bookkeeping (``memory.l2.next_seq``) in the same one-transaction-per-turn pattern, so the ratio is
the cost of Fernet encryption alone. ``record_turn_per_s`` is the chat hook's whole L2 write
(opt-in check, key unwrap, encrypt, insert). Prints one JSON line.

Run: ``python bench/memory_l2.py [--turns 2000] [--conversations 20] [--reads 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from hub import accounts
from hub.config import ServerSettings
from hub.embedded import EmbeddedPostgres
from hub.migrations import migrate
from hub.observability import configure_logging
from memory.keys import UserKey, issue_key, open_key
from memory.l2 import Preferences, append_turn, next_seq, read_turns, record_turn, save_preferences
from memory.settings import MemorySettings

PLAIN_TABLE = """
CREATE TABLE bench_plain_turns (
    user_id uuid NOT NULL, conversation_id text NOT NULL, seq integer NOT NULL,
    kind text NOT NULL, body bytea NOT NULL, tokens integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, conversation_id, seq)
)
"""


def exchange(n: int) -> list[dict[str, Any]]:
    """A turn of typical size: a ~600-character question and a ~1,200-character answer."""
    question = f"Question {n}: how do I configure the widget for project {n % 97}? " * 9
    answer = f"Answer {n}: set the option, restart the service and check the logs. " * 18
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


async def append_encrypted(
    conn: asyncpg.Connection, key: UserKey, user_id: UUID, turns: int, conversations: int
) -> None:
    """Append ``turns`` encrypted turns round-robin over ``conversations``."""
    now = datetime.now(UTC)
    for n in range(turns):
        await append_turn(conn, key, user_id, f"enc-{n % conversations}", exchange(n), now=now)


async def append_plain(
    conn: asyncpg.Connection, user_id: UUID, turns: int, conversations: int
) -> None:
    """The plaintext peer of :func:`append_encrypted`."""
    now = datetime.now(UTC)
    for n in range(turns):
        conversation_id = f"plain-{n % conversations}"
        messages = exchange(n)
        async with conn.transaction():
            seq = await next_seq(conn, user_id, conversation_id, now)
            body = {"conversation_id": conversation_id, "seq": seq, "messages": messages}
            await conn.execute(
                "INSERT INTO bench_plain_turns (user_id, conversation_id, seq, kind, body, tokens) "
                "VALUES ($1, $2, $3, 'turn', $4, $5)",
                user_id,
                conversation_id,
                seq,
                json.dumps(body, separators=(",", ":")).encode(),
                len(json.dumps(messages)) // 4,
            )


async def read_encrypted(
    conn: asyncpg.Connection, key: UserKey, user_id: UUID, conversations: int
) -> int:
    """Read and decrypt every encrypted conversation; return the turns read."""
    total = 0
    for c in range(conversations):
        total += len(await read_turns(conn, key, user_id, f"enc-{c}"))
    return total


async def read_plain(conn: asyncpg.Connection, user_id: UUID, conversations: int) -> int:
    """The plaintext peer of :func:`read_encrypted` (same join, JSON parsed)."""
    total = 0
    for c in range(conversations):
        rows = await conn.fetch(
            "SELECT t.seq, t.body FROM bench_plain_turns t JOIN conversations v "
            "ON v.user_id = t.user_id AND v.id = t.conversation_id "
            "WHERE t.user_id = $1 AND t.conversation_id = $2 ORDER BY t.seq",
            user_id,
            f"plain-{c}",
        )
        total += len([json.loads(bytes(r["body"]))["messages"] for r in rows])
    return total


async def timed(work: Any) -> float:
    """Seconds ``await work`` takes."""
    start = time.perf_counter()
    await work
    return time.perf_counter() - start


async def run(uri: str, turns: int, conversations: int, reads: int) -> dict[str, Any]:
    """Run every measurement on the database at ``uri``."""
    conn = await asyncpg.connect(uri)
    try:
        await migrate(conn)
        await conn.execute(PLAIN_TABLE)
        user = await accounts.create_user(conn, "bench")
        issued = await accounts.create_token(conn, user_id=user.id, scopes=("user",))
        await issue_key(conn, user.id, issued.record.id, issued.token, ("user",))
        await save_preferences(conn, user.id, Preferences(enabled=True))
        key = await open_key(conn, user.id, issued.record.id, issued.token)

        enc_s = await timed(append_encrypted(conn, key, user.id, turns, conversations))
        plain_s = await timed(append_plain(conn, user.id, turns, conversations))
        enc_read_s = plain_read_s = 0.0
        for _ in range(reads):
            enc_read_s += await timed(read_encrypted(conn, key, user.id, conversations))
            plain_read_s += await timed(read_plain(conn, user.id, conversations))

        hook_turns = max(turns // 4, 1)
        settings, now = MemorySettings(), datetime.now(UTC)
        start = time.perf_counter()
        for n in range(hook_turns):
            await record_turn(
                conn, user.id, issued.record.id, issued.token, "hook", exchange(n),
                now=now, settings=settings,
            )  # fmt: skip
        hook_s = time.perf_counter() - start

        sizes = await conn.fetchrow(
            "SELECT (SELECT avg(octet_length(ciphertext)) FROM conversation_turns) AS enc, "
            "(SELECT avg(octet_length(body)) FROM bench_plain_turns) AS plain"
        )
    finally:
        await conn.close()
    results = {
        "append_encrypted_per_s": turns / enc_s,
        "append_plain_per_s": turns / plain_s,
        "read_encrypted_per_s": turns * reads / enc_read_s,
        "read_plain_per_s": turns * reads / plain_read_s,
        "record_turn_per_s": hook_turns / hook_s,
        "bytes_per_turn_encrypted": float(sizes["enc"]),
        "bytes_per_turn_plain": float(sizes["plain"]),
    }
    results["append_ratio"] = results["append_encrypted_per_s"] / results["append_plain_per_s"]
    results["read_ratio"] = results["read_encrypted_per_s"] / results["read_plain_per_s"]
    return {"turns": turns, "conversations": conversations, "reads": reads} | {
        k: round(v, 3) for k, v in results.items()
    }


def main() -> None:
    """Start an embedded PostgreSQL, run the benchmark, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--reads", type=int, default=3)
    args = parser.parse_args()
    configure_logging(ServerSettings(log_format="console", log_level="warning"))
    data_dir = Path(tempfile.mkdtemp(prefix="iamine-bench-"))
    server = EmbeddedPostgres(data_dir)
    try:
        uri = server.start()
        results = asyncio.run(run(uri, args.turns, args.conversations, args.reads))
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps({"bench": "memory_l2"} | results))


if __name__ == "__main__":
    main()
