"""Benchmark notes ingest through the HTTP API: one note per request against lists of notes.

Starts ``iamine serve`` (embedded PostgreSQL in a temporary data directory, the embedding model
installed there) and posts the turns of ``tests/memory/data/recall_multisession.json`` to
``POST /v1/memory/notes`` as one user: the first ``--single`` turns one request each, then every
turn again in lists of ``--batch`` (with ``?window=1``, each turn's speaker and date: the
contexts of memory/context.py), ``--concurrency`` lists at a time. Reports notes/s for both, the
load average of the machine (the embedding model, which bounds the rate, shares the CPU with
whatever else runs), and the CPU seconds the hub and its PostgreSQL spent on the lists: a rate
that other work on the machine does not change (``batch_notes_per_cpu_s``). The embedder embeds
each distinct text of a list once, and the generated set repeats many turns ("Better than I
hoped..." 17 times): ``batch_distinct_texts`` counts the texts the lists really embedded, and
``batch_distinct_per_cpu_s`` is the rate for turns that never repeat. Prints one JSON line.

Run: ``python bench/memory_ingest.py [--single 200] [--batch 500] [--concurrency 1] [--float32]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from memory.embeddings import MODEL_DIR_NAME, install_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from services import Hub, Services, cpu_seconds, start_hub

SET = Path(__file__).resolve().parent.parent / "tests/memory/data/recall_multisession.json"


def note(turn: dict[str, Any]) -> dict[str, Any]:
    """A turn as the API's note: body, speaker, the session's date, its conversation's tag."""
    return {
        "body": turn["text"],
        "speaker": turn["speaker"],
        "said_at": f"{turn['date']}:00Z",
        "tags": [turn["conversation"]],
    }


async def post(client: httpx.AsyncClient, hub: Hub, body: Any, window: int = 0) -> None:
    """One POST; a failure stops the benchmark with the hub's answer."""
    response = await client.post(
        f"{hub.url}/v1/memory/notes", json=body, params={"window": window}, headers=hub.auth()
    )
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/memory/notes: {response.status_code} {response.text}")


async def post_lists(
    client: httpx.AsyncClient, hub: Hub, lists: list[list[dict[str, Any]]], concurrency: int
) -> None:
    """Post the lists with ``concurrency`` in flight: one list's rows are inserted while the
    next is embedded (the hub embeds one call at a time)."""
    pending = iter(lists)

    async def sender() -> None:
        for turns in pending:
            await post(client, hub, [note(t) for t in turns], window=1)

    await asyncio.gather(*(sender() for _ in range(concurrency)))


def hub_cpu(hub: Hub) -> tuple[float, float]:
    """CPU seconds so far of the hub's processes and of its PostgreSQL's (each counted once)."""
    server = {p.pid: p for p in hub.postgres()}
    own = [p for p in hub.service.processes() if p.pid not in server]
    return cpu_seconds(own), cpu_seconds(list(server.values()))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start a hub, post the turns both ways, return the rates."""
    turns = json.loads(SET.read_text(encoding="utf-8"))["turns"]
    lists = [turns[i : i + args.batch] for i in range(0, len(turns), args.batch)]
    workdir = Path(tempfile.mkdtemp(prefix="iamine-bench-ingest-"))
    with Services(workdir) as services:
        install_model(services.workdir / "hub-data" / "models" / MODEL_DIR_NAME)
        float32 = {"IAMINE_MEMORY__EMBEDDING_INT8": "false"} if args.float32 else {}
        hub = await start_hub(services, settings=float32)
        async with httpx.AsyncClient(timeout=600) as client:
            await post(client, hub, note(turns[0]))  # loads the model
            started = time.perf_counter()
            for turn in turns[: args.single]:
                await post(client, hub, note(turn))
            single_s = time.perf_counter() - started
            started, cpu_before = time.perf_counter(), hub_cpu(hub)
            await post_lists(client, hub, lists, args.concurrency)
            batch_s = time.perf_counter() - started
            cpu_after = hub_cpu(hub)
            hub_s, database_s = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
    shutil.rmtree(workdir, ignore_errors=True)
    distinct = sum(len({t["text"] for t in batch}) for batch in lists)
    return {
        "single_notes": args.single,
        "single_notes_per_s": round(args.single / single_s, 1),
        "batch_notes": len(turns),
        "batch_size": args.batch,
        "concurrency": args.concurrency,
        "embedding": "float32" if args.float32 else "int8",
        "batch_notes_per_s": round(len(turns) / batch_s, 1),
        "batch_cpu_s": {"hub": round(hub_s, 2), "postgres": round(database_s, 2)},
        "batch_notes_per_cpu_s": round(len(turns) / (hub_s + database_s), 1),
        "batch_distinct_texts": distinct,
        "batch_distinct_per_cpu_s": round(distinct / (hub_s + database_s), 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    """Run the benchmark and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--single", type=int, default=200, help="Notes posted one by one.")
    parser.add_argument("--batch", type=int, default=500, help="Notes per list.")
    parser.add_argument(
        "--float32", action="store_true", help="Embed in float32 (IAMINE_MEMORY__EMBEDDING_INT8)."
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="Lists in flight at once (a bulk importer's)."
    )
    args = parser.parse_args()
    print(json.dumps({"bench": "memory_ingest"} | asyncio.run(run(args))))


if __name__ == "__main__":
    main()
