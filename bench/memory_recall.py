"""Benchmark recall quality: recall@1/5/10 and MRR of keyword, vector and hybrid notes search.

Runs on the labelled set in ``tests/memory/data/recall_set.json`` (turns of an agent's memory,
questions, and the turns that answer each one): every turn becomes an L4 note of one user, then
each question is searched three ways through :func:`memory.recall.recall` — full text only,
embedding only, and both fused by reciprocal rank. Starts its own embedded PostgreSQL and model
folder in a temporary directory. Prints one JSON line.

Run: ``python bench/memory_recall.py [--set PATH]``
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
from pgvector.asyncpg import register_vector

from hub import accounts
from hub.config import ServerSettings
from hub.embedded import EmbeddedPostgres
from hub.migrations import migrate
from hub.observability import configure_logging
from memory.embeddings import Embedder, install_model
from memory.notes import NewNote, add_note
from memory.recall import RecallQuery, SearchMode, recall

DEFAULT_SET = Path(__file__).resolve().parent.parent / "tests/memory/data/recall_set.json"
CUTOFFS = (1, 5, 10)


async def ingest(
    conn: asyncpg.Connection, embedder: Embedder, user_id: UUID, turns: list[dict[str, Any]]
) -> dict[UUID, str]:
    """Store every turn as a private note; return note id → turn id."""
    vectors = await embedder.embed([t["text"] for t in turns])
    ids: dict[UUID, str] = {}
    for turn, vector in zip(turns, vectors, strict=True):
        note = NewNote(f"user:{user_id}", turn["text"], tags=(turn["conversation"],))
        stored = await add_note(conn, user_id, note, vector, now=datetime.now(UTC))
        ids[stored.id] = turn["id"]
    return ids


async def evaluate(
    conn: asyncpg.Connection,
    embedder: Embedder,
    user_id: UUID,
    ids: dict[UUID, str],
    questions: list[dict[str, Any]],
    mode: SearchMode,
) -> dict[str, float]:
    """recall@k (share of questions with an answer in the top k) and MRR, for one mode."""
    hits = dict.fromkeys(CUTOFFS, 0)
    reciprocal = 0.0
    for item in questions:
        vector = None if mode is SearchMode.KEYWORD else await embedder.embed_one(item["question"])
        query = RecallQuery(item["question"], vector, facts=0, notes=max(CUTOFFS), mode=mode)
        found = await recall(conn, None, user_id, query)
        ranked = [ids[h.note.id] for h in found.notes]
        first = next((i for i, t in enumerate(ranked) if t in item["answers"]), None)
        if first is not None:
            reciprocal += 1 / (first + 1)
            for k in CUTOFFS:
                hits[k] += first < k
    n = len(questions)
    return {f"recall@{k}": round(hits[k] / n, 3) for k in CUTOFFS} | {
        "mrr": round(reciprocal / n, 3)
    }


async def run(uri: str, model_dir: Path, labelled: dict[str, Any]) -> dict[str, Any]:
    """Ingest the set and evaluate the three modes."""
    embedder = Embedder(model_dir)
    embedder.load()
    conn = await asyncpg.connect(uri)
    try:
        await migrate(conn)
        await register_vector(conn)
        user = await accounts.create_user(conn, "bench")
        started = time.perf_counter()
        ids = await ingest(conn, embedder, user.id, labelled["turns"])
        ingest_s = time.perf_counter() - started
        results = {
            mode.value: await evaluate(conn, embedder, user.id, ids, labelled["questions"], mode)
            for mode in (SearchMode.KEYWORD, SearchMode.VECTOR, SearchMode.HYBRID)
        }
    finally:
        await conn.close()
    return {
        "turns": len(labelled["turns"]),
        "questions": len(labelled["questions"]),
        "ingest_s": round(ingest_s, 3),
        **results,
    }


def main() -> None:
    """Start an embedded PostgreSQL and a model folder, run the benchmark, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--set", type=Path, default=DEFAULT_SET, help="Labelled set (JSON).")
    args = parser.parse_args()
    configure_logging(ServerSettings(log_format="console", log_level="warning"))
    labelled = json.loads(args.set.read_text(encoding="utf-8"))
    work = Path(tempfile.mkdtemp(prefix="iamine-bench-"))
    server = EmbeddedPostgres(work / "data")
    try:
        install_model(work / "model")
        uri = server.start()
        results = asyncio.run(run(uri, work / "model", labelled))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"bench": "memory_recall"} | results))


if __name__ == "__main__":
    main()
