"""Benchmark fact extraction on the bundled model: how many obvious statements leave a fact.

Starts ``iamine serve`` (extraction on, by the bundled SmolLM2-135M, its answer constrained by
``memory.extraction.EXTRACTION_FORMAT``) and an ``iamine worker`` serving that model, turns the
user's memory on, then sends 50 varied first-person statements as chats, one at a time. After
each, it waits (up to ``--wait`` seconds) for the user's fact count to grow: a statement
succeeds when at least one fact was stored from it. Prints one JSON line: the success rate and
a few stored facts (text only) to judge their quality by eye.

Run: ``python bench/memory_extraction.py [--wait 30]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from memory.embeddings import MODEL_DIR_NAME, install_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from services import Hub, Services, start_hub, start_worker

MODEL_ID = "smollm2-135m-instruct"
PEOPLE = ("Ana", "Bruno", "Chen", "Dara", "Emeka")
STATEMENTS = [
    template.format(name=name)
    for name in PEOPLE
    for template in (
        "My name is {name} and I live in Lyon.",
        "I'm {name}, I work as a nurse at the city hospital.",
        "Hi, {name} here. I am allergic to peanuts.",
        "I'm {name} and my favourite food is ramen.",
        "Call me {name}. I have two cats called Miso and Tofu.",
        "{name} speaking: I moved to Berlin last year.",
        "I am {name}, I drive a red Volvo.",
        "My name's {name}; my birthday is on 12 March.",
        "I'm {name} and I'm learning to play the cello.",
        "{name} here, I am vegetarian.",
    )
]


async def fact_count(client: httpx.AsyncClient, hub: Hub) -> list[str]:
    """The texts of the user's facts, superseded ones included (a new fact may replace one)."""
    response = await client.get(f"{hub.url}/v1/memory/facts", params={"k": 100, "history": True})
    response.raise_for_status()
    return [f["text"] for f in response.json()["data"]]


async def run(wait_s: float) -> dict[str, Any]:
    """Start a hub and a worker, chat each statement, count those that left a fact."""
    workdir = Path(tempfile.mkdtemp(prefix="iamine-bench-extraction-"))
    succeeded = 0
    with Services(workdir) as services:
        install_model(workdir / "hub-data" / "models" / MODEL_DIR_NAME)
        hub = await start_hub(services)
        await start_worker(services, hub, MODEL_ID, "--slots", "1")
        async with httpx.AsyncClient(headers=hub.auth(), timeout=120) as client:
            settings = {"enabled": True, "compaction": False}
            (await client.put(f"{hub.url}/v1/memory/settings", json=settings)).raise_for_status()
            facts = await fact_count(client, hub)
            for statement in STATEMENTS:
                chat = {
                    "model": MODEL_ID,
                    "messages": [{"role": "user", "content": statement}],
                    "max_tokens": 16,
                }
                url = f"{hub.url}/v1/chat/completions"
                (await client.post(url, json=chat)).raise_for_status()
                deadline = time.monotonic() + wait_s
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    now = await fact_count(client, hub)
                    if len(now) > len(facts):
                        succeeded += 1
                        facts = now
                        break
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "statements": len(STATEMENTS),
        "with_a_fact": succeeded,
        "success_rate": round(succeeded / len(STATEMENTS), 3),
        "facts_stored": len(facts),
        "sample_facts": facts[:5],
    }


def main() -> None:
    """Run the benchmark and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--wait", type=float, default=30, help="Seconds to wait per statement.")
    args = parser.parse_args()
    print(json.dumps({"bench": "memory_extraction"} | asyncio.run(run(args.wait))))


if __name__ == "__main__":
    main()
