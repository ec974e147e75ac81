"""Liveness between four live hubs behind link proxies: a flaky link evicts nobody, a partitioned
pool is declared dead by the majority only, and healing brings it back at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from memory.settings import MemorySettings
from tests.federation.conftest import FedHub, running_hubs
from tests.federation.proxy import partition
from tests.hub.conftest import wait_until

SUSPECT_AFTER_S = 2.0


@pytest.fixture(scope="module")
def pools(pg_admin_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[FedHub]]:
    """Four proxied hubs, fully peered, that suspect a peer after a second of silence."""
    federation = {
        "suspect_after_s": SUSPECT_AFTER_S,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
    }
    memory = MemorySettings(facts_extraction=False)
    with running_hubs(
        4, pg_admin_uri, tmp_path_factory, memory=memory, federation=federation, proxied=True
    ) as hubs:
        for i, inviter in enumerate(hubs):
            for joiner in hubs[i + 1 :]:
                minted = inviter.admin("POST", "/admin/api/federation/invites", json={}).json()
                added = joiner.admin(
                    "POST",
                    "/admin/api/federation/peers",
                    json={
                        "url": inviter.url,
                        "fingerprint": minted["pool_id"],
                        "invite": minted["invite"],
                    },
                )
                assert added.status_code == 201, added.text
        yield hubs


def _round(hub: FedHub) -> dict[str, Any]:
    response = hub.admin("POST", "/admin/api/jobs/federation_sync/run")
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    assert run["outcome"] == "ok", run
    detail: dict[str, Any] = run["detail"]
    return detail


def _status(hub: FedHub) -> dict[str, str]:
    response = hub.admin("GET", "/admin/api/federation/members")
    assert response.status_code == 200, response.text
    return {m["pool_id"]: m["status"] for m in response.json()["data"]}


def _id(hub: FedHub) -> str:
    return hub.identity.pool_id


def _rounds(hubs: list[FedHub], seconds: float) -> dict[str, int]:
    """Rounds on ``hubs`` in turn, as their schedulers would, for ``seconds``; failed calls per
    hub."""
    failed = {hub.url: 0 for hub in hubs}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for hub in hubs:
            failed[hub.url] += len(_round(hub)["failed"])
    return failed


def test_liveness_by_quorum(pools: list[FedHub]) -> None:
    a, b, c, x = pools
    proxies = {_id(hub): hub.proxy for hub in pools if hub.proxy is not None}
    _rounds(pools, 0.1)
    for hub in pools:
        assert set(_status(hub).values()) == {"alive"}, hub.url

    # One flaky link, a–x both ways: a keeps hearing x through b and c, so nobody is evicted.
    proxies[_id(x)].cut(_id(a))
    proxies[_id(a)].cut(_id(x))
    failed = _rounds(pools, SUSPECT_AFTER_S * 2.5)
    assert failed[a.url] >= 1 and failed[x.url] >= 1  # the link really was down
    for hub in pools:
        assert set(_status(hub).values()) == {"alive"}, hub.url
    for proxy in proxies.values():
        proxy.heal()

    # x cut off from everyone: the majority side declares it dead; x, alone, kills nobody.
    with partition(proxies, {_id(x)}):
        _rounds(pools, SUSPECT_AFTER_S * 2.5)
        for hub in (a, b, c):
            assert _status(hub)[_id(x)] == "dead", hub.url
            assert set(_status(hub).values()) == {"alive", "dead"}, hub.url
        assert set(_status(x).values()) == {"suspect"}

    # Healed: x's next round reaches everyone, and one heartbeat clears every suspicion.
    others = sorted(_id(hub) for hub in (a, b, c))
    # x's calls back off (capped at 0.5 s here): its rounds reach everyone once that has passed.
    wait_until(lambda: sorted(_round(x)["ok"]) == others, 10, "x to reach every peer again")
    for hub in pools:
        assert set(_status(hub).values()) == {"alive"}, hub.url
    # x's first message still voted against those it had not heard yet; its next ones do not.
    _rounds(pools, 0.1)
    for hub in pools:
        members = hub.admin("GET", "/admin/api/federation/members").json()["data"]
        assert all(m["suspected_by"] == [] for m in members), members
