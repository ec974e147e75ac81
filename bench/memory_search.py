"""Benchmark L3 fact storage and search: ingest rate, search latency at scale, HNSW vs exact.

1. **Ingest**: ``--ingest`` distinct facts of one user are embedded (batched, the real model) and
   stored one by one through :func:`memory.facts.add_fact` (encryption, dedup and supersede
   checks included): facts/s end to end, and the embedding and storing shares of it.
2. **Scale**: for each size (10k and 100k vectors; 1M with ``--million``, which takes tens of
   minutes on 2 cores), the ``facts`` table is refilled by COPY with synthetic vectors and the
   HNSW index rebuilt. The vectors are the ingested facts' real embeddings with Gaussian noise
   (cosine ~0.8 to their centre), so they cluster like text does rather than spreading like
   uniform noise; they belong to ``--users`` users, and each query searches one user's facts
   (1/users of the table) exactly as a chat's recall does: :func:`memory.recall.recall` with
   the iterative index scan, decryption of the 10 hits included.
3. **Quality**: the same queries with index scans disabled give the exact top 10;
   ``recall_at_10`` is the share of it the HNSW search returned.

Starts its own embedded PostgreSQL and model folder in a temporary directory. Prints one JSON
line (progress goes to stderr).

Run: ``python bench/memory_search.py [--million] [--users 10] [--queries 200] [--ingest 1000]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import numpy as np
import numpy.typing as npt
from pgvector.asyncpg import register_vector

from hub import accounts
from hub.config import ServerSettings
from hub.embedded import EmbeddedPostgres
from hub.migrations import migrate
from hub.observability import configure_logging
from memory.crypto import encrypt_json
from memory.embeddings import MODEL_DIM, MODEL_NAME, Embedder, install_model
from memory.facts import NewFact, add_fact
from memory.keys import UserKey, issue_key, open_key
from memory.recall import RECALL_SQL, RecallQuery, recall
from memory.settings import MemorySettings

NOISE = 0.75  # Gaussian noise norm relative to a unit centre: cosine ~0.8 to it
COPY_CHUNK = 20_000
ATTRIBUTES = [
    "favourite colour", "home city", "employer", "job title", "favourite food", "dog's name",
    "partner's name", "preferred editor", "main programming language", "gym schedule",
    "allergy", "car", "phone", "favourite band", "next holiday", "book being read",
    "coffee order", "morning routine", "team", "manager", "timezone", "shoe size",
    "favourite film", "hobby", "language being learned",
]  # fmt: skip
VALUES = [
    "blue", "Lisbon", "Acme", "nurse", "ramen", "Rex", "Sam", "vim", "Rust", "Mondays",
    "peanuts", "a Toyota", "a Pixel", "Radiohead", "Japan", "Dune", "flat white", "a run",
    "platform", "Maya", "UTC+1", "43", "Alien", "climbing", "Polish", "green", "Oslo",
    "Globex", "pilot", "tacos", "Fido", "Alex", "emacs", "Go", "Fridays", "shellfish",
    "a bike", "an iPhone", "Bjork", "Peru",
]  # fmt: skip


def log(message: str) -> None:
    """Progress on stderr; stdout carries only the result line."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def fact_texts(n: int) -> list[str]:
    """``n`` distinct, fact-like sentences."""
    pairs = itertools.product(ATTRIBUTES, VALUES, ("", " since last year", " these days"))
    texts = [f"The user's {a} is {v}{when}." for a, v, when in itertools.islice(pairs, n)]
    random.Random(6).shuffle(texts)
    return texts


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) in milliseconds, rounded."""
    return round(float(np.percentile(values, q)) * 1000, 3)


async def measure_ingest(
    conn: asyncpg.Connection, embedder: Embedder, key: UserKey, user_id: UUID, texts: list[str]
) -> tuple[dict[str, Any], npt.NDArray[np.float32]]:
    """Embed and store ``texts`` as facts; return rates and the vectors."""
    started = time.perf_counter()
    vectors = await embedder.embed(texts)
    embed_s = time.perf_counter() - started
    settings, now = MemorySettings(), datetime.now(UTC)
    started = time.perf_counter()
    created = 0
    for text, vector in zip(texts, vectors, strict=True):
        outcome = await add_fact(
            conn, key, user_id, NewFact(text), vector, now=now, settings=settings
        )
        created += outcome.action.value == "created"
    store_s = time.perf_counter() - started
    n = len(texts)
    return {
        "facts": n,
        "created": created,
        "facts_per_s": round(n / (embed_s + store_s), 1),
        "embed_per_s": round(n / embed_s, 1),
        "store_per_s": round(n / store_s, 1),
    }, vectors


def noisy(rng: np.random.Generator, centres: npt.NDArray[np.float32], n: int) -> Any:
    """``n`` unit vectors scattered around random centres."""
    picks = centres[rng.integers(0, len(centres), n)]
    noise = rng.normal(scale=NOISE / np.sqrt(MODEL_DIM), size=(n, MODEL_DIM))
    raw = (picks + noise).astype(np.float32)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


async def fill(
    conn: asyncpg.Connection,
    size: int,
    users: list[tuple[UUID, UserKey]],
    centres: npt.NDArray[np.float32],
    rng: np.random.Generator,
) -> float:
    """Refill ``facts`` with ``size`` synthetic rows, round-robin over users; rebuild HNSW."""
    await conn.execute("TRUNCATE facts")
    await conn.execute("DROP INDEX IF EXISTS facts_embedding_idx")
    now = datetime.now(UTC)
    queried = users[0][0]
    for start in range(0, size, COPY_CHUNK):
        count = min(COPY_CHUNK, size - start)
        vectors = noisy(rng, centres, count)
        records: list[tuple[object, ...]] = []
        for i, vector in enumerate(vectors):
            user_id, key = users[(start + i) % len(users)]
            fact_id = uuid.uuid4()
            # Only the queried user's rows are ever decrypted; the rest carry opaque bytes.
            text = {"fact": str(fact_id), "text": f"synthetic fact {start + i}"}
            ciphertext = encrypt_json(key.data_key, text) if user_id == queried else b"x" * 120
            records.append(
                (fact_id, user_id, key.generation, ciphertext, vector, MODEL_NAME, MODEL_DIM,
                 [], 1.0, "explicit", now)
            )  # fmt: skip
        await conn.copy_records_to_table(
            "facts",
            records=records,
            columns=[
                "id", "user_id", "generation", "ciphertext", "embedding", "embedding_model",
                "embedding_dim", "tags", "confidence", "source", "valid_from",
            ],
        )  # fmt: skip
        log(f"  loaded {start + count:,} / {size:,}")
    started = time.perf_counter()
    await conn.execute(
        "CREATE INDEX facts_embedding_idx ON facts USING hnsw (embedding vector_cosine_ops)"
    )
    build_s = time.perf_counter() - started
    await conn.execute("ANALYZE facts")
    return build_s


async def exact_top10(
    conn: asyncpg.Connection, user_id: UUID, vector: npt.NDArray[np.float32]
) -> tuple[list[UUID], float]:
    """The true 10 nearest facts of the user (no index scans), and how long that took."""
    started = time.perf_counter()
    async with conn.transaction():
        await conn.execute("SET LOCAL enable_indexscan = off")
        rows = await conn.fetch(
            "SELECT id FROM facts WHERE user_id = $1 ORDER BY embedding <=> $2, id LIMIT 10",
            user_id,
            vector,
        )
    return [r["id"] for r in rows], time.perf_counter() - started


async def measure_size(
    conn: asyncpg.Connection,
    size: int,
    users: list[tuple[UUID, UserKey]],
    centres: npt.NDArray[np.float32],
    queries: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Search latency (HNSW and exact) and recall@10 at one table size."""
    log(f"size {size:,}: loading")
    build_s = await fill(conn, size, users, centres, rng)
    user_id, key = users[0]
    probes = noisy(rng, centres, queries)
    args: tuple[object, ...] = (user_id, probes[0], 10, [], False, None, None, 0, 0, 0, None, None)
    plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + RECALL_SQL, *args))
    for vector in probes[:10]:  # warm the caches
        await recall(conn, key, user_id, RecallQuery("", vector, facts=10, notes=0))
    hnsw_s: list[float] = []
    exact_s: list[float] = []
    overlap: list[float] = []
    for vector in probes:
        started = time.perf_counter()
        found = await recall(conn, key, user_id, RecallQuery("", vector, facts=10, notes=0))
        hnsw_s.append(time.perf_counter() - started)
        truth, seconds = await exact_top10(conn, user_id, vector)
        exact_s.append(seconds)
        overlap.append(len({h.fact.id for h in found.facts} & set(truth)) / len(truth))
    log(f"size {size:,}: p50 {statistics.median(hnsw_s) * 1000:.2f} ms")
    return {
        "vectors": size,
        "user_share": round(1 / len(users), 3),
        "index_build_s": round(build_s, 1),
        "plan": "hnsw" if "facts_embedding_idx" in plan else "exact",
        "search_p50_ms": percentile(hnsw_s, 50),
        "search_p95_ms": percentile(hnsw_s, 95),
        "exact_p50_ms": percentile(exact_s, 50),
        "exact_p95_ms": percentile(exact_s, 95),
        "recall_at_10": round(statistics.fmean(overlap), 4),
    }


async def run(uri: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement, on one database."""
    embedder = Embedder(model_dir)
    started = time.perf_counter()
    embedder.load()
    load_s = time.perf_counter() - started
    conn = await asyncpg.connect(uri)
    try:
        await migrate(conn)
        await register_vector(conn)
        await conn.execute("SET maintenance_work_mem = '4GB'")
        await conn.execute("SET max_parallel_maintenance_workers = 2")
        users: list[tuple[UUID, UserKey]] = []
        for n in range(args.users):
            user = await accounts.create_user(conn, f"bench{n}")
            issued = await accounts.create_token(conn, user_id=user.id, scopes=("user",))
            await issue_key(conn, user.id, issued.record.id, issued.token, ("user",))
            users.append((user.id, await open_key(conn, user.id, issued.record.id, issued.token)))
        log(f"ingesting {args.ingest} facts through the model")
        ingest, centres = await measure_ingest(
            conn, embedder, users[0][1], users[0][0], fact_texts(args.ingest)
        )
        sizes = [10_000, 100_000] + ([1_000_000] if args.million else [])
        rng = np.random.default_rng(6)
        scale = [
            await measure_size(conn, size, users, centres, args.queries, rng) for size in sizes
        ]
    finally:
        await conn.close()
    return {
        "model": MODEL_NAME,
        "model_load_s": round(load_s, 3),
        "ingest": ingest,
        "queries": args.queries,
        "users": args.users,
        "scale": scale,
    }


def main() -> None:
    """Start an embedded PostgreSQL and a model folder, run the benchmark, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--million", action="store_true", help="Also measure 1M vectors.")
    parser.add_argument("--users", type=int, default=10, help="Users the vectors belong to.")
    parser.add_argument("--queries", type=int, default=200, help="Searches per size.")
    parser.add_argument("--ingest", type=int, default=1000, help="Facts embedded and stored.")
    args = parser.parse_args()
    configure_logging(ServerSettings(log_format="console", log_level="warning"))
    work = Path(tempfile.mkdtemp(prefix="iamine-bench-"))
    server = EmbeddedPostgres(work / "data")
    try:
        install_model(work / "model")
        uri = server.start()
        results = asyncio.run(run(uri, work / "model", args))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"bench": "memory_search"} | results))


if __name__ == "__main__":
    main()
