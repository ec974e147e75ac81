"""The pool as a molecule: ``GET /pool/events`` (public data only) and the canvas in Chromium,
which draws as many atoms as the admin API lists workers and shows a worker's card on click."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from playwright.sync_api import Browser, expect

from federation.peers import admit_peer
from federation.settings import FederationSettings
from tests.web.conftest import ARTIFACTS, LiveHub, browser
from tests.web.hand_workers import hand_workers

__all__ = ["browser"]

ATOMS = ("atom-a", "atom-b", "atom-c")
PEER = "iam1" + "b" * 52
LIVE_MS = 15_000  # the first event of /pool/events, on a loaded machine


@pytest.fixture(scope="module")
def hub_overrides() -> dict[str, Any]:
    """Federation on (with no peer reachable), so that admitted peers show as molecules."""
    return {"federation": FederationSettings(enabled=True, public_url="http://127.0.0.1:9")}


async def _admit(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await admit_peer(
            conn,
            pool_id=PEER,
            public_key=b"p" * 32,
            url="https://peer.example",
            admitted_by="test",
            now=datetime.now(UTC),
        )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def peer_admitted(live_hub: LiveHub) -> str:
    """A peer pool admitted in the database (on a thread: the browser owns this one's loop)."""
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, _admit(live_hub.database_url)).result()
    return PEER


def admin_api(hub: LiveHub, path: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {hub.admin_token}"}
    return httpx.get(hub.url + path, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def workers_online(live_hub: LiveHub) -> Iterator[list[str]]:
    """Workers connected by hand for the module."""
    with hand_workers(live_hub, ATOMS) as names:
        yield names


def first_pool_event(hub: LiveHub) -> tuple[str, str]:
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", hub.url + "/pool/events") as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind:
                return kind, line.split(":", 1)[1].strip()
    raise AssertionError("the stream ended without an event")


def test_the_event_stream_sends_the_pool_with_public_data_only(
    live_hub: LiveHub, workers_online: list[str]
) -> None:
    kind, data = first_pool_event(live_hub)
    assert kind == "pool"
    snapshot = orjson.loads(data)
    names = [w["name"] for w in snapshot["workers"]]
    assert set(workers_online) <= set(names)
    assert snapshot["queue_depth"] == 0
    assert {m["id"] for m in snapshot["models"]} >= {f"m-{n}" for n in workers_online}
    listed = admin_api(live_hub, "/admin/api/workers").json()["data"]
    owners = {w["owner_id"] for w in listed if w["owner_id"]}
    users = {u["id"] for u in admin_api(live_hub, "/admin/api/users").json()["data"]}
    assert owners and not any(secret in data for secret in owners | users)
    assert all("owner_id" not in w and "connected_s" not in w for w in snapshot["workers"])


def test_the_canvas_draws_one_atom_per_listed_worker_and_shows_a_card_on_click(
    browser: Browser, live_hub: LiveHub, workers_online: list[str]
) -> None:
    listed = sorted(w["name"] for w in admin_api(live_hub, "/admin/api/workers").json()["data"])
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(live_hub.url + "/")
    canvas = page.locator("[data-molecule] canvas")
    expect(canvas).to_have_attribute("data-live", "true", timeout=LIVE_MS)
    expect(canvas).to_have_attribute("data-atoms", str(len(listed)))
    expect(page.locator("[data-pool-table] tbody tr")).to_have_count(len(listed))
    box = canvas.bounding_box()
    assert box is not None
    orbit = min(box["width"], box["height"]) * 0.32
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2 - orbit)
    card = page.locator("[data-card]")
    expect(card).to_be_visible()
    expect(card).to_have_attribute("data-worker", listed[0])
    expect(card).to_contain_text("Share vs target")
    page.screenshot(path=ARTIFACTS / "home-molecule.png", full_page=True)
    page.close()


def test_the_table_beside_the_canvas_works_without_javascript(
    browser: Browser, live_hub: LiveHub, workers_online: list[str]
) -> None:
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(live_hub.url + "/")
    rows = page.locator("[data-pool-table] tbody tr")
    expect(rows).to_have_count(len(admin_api(live_hub, "/admin/api/workers").json()["data"]))
    text = page.locator("[data-pool-table]").inner_text()
    assert all(re.search(rf"\b{name}\b", text) for name in workers_online)
    context.close()


def test_peer_pools_are_in_the_stream_and_drawn_as_neighbouring_molecules(
    browser: Browser, live_hub: LiveHub, peer_admitted: str
) -> None:
    _, data = first_pool_event(live_hub)
    peers = orjson.loads(data)["peers"]
    assert [p["pool_id"] for p in peers] == [peer_admitted]
    assert peers[0]["state"] in ("ok", "failing", "down")
    assert "peer.example" not in data
    page = browser.new_page()
    page.goto(live_hub.url + "/")
    canvas = page.locator("[data-molecule] canvas")
    expect(canvas).to_have_attribute("data-live", "true", timeout=LIVE_MS)
    expect(canvas).to_have_attribute("data-peers", "1")
    page.screenshot(path=ARTIFACTS / "home-molecule-peer.png", full_page=True)
    page.close()
