"""Benchmark recall quality: recall@1/5/10 and MRR of keyword, vector and hybrid notes search.

Runs on a labelled set (turns, questions, and the turns that answer each question): by default
``tests/memory/data/recall_set.json`` (an agent's notes), with ``--set`` the multi-session
conversations of ``tests/memory/data/recall_multisession.json`` (bench/make_recall_set.py).
Every turn becomes an L4 note of one user, stored in batches (:func:`memory.notes.add_notes`)
with its context (speaker, date, ``--window`` turns either side; memory/context.py); each
question is searched within its conversation three ways through :func:`memory.recall.recall`:
keyword only (BM25 where pg_search is there), vector only, and both fused (``FUSION``).
``--baseline`` searches as before issue 17 (no context, full text, plain RRF); ``--tune`` first
chooses the fusion on the ``tune`` split; ``--split`` picks the questions reported. Starts its
own embedded PostgreSQL and model folder in a temporary directory. Prints one JSON line (with
recall@10 per kind of question where the set names kinds, and each mode's search p50 / p95;
``--pad N`` first stores N more notes of the same user outside every question's scope, to time
searches over a large store, and each mode's p50 / p95 over all of the user's notes then,
without the conversation's tag, as a chat's recall searches); ``--explain`` adds each mode's
planning and execution time as PostgreSQL reports them (``EXPLAIN (ANALYZE)`` of the same
statement, under the same settings): what a search costs the server, round trips left out.
The line names the BM25 index's segment count before and after the searches: pg_search merges
the segments the inserts wrote in the background, and the keyword side's time follows the count.

Run: ``python bench/memory_recall.py [--set PATH] [--split test] [--tune] [--baseline] [--pad N]
[--explain]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

from hub import accounts
from hub.config import ServerSettings
from hub.embedded import EmbeddedPostgres
from hub.migrations import migrate
from hub.observability import configure_logging
from memory.context import Turn, window_contexts
from memory.embeddings import Embedder, Vector, install_model
from memory.notes import NewNote, add_notes
from memory.recall import (
    FUSION,
    Fusion,
    RecallQuery,
    SearchMode,
    has_bm25,
    query_vectors,
    recall,
    recall_settings,
    recall_statement,
)

DEFAULT_SET = Path(__file__).resolve().parent.parent / "tests/memory/data/recall_set.json"
CUTOFFS = (1, 5, 10)
BATCH = 256  # notes embedded and stored per statement
PAD_BATCH = 1000
BASELINE = Fusion(vector=1.0, keyword=1.0, k=60)  # plain reciprocal-rank fusion
PLANNING = re.compile(r"Planning Time: ([0-9.]+) ms")
EXECUTION = re.compile(r"Execution Time: ([0-9.]+) ms")


def contexts(turns: list[dict[str, Any]], window: int) -> list[str]:
    """Each turn's context (memory/context.py): speaker, date, ``window`` turns of its session
    either side; empty for a set without speakers or with ``window`` < 0."""
    if window < 0 or not turns or "speaker" not in turns[0]:
        return [""] * len(turns)
    found: list[str] = []
    for _, group in itertools.groupby(turns, key=lambda t: (t["conversation"], t["session"])):
        session = [Turn(t["text"], t["speaker"], datetime.fromisoformat(t["date"])) for t in group]
        found += window_contexts(session, window)
    return found


async def ingest(
    conn: asyncpg.Connection,
    embedder: Embedder,
    user_id: UUID,
    turns: list[dict[str, Any]],
    window: int,
) -> dict[UUID, str]:
    """Store every turn as a private note, in batches, as ``POST /v1/memory/notes`` does (the
    text as its body, its speaker and date beside it); return note id → turn id."""
    notes = [
        NewNote(
            f"user:{user_id}", t["text"], tags=(t["conversation"],), context=c,
            speaker=t.get("speaker", ""),
            said_at=datetime.fromisoformat(t["date"]).replace(tzinfo=UTC) if "date" in t else None,
        )
        for t, c in zip(turns, contexts(turns, window), strict=True)
    ]  # fmt: skip
    ids: dict[UUID, str] = {}
    for start in range(0, len(notes), BATCH):
        batch = notes[start : start + BATCH]
        vectors = await embedder.embed([n.index_text for n in batch])
        stored = await add_notes(conn, user_id, batch, list(vectors), now=datetime.now(UTC))
        ids |= {s.id: t["id"] for s, t in zip(stored, turns[start : start + BATCH], strict=True)}
    return ids


async def evaluate(
    conn: asyncpg.Connection,
    user_id: UUID,
    ids: dict[UUID, str],
    questions: list[dict[str, Any]],
    vectors: list[tuple[Vector, Vector]],
    mode: SearchMode,
    fusion: Fusion = FUSION,
    *,
    bm25: bool,
) -> dict[str, Any]:
    """recall@k (share of questions with an answer in the top k) and MRR, for one mode, and
    recall@10 per kind of question where the set names kinds; ``bm25``: the database has the
    notes' BM25 index (asked once, as the hub does)."""
    hits = dict.fromkeys(CUTOFFS, 0)
    reciprocal = 0.0
    latencies: list[float] = []
    kinds: dict[str, list[bool]] = {}
    for item, (vector, note_vector) in zip(questions, vectors, strict=True):
        scope = (item["conversation"],) if "conversation" in item else ()
        keyword = mode is SearchMode.KEYWORD
        query = RecallQuery(
            item["question"],
            None if keyword else vector,
            note_vector=None if keyword else note_vector,
            facts=0,
            notes=max(CUTOFFS),
            mode=mode,
            tags=scope,
            fusion=fusion,
        )
        started = time.perf_counter()
        found = await recall(conn, None, user_id, query, bm25=bm25)
        latencies.append(time.perf_counter() - started)
        ranked = [ids[h.note.id] for h in found.notes]
        first = next((i for i, t in enumerate(ranked) if t in item["answers"]), None)
        if "kind" in item:
            kinds.setdefault(item["kind"], []).append(first is not None)
        if first is not None:
            reciprocal += 1 / (first + 1)
            for k in CUTOFFS:
                hits[k] += first < k
    n = len(questions)
    by_kind = {kind: round(sum(found) / len(found), 3) for kind, found in sorted(kinds.items())}
    return (
        {f"recall@{k}": round(hits[k] / n, 3) for k in CUTOFFS}
        | {"mrr": round(reciprocal / n, 3)}
        | {f"{name}_ms": round(1000 * value, 1) for name, value in percentiles(latencies).items()}
        | ({"recall@10_by_kind": by_kind} if by_kind else {})
    )


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 and p95 of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return {f"p{q}": ordered[min(len(ordered) - 1, q * len(ordered) // 100)] for q in (50, 95)}


async def unscoped(
    conn: asyncpg.Connection,
    user_id: UUID,
    questions: list[dict[str, Any]],
    vectors: list[tuple[Vector, Vector]],
    mode: SearchMode,
    *,
    bm25: bool,
) -> dict[str, float]:
    """Search p50 / p95 of ``questions`` over all of the user's notes, padding included (as a
    chat's recall searches: no conversation tag), in ms."""
    latencies: list[float] = []
    for item, (vector, note_vector) in zip(questions, vectors, strict=True):
        keyword = mode is SearchMode.KEYWORD
        query = RecallQuery(
            item["question"],
            None if keyword else vector,
            note_vector=None if keyword else note_vector,
            facts=0,
            notes=max(CUTOFFS),
            mode=mode,
        )
        started = time.perf_counter()
        await recall(conn, None, user_id, query, bm25=bm25)
        latencies.append(time.perf_counter() - started)
    return {
        f"unscoped_{name}_ms": round(1000 * value, 1)
        for name, value in percentiles(latencies).items()
    }


async def server_times(
    conn: asyncpg.Connection,
    user_id: UUID,
    questions: list[dict[str, Any]],
    vectors: list[tuple[Vector, Vector]],
    mode: SearchMode,
    *,
    bm25: bool,
) -> dict[str, float]:
    """Planning and execution p50 / p95 of each question's search within its conversation, in
    ms, from ``EXPLAIN (ANALYZE)`` of the statement :func:`recall` runs, under its settings."""
    planning: list[float] = []
    execution: list[float] = []
    for item, (vector, note_vector) in zip(questions, vectors, strict=True):
        keyword = mode is SearchMode.KEYWORD
        query = RecallQuery(
            item["question"],
            None if keyword else vector,
            note_vector=None if keyword else note_vector,
            facts=0,
            notes=max(CUTOFFS),
            mode=mode,
            tags=(item["conversation"],) if "conversation" in item else (),
        )
        on_bm25 = bm25 and mode is not SearchMode.VECTOR
        sql, arguments = recall_statement(user_id, query, facts=0, bm25=on_bm25)
        async with conn.transaction():
            await conn.execute(recall_settings(query.facts, bm25=on_bm25))
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN (ANALYZE) {sql}", *arguments))
        planning.append(float(PLANNING.findall(plan)[0]) / 1000)
        execution.append(float(EXECUTION.findall(plan)[0]) / 1000)
    return {
        f"{side}_{name}_ms": round(1000 * value, 1)
        for side, values in (("plan", planning), ("exec", execution))
        for name, value in percentiles(values).items()
    }


async def pad(
    conn: asyncpg.Connection, user_id: UUID, turns: list[dict[str, Any]], count: int
) -> None:
    """Store ``count`` more notes of the same user (tagged ``pad``, so no question's scope
    holds them), to time searches over a large store: the set's turns again, each vector a real
    turn's moved by noise so that the index is not full of duplicates."""
    rows = await conn.fetch("SELECT body, embedding FROM notes WHERE owner_id = $1", user_id)
    rng = np.random.default_rng(17)
    for start in range(0, count, PAD_BATCH):
        picked = [rows[i] for i in rng.integers(0, len(rows), min(PAD_BATCH, count - start))]
        vectors = np.stack([r["embedding"].to_numpy() for r in picked]).astype(np.float32)
        vectors += rng.normal(0, 0.03, vectors.shape).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        batch = [NewNote(f"user:{user_id}", r["body"], tags=("pad",)) for r in picked]
        await add_notes(conn, user_id, batch, list(vectors), now=datetime.now(UTC))


async def bm25_segments(conn: asyncpg.Connection) -> int:
    """How many segments the notes' BM25 index holds: each insert writes one, pg_search merges
    them in the background, and the keyword side opens every one (its time follows the count)."""
    count: int = await conn.fetchval("SELECT count(*) FROM paradedb.index_info('notes_bm25_idx')")
    return count


async def tune(
    conn: asyncpg.Connection,
    user_id: UUID,
    ids: dict[UUID, str],
    questions: list[dict[str, Any]],
    vectors: list[tuple[Vector, Vector]],
    *,
    bm25: bool,
) -> Fusion:
    """The fusion with the best recall@10 (then MRR) on ``questions``, over a small grid."""
    best: tuple[float, float, Fusion] | None = None
    grid = itertools.product((2.0, 3.0), (0.05, 0.2), (None, 2.0), (0.0, 0.1), (0.0, 0.07))
    for weight, names, dated, said, recent in grid:
        fusion = Fusion(weight, 1.0, 10, 3.0, names, dated, said, recent)
        got = await evaluate(
            conn, user_id, ids, questions, vectors, SearchMode.HYBRID, fusion, bm25=bm25
        )
        score = (got["recall@10"], got["mrr"], fusion)
        if best is None or score[:2] > best[:2]:
            best = score
        print(json.dumps({"fusion": asdict(fusion)} | got), file=sys.stderr)
    assert best is not None
    return best[2]


async def run(uri: str, model_dir: Path, labelled: dict[str, Any], args: Any) -> dict[str, Any]:
    """Ingest the set and evaluate each mode (after tuning the fusion, with ``--tune``)."""
    embedder = Embedder(model_dir)
    embedder.load()
    conn = await asyncpg.connect(uri)
    try:
        await migrate(conn)
        await register_vector(conn)
        if args.baseline:  # search as before issue 17: PostgreSQL full text, no context
            await conn.execute("DROP INDEX IF EXISTS notes_bm25_idx")
        bm25 = await has_bm25(conn)
        user = await accounts.create_user(conn, "bench")
        started = time.perf_counter()
        ids = await ingest(conn, embedder, user.id, labelled["turns"], args.window)
        ingest_s = time.perf_counter() - started
        print(f"ingested {len(ids)} notes in {ingest_s:.1f} s", file=sys.stderr)
        if args.pad:
            await pad(conn, user.id, labelled["turns"], args.pad)
            await conn.execute("ANALYZE notes")
        questions = labelled["questions"]
        if args.split != "all":
            questions = [q for q in questions if q["split"] == args.split]
        by_question = {
            q["question"]: await query_vectors(embedder, q["question"])
            for q in labelled["questions"]
        }
        fusion = BASELINE if args.baseline else FUSION
        if args.tune:
            tuning = [q for q in labelled["questions"] if q["split"] == "tune"]
            fusion = await tune(
                conn, user.id, ids, tuning, [by_question[q["question"]] for q in tuning], bm25=bm25
            )
        asked = [by_question[q["question"]] for q in questions]
        segments = [await bm25_segments(conn)] if bm25 else []
        results = {
            mode.value: await evaluate(
                conn, user.id, ids, questions, asked, mode, fusion, bm25=bm25
            )
            | (await unscoped(conn, user.id, questions, asked, mode, bm25=bm25) if args.pad else {})
            | (
                await server_times(conn, user.id, questions, asked, mode, bm25=bm25)
                if args.explain
                else {}
            )
            for mode in (SearchMode.KEYWORD, SearchMode.VECTOR, SearchMode.HYBRID)
        }
        segments += [await bm25_segments(conn)] if bm25 else []
    finally:
        await conn.close()
    return {
        "turns": len(labelled["turns"]),
        "questions": len(questions),
        "keyword_side": "bm25" if bm25 else "full_text",
        "bm25_segments": segments,  # before the searches, after them
        "window": args.window,
        "fusion": asdict(fusion),
        "ingest_s": round(ingest_s, 3),
        "ingest_notes_per_s": round(len(labelled["turns"]) / ingest_s, 1),
        "padding_notes": args.pad,
        **results,
    }


def main() -> None:
    """Start an embedded PostgreSQL and a model folder, run the benchmark, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--set", type=Path, default=DEFAULT_SET, help="Labelled set (JSON).")
    parser.add_argument(
        "--split", choices=("all", "tune", "test"), default="all", help="Questions to ask."
    )
    parser.add_argument(
        "--window", type=int, default=1, help="Context: turns either side (-1: no context)."
    )
    parser.add_argument(
        "--pad", type=int, default=0, help="Store this many more notes first (search times)."
    )
    parser.add_argument(
        "--tune", action="store_true", help="Choose the fusion on the tune split first."
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="Also report planning and execution times (EXPLAIN ANALYZE).",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="Search as before issue 17: full text, plain RRF, no context (implies --window -1).",
    )
    args = parser.parse_args()
    if args.baseline:
        args.window = -1
    configure_logging(ServerSettings(log_format="console", log_level="warning"))
    labelled = json.loads(args.set.read_text(encoding="utf-8"))
    work = Path(tempfile.mkdtemp(prefix="iamine-bench-"))
    server = EmbeddedPostgres(work / "data")
    try:
        install_model(work / "model")
        uri = server.start()
        results = asyncio.run(run(uri, work / "model", labelled, args))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps({"bench": "memory_recall", "set": args.set.name, "split": args.split} | results)
    )


if __name__ == "__main__":
    main()
