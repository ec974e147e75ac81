"""Benchmark L3 fact storage and search: ingest rate, search latency at scale, HNSW vs exact.

1. **Ingest**: ``--ingest`` distinct facts of one user are embedded (batched, the real model) and
   stored one by one through :func:`memory.facts.add_fact` (encryption, dedup and supersede
   checks included): facts/s end to end, and the embedding and storing shares of it.
2. **Scale**: for each size (10k and 100k vectors; 1M with ``--million``, which takes tens of
   minutes on 2 cores), the ``facts`` table is refilled by COPY with synthetic vectors and the
   shared HNSW index rebuilt. The vectors are the ingested facts' real embeddings with Gaussian
   noise (cosine ~0.8 to their centre), so they cluster like text does rather than spreading
   like uniform noise; they belong round-robin to ``--users`` large users, plus 500 of one small
   user. Each query searches one user's facts exactly as a chat's recall does
   (:func:`memory.recall.recall`, decryption of the 10 hits included): a large user's on the
   shared index (``shared``), then, once :func:`memory.facts.index_large_owners` gave the users
   with ``--owner-min`` facts an index of their own, on theirs (``owner``); and the small
   user's (``small_user``), whom the planner serves from the user id B-tree and an exact sort.
3. **Quality**: the same queries with index scans disabled give the exact top 10;
   ``recall_at_10`` is the share of it the search returned; ``plan`` says which path the
   planner took (``owner``, ``shared`` or ``exact``).

Starts its own embedded PostgreSQL and model folder in a temporary directory. Prints one JSON
line (progress goes to stderr).

Run: ``python bench/memory_search.py [--million] [--users 10] [--queries 200] [--ingest 1000]
[--owner-min 10000]``
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
from memory.facts import (
    OWNER_INDEX_MIN,
    OWNER_INDEX_PREFIX,
    NewFact,
    add_fact,
    index_large_owners,
)
from memory.keys import UserKey, issue_key, open_key
from memory.recall import RecallQuery, recall
from memory.settings import MemorySettings

NOISE = 0.75  # Gaussian noise norm relative to a unit centre: cosine ~0.8 to it
COPY_CHUNK = 20_000
SMALL_FACTS = 500  # the facts of one more user, a small one among the large
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
    small: tuple[UUID, UserKey],
    centres: npt.NDArray[np.float32],
    rng: np.random.Generator,
) -> float:
    """Refill ``facts`` with ``size`` rows round-robin over ``users`` and ``SMALL_FACTS`` of the
    ``small`` user; rebuild the shared HNSW index (its build time is returned)."""
    await conn.execute("TRUNCATE facts")
    for name in await conn.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'facts' "
        "AND (indexname = 'facts_embedding_idx' OR starts_with(indexname, $1))",
        OWNER_INDEX_PREFIX,
    ):
        await conn.execute(f"DROP INDEX {name[0]}")
    now = datetime.now(UTC)
    decrypted = {users[0][0], small[0]}
    owners = [small] * SMALL_FACTS + [users[i % len(users)] for i in range(size)]
    for start in range(0, len(owners), COPY_CHUNK):
        chunk = owners[start : start + COPY_CHUNK]
        records: list[tuple[object, ...]] = []
        for (user_id, key), vector in zip(chunk, noisy(rng, centres, len(chunk)), strict=True):
            fact_id = uuid.uuid4()
            # Only the queried users' rows are ever decrypted; the rest carry opaque bytes.
            text = {"fact": str(fact_id), "text": f"synthetic fact {fact_id}"}
            ciphertext = encrypt_json(key.data_key, text) if user_id in decrypted else b"x" * 120
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
        log(f"  loaded {start + len(chunk):,} / {len(owners):,}")
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


async def index_scans(conn: asyncpg.Connection) -> dict[str, int]:
    """Scans so far of each index on ``facts``, this session's included (flushed first)."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    rows = await conn.fetch(
        "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes WHERE relname = 'facts'"
    )
    return {r["indexrelname"]: r["idx_scan"] for r in rows}


def plan_of(before: dict[str, int], after: dict[str, int]) -> str:
    """Which path the searches took, from the index scans they added: owner, shared or exact."""
    used = {name for name, scans in after.items() if scans > before.get(name, 0)}
    if any(name.startswith(OWNER_INDEX_PREFIX) for name in used):
        return "owner"
    return "shared" if "facts_embedding_idx" in used else "exact"


async def exact_truth(
    conn: asyncpg.Connection, user_id: UUID, probes: Any
) -> tuple[list[set[UUID]], dict[str, float]]:
    """Each probe's exact top 10 for the user, and the exact search's p50/p95."""
    truth: list[set[UUID]] = []
    seconds: list[float] = []
    for vector in probes:
        ids, took = await exact_top10(conn, user_id, vector)
        truth.append(set(ids))
        seconds.append(took)
    return truth, {"exact_p50_ms": percentile(seconds, 50), "exact_p95_ms": percentile(seconds, 95)}


async def measure_search(
    conn: asyncpg.Connection, user_id: UUID, key: UserKey, probes: Any, truth: list[set[UUID]]
) -> dict[str, Any]:
    """One user's search (:func:`memory.recall.recall`, decryption included): the path the
    planner took, p50/p95 and recall@10 against the exact top 10."""
    for vector in probes[:10]:  # warm the caches
        await recall(conn, key, user_id, RecallQuery("", vector, facts=10, notes=0))
    seconds: list[float] = []
    overlap: list[float] = []
    plans: set[str] = set()
    for vector, exact in zip(probes, truth, strict=True):
        before = await index_scans(conn)
        started = time.perf_counter()
        found = await recall(conn, key, user_id, RecallQuery("", vector, facts=10, notes=0))
        seconds.append(time.perf_counter() - started)
        plans.add(plan_of(before, await index_scans(conn)))
        overlap.append(len({h.fact.id for h in found.facts} & exact) / len(exact))
    return {
        "plan": "+".join(sorted(plans)),
        "search_p50_ms": percentile(seconds, 50),
        "search_p95_ms": percentile(seconds, 95),
        "recall_at_10": round(statistics.fmean(overlap), 4),
    }


async def measure_size(
    conn: asyncpg.Connection,
    size: int,
    users: list[tuple[UUID, UserKey]],
    small: tuple[UUID, UserKey],
    centres: npt.NDArray[np.float32],
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """One table size: a large user's search on the shared index, then on their own index
    (when they have ``--owner-min`` facts), and the small user's search."""
    log(f"size {size:,}: loading")
    build_s = await fill(conn, size, users, small, centres, rng)
    user_id, key = users[0]
    probes = noisy(rng, centres, args.queries)
    truth, exact = await exact_truth(conn, user_id, probes)
    shared = await measure_search(conn, user_id, key, probes, truth)
    log(f"size {size:,}: shared index p95 {shared['search_p95_ms']} ms")
    result: dict[str, Any] = {
        "vectors": size + SMALL_FACTS,
        "user_facts": -(-size // len(users)),
        "index_build_s": round(build_s, 1),
        "shared": shared,
    }
    started = time.perf_counter()
    indexed = await index_large_owners(conn, min_facts=args.owner_min)
    if indexed.created:
        result["owner_indexes"] = len(indexed.created)
        result["owner_index_build_s"] = round(time.perf_counter() - started, 1)
        result["owner"] = await measure_search(conn, user_id, key, probes, truth)
        log(f"size {size:,}: owner index p95 {result['owner']['search_p95_ms']} ms")
    small_truth, small_exact = await exact_truth(conn, small[0], probes)
    small_search = await measure_search(conn, *small, probes, small_truth)
    result["small_user"] = {"facts": SMALL_FACTS} | small_search | small_exact
    return result | exact


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
        for n in range(args.users + 1):
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
        small, large = users[-1], users[:-1]
        scale = [await measure_size(conn, size, large, small, centres, args, rng) for size in sizes]
    finally:
        await conn.close()
    return {
        "model": MODEL_NAME,
        "model_load_s": round(load_s, 3),
        "ingest": ingest,
        "queries": args.queries,
        "users": args.users,
        "owner_min": args.owner_min,
        "scale": scale,
    }


def main() -> None:
    """Start an embedded PostgreSQL and a model folder, run the benchmark, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--million", action="store_true", help="Also measure 1M vectors.")
    parser.add_argument("--users", type=int, default=10, help="Users the vectors belong to.")
    parser.add_argument("--queries", type=int, default=200, help="Searches per size.")
    parser.add_argument("--ingest", type=int, default=1000, help="Facts embedded and stored.")
    parser.add_argument(
        "--owner-min",
        type=int,
        default=OWNER_INDEX_MIN,
        help="Facts of one user that get an index of their own.",
    )
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
