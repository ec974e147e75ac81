"""Round trip of `recall` over MCP (streamable HTTP) against the same search over the REST API.

Starts a hub (embedded PostgreSQL, no worker needed), stores facts and notes for one user, then
times `GET /v1/memory/recall` and the MCP tool `recall` with the same queries, interleaved, in
one run. Both carry the same bearer token; the MCP path adds the MCP framing and the tool's
in-process call into the same route. Prints one JSON line with p50/p99 and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from services import Services, iamine, log, sigterm_as_interrupt, start_hub

FACTS = [
    "The user's favourite tea is jasmine.",
    "The user lives in Lyon.",
    "The user's cat is called Pixel.",
    "The user works night shifts on Tuesdays.",
    "The user is allergic to peanuts.",
    "The user's bike is a blue gravel bike.",
    "The user speaks French and Portuguese.",
    "The user prefers aisle seats on trains.",
]
QUERIES = [
    "what tea does the user like",
    "where does the user live",
    "pet name",
    "when does the user work at night",
    "food allergies",
    "what bike",
    "languages spoken",
    "seat preference when travelling",
]


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of the samples, in milliseconds, rounded."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, round(q * (len(ordered) - 1)))
    return round(ordered[index] * 1000, 3)


async def measure(rounds: int) -> dict[str, object]:
    """Run the hub, seed memory, and time both paths."""
    with Services(Path(tempfile.mkdtemp(prefix="iamine-bench-mcp-"))) as services:
        env = os.environ | {"IAMINE_DATA_DIR": str(services.workdir / "hub-data")}
        iamine(env, "models", "install")
        hub = await start_hub(services)
        async with httpx.AsyncClient(base_url=hub.url, headers=hub.auth(), timeout=60) as rest:
            for text in FACTS:
                (await rest.post("/v1/memory/facts", json={"text": text})).raise_for_status()
            rest_times: list[float] = []
            mcp_times: list[float] = []
            async with (
                httpx2.AsyncClient(headers=hub.auth(), timeout=60) as http,
                Client(streamable_http_client(f"{hub.url}/mcp", http_client=http)) as mcp,
            ):
                for i in range(rounds + 20):
                    query = QUERIES[i % len(QUERIES)]
                    started = time.perf_counter()
                    response = await rest.get("/v1/memory/recall", params={"query": query})
                    response.raise_for_status()
                    rest_s = time.perf_counter() - started
                    started = time.perf_counter()
                    result = await mcp.call_tool("recall", {"query": query})
                    mcp_s = time.perf_counter() - started
                    if result.is_error:
                        raise RuntimeError(f"MCP recall failed: {result.content}")
                    if i >= 20:  # the first rounds warm both paths up
                        rest_times.append(rest_s)
                        mcp_times.append(mcp_s)
        log(f"{rounds} rounds done")
    rest_p50, mcp_p50 = percentile(rest_times, 0.5), percentile(mcp_times, 0.5)
    return {
        "bench": "mcp_latency",
        "rounds": rounds,
        "facts": len(FACTS),
        "rest_recall_ms": {
            "p50": rest_p50,
            "p99": percentile(rest_times, 0.99),
            "mean": round(statistics.fmean(rest_times) * 1000, 3),
        },
        "mcp_recall_ms": {
            "p50": mcp_p50,
            "p99": percentile(mcp_times, 0.99),
            "mean": round(statistics.fmean(mcp_times) * 1000, 3),
        },
        "ratio_mcp_over_rest_p50": round(mcp_p50 / rest_p50, 3),
        "mcp_added_ms_p50": round(mcp_p50 - rest_p50, 3),
    }


def main() -> None:
    """Parse flags, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=300, help="Timed calls per path.")
    args = parser.parse_args()
    with sigterm_as_interrupt():
        print(json.dumps(asyncio.run(measure(args.rounds))))


if __name__ == "__main__":
    main()
