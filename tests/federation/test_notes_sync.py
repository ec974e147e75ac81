"""Five live hubs, each behind a link proxy: `fed:` notes converge, through partitions too.

The hubs peer in a full mesh through invites. The test drives sync rounds itself through the
admin route (one push, or one Merkle reconcile, from every hub to every peer), cuts links with
the proxies, and compares each hub's `row_hash` set read from its own database.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import anyio
import httpx
import orjson
import pytest
from mcp import Client

from federation.hlc import pack, wall_ms
from federation.identity import PoolIdentity
from federation.tictac import NoteVersion
from mcp_server.server import build_server
from tests.federation.conftest import FedHub, admit_identity, new_identity, send, signed_request
from tests.federation.proxy import LinkProxy, partition

MAX_ROUNDS = 4


@dataclass
class Pool:
    """A hub of the mesh with its user's token."""

    hub: FedHub
    token: str

    @property
    def pool_id(self) -> str:
        """The hub's pool id."""
        return self.hub.identity.pool_id

    def user(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request with the user's token."""
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(method, self.hub.url + path, headers=headers, timeout=60, **kwargs)

    def write(self, body: str, namespace: str = "fed:team", **fields: Any) -> dict[str, Any]:
        """Write a note; its JSON."""
        response = self.user(
            "POST", "/v1/memory/notes", json={"namespace": namespace, "body": body, **fields}
        )
        assert response.status_code == 201, response.text
        note: dict[str, Any] = response.json()
        return note

    def hashes(self) -> dict[UUID, bytes]:
        """Every stamped `fed:` row's hash in this hub's database."""
        rows = self.hub.rows(
            "SELECT id, row_hash FROM notes WHERE namespace LIKE 'fed:%' AND row_hash IS NOT NULL"
        )
        return {row["id"]: bytes(row["row_hash"]) for row in rows}


def _ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    data: dict[str, Any] = response.json()
    return data


def _setup(hub: FedHub) -> str:
    _ok(hub.admin("POST", "/admin/api/users", json={"name": "alice"}), 201)
    token = _ok(hub.admin("POST", "/admin/api/users/alice/tokens", json={}), 201)["token"]
    for name in ("fed:team", "pool:team"):
        _ok(hub.admin("POST", "/admin/api/namespaces", json={"name": name, "owner": "alice"}), 201)
    return str(token)


@pytest.fixture(scope="module")
def mesh(proxied_hubs: list[FedHub]) -> list[Pool]:
    """The five hubs peered two by two, each with a user `alice` owning `fed:team`."""
    for inviter, joiner in itertools.combinations(proxied_hubs, 2):
        minted = _ok(inviter.admin("POST", "/admin/api/federation/invites", json={}), 201)
        join = {"url": inviter.url, "fingerprint": minted["pool_id"], "invite": minted["invite"]}
        _ok(joiner.admin("POST", "/admin/api/federation/peers", json=join), 201)
    return [Pool(hub, _setup(hub)) for hub in proxied_hubs]


def sync_round(pools: list[Pool], *, merkle: bool = False) -> list[dict[str, Any]]:
    """Every hub syncs with every peer once; the stats of the exchanges that went through."""
    done = []
    for pool, peer in itertools.permutations(pools, 2):
        body = {"peer": peer.pool_id, "merkle": merkle}
        response = pool.hub.admin("POST", "/admin/api/federation/notes/sync", json=body)
        if response.status_code == 502:  # a cut link: the peer did not answer
            continue
        done.append(_ok(response))
    return done


def converge(pools: list[Pool], *, merkle: bool = False) -> int:
    """Sync rounds until every hub holds the same rows; how many rounds it took."""
    for rounds in range(1, MAX_ROUNDS + 1):
        sync_round(pools, merkle=merkle)
        if all(p.hashes() == pools[0].hashes() for p in pools[1:]):
            return rounds
    raise AssertionError(f"no convergence within {MAX_ROUNDS} rounds")


@pytest.fixture(scope="module")
def proxies(mesh: list[Pool]) -> dict[str, LinkProxy]:
    """Each hub's link proxy by pool id."""
    found = {p.pool_id: p.hub.proxy for p in mesh}
    return {k: v for k, v in found.items() if v is not None}


def test_notes_written_on_each_hub_reach_all_five_and_private_ones_never_leave(
    mesh: list[Pool],
) -> None:
    written = [p.write(f"note from hub {i}", title=f"t{i}", tags=["x"]) for i, p in enumerate(mesh)]
    private = mesh[0].write("my secret", namespace="user:me")
    pooled = mesh[0].write("pool only", namespace="pool:team")
    assert converge(mesh) == 1
    ids = {UUID(n["id"]) for n in written}
    for pool in mesh:
        assert set(pool.hashes()) == ids
        seen = pool.user("GET", "/v1/memory/notes", params={"namespace": "fed:team", "k": 50})
        assert {n["body"] for n in _ok(seen)["data"]} >= {n["body"] for n in written}
    for pool in mesh[1:]:
        leaked = pool.hub.rows(
            "SELECT count(*) AS n FROM notes WHERE id = ANY($1) OR namespace NOT LIKE 'fed:%'",
            [UUID(private["id"]), UUID(pooled["id"])],
        )
        assert leaked[0]["n"] == 0
    received = mesh[1].hub.rows(
        "SELECT origin_pool, embedding IS NOT NULL AS embedded FROM notes WHERE id = $1",
        UUID(written[0]["id"]),
    )
    assert received[0]["origin_pool"] == mesh[0].pool_id and received[0]["embedded"]
    sync_round(mesh)  # passes on what each hub received after its own turn
    quiet = sync_round(mesh)
    assert all(s["rows_sent"] == 0 for s in quiet)  # watermarks: nothing is sent again


def test_a_partition_heals_and_all_five_converge_with_edits_on_both_sides_and_a_delete(
    mesh: list[Pool], proxies: dict[str, LinkProxy]
) -> None:
    shared = mesh[0].write("edited on both sides")
    doomed = mesh[1].write("deleted during the partition")
    converge(mesh)
    left, right = mesh[:3], mesh[3:]
    with partition(proxies, {p.pool_id for p in right}):
        _ok(mesh[0].user("PUT", f"/v1/memory/notes/{shared['id']}", json={"body": "left"}))
        _ok(mesh[4].user("PUT", f"/v1/memory/notes/{shared['id']}", json={"body": "right"}))
        _ok(mesh[1].user("DELETE", f"/v1/memory/notes/{doomed['id']}"))
        mesh[2].write("left side only")
        mesh[3].write("right side only")
        assert converge(left) <= 2 and converge(right) <= 2
        assert left[0].hashes() != right[0].hashes()
    rounds = converge(mesh)
    assert rounds <= 2
    final = [_ok(p.user("GET", f"/v1/memory/notes/{shared['id']}"))["body"] for p in mesh]
    assert len(set(final)) == 1 and final[0] in ("left", "right")
    tombstones = [_ok(p.user("GET", f"/v1/memory/notes/{doomed['id']}")) for p in mesh]
    assert all(t["deleted_at"] is not None and t["body"] == "" for t in tombstones)


def test_the_merkle_exchange_ships_only_the_differing_segments(mesh: list[Pool]) -> None:
    converge(mesh)
    a, b, c = mesh[0], mesh[1], mesh[2]
    total = len(a.hashes())
    in_sync = _ok(
        c.hub.admin(
            "POST", "/admin/api/federation/notes/sync", json={"peer": a.pool_id, "merkle": True}
        )
    )
    assert in_sync["in_sync"] and in_sync["rows_received"] == 0 and in_sync["round_trips"] == 1
    fresh = [a.write(f"only pushed to b {i}") for i in range(3)]
    _ok(a.hub.admin("POST", "/admin/api/federation/notes/sync", json={"peer": b.pool_id}))
    stats = _ok(
        c.hub.admin(
            "POST", "/admin/api/federation/notes/sync", json={"peer": b.pool_id, "merkle": True}
        )
    )
    assert not stats["in_sync"]
    assert stats["rows_received"] == 3 and stats["rows_applied"] == 3 and stats["rows_sent"] == 0
    assert stats["segments_differing"] <= 3 and stats["segments_compared"] <= 3 * 32 < 1024
    assert total > 3
    assert {UUID(n["id"]) for n in fresh} <= set(c.hashes())


def test_a_write_quorum_waits_for_peers_and_says_how_many_acknowledged(
    mesh: list[Pool], proxies: dict[str, LinkProxy]
) -> None:
    a = mesh[0]
    stored = a.write("quorum of four", write_quorum=4)
    assert stored["acknowledged"] == 4
    assert all(UUID(stored["id"]) in p.hashes() for p in mesh)
    with partition(proxies, {p.pool_id for p in mesh[3:]}):
        short = a.user(
            "POST",
            "/v1/memory/notes",
            json={"namespace": "fed:team", "body": "quorum unreachable", "write_quorum": 3},
        )
    assert short.status_code == 502, short.text
    error = short.json()["error"]
    assert error["code"] == "write_quorum_not_reached"
    assert "only 2 of the 3 peers" in error["message"]
    kept = a.hub.rows("SELECT count(*) AS n FROM notes WHERE body = 'quorum unreachable'")
    assert kept[0]["n"] == 1
    private = a.user(
        "POST", "/v1/memory/notes", json={"body": "x", "namespace": "user:me", "write_quorum": 1}
    )
    assert private.status_code == 400 and "fed: namespaces only" in private.text


def test_the_mcp_note_write_tool_takes_a_write_quorum(
    mesh: list[Pool], proxies: dict[str, LinkProxy]
) -> None:
    a = mesh[0]

    async def write(body: str, quorum: int) -> tuple[bool, str]:
        async with (
            httpx.AsyncClient(base_url=a.hub.url, timeout=60) as http,
            Client(build_server(http, lambda _ctx: a.token)) as client,
        ):
            result = await client.call_tool(
                "note_write", {"namespace": "fed:team", "body": body, "write_quorum": quorum}
            )
        return result.is_error, str(result.content)

    failed, _ = anyio.run(write, "mcp quorum of four", 4)
    assert not failed
    stored = a.hub.rows("SELECT id FROM notes WHERE body = 'mcp quorum of four'")
    assert all(stored[0]["id"] in p.hashes() for p in mesh)
    with partition(proxies, {p.pool_id for p in mesh[3:]}):
        failed, text = anyio.run(write, "mcp quorum unreachable", 3)
    assert failed and "only 2 of the 3 peers" in text


def test_tombstones_are_collected_once_every_peer_acknowledged_them(mesh: list[Pool]) -> None:
    b = mesh[1]
    doomed = b.write("to be collected")
    converge(mesh)
    _ok(b.user("DELETE", f"/v1/memory/notes/{doomed['id']}"))
    converge(mesh)
    collected = _ok(b.hub.admin("POST", "/admin/api/federation/notes/collect"))
    assert collected["collected"] >= 1
    assert UUID(doomed["id"]) not in b.hashes()


# -- refusals: crafted messages from a key admitted as a peer of hub A -------------------------


@pytest.fixture(scope="module")
def known(mesh: list[Pool]) -> Iterator[PoolIdentity]:
    """A key admitted by hub A (to send crafted messages), removed afterwards."""
    identity = new_identity()
    admit_identity(mesh[0].hub.database_url, identity)
    yield identity
    mesh[0].hub.admin("DELETE", f"/admin/api/federation/peers/{identity.pool_id}")


def _row(origin: PoolIdentity, **changes: Any) -> dict[str, Any]:
    now = wall_ms()
    fields: dict[str, Any] = {
        "id": UUID("01890a5d-ac96-774b-bcce-b302099a8057"),
        "namespace": "fed:team",
        "title": "",
        "body": "crafted",
        "tags": (),
        "author_agent": "",
        "created_ms": now,
        "origin_pool": origin.pool_id,
        "hlc": pack(now),
        "deleted": False,
    } | changes
    return NoteVersion(**fields).as_wire()


def _changes(hub: FedHub, identity: PoolIdentity, message: object) -> httpx.Response:
    body = orjson.dumps(message)
    url = hub.url + "/v1/federation/notes/changes"
    return send(signed_request(identity, "POST", url, body), body)


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def test_a_row_with_an_hlc_far_in_the_future_is_refused(
    mesh: list[Pool], known: PoolIdentity
) -> None:
    future = pack(wall_ms() + 120_000)
    _refused(
        _changes(mesh[0].hub, known, {"rows": [_row(known, hlc=future)]}), 400, "hlc_in_future"
    )
    assert mesh[0].hub.rows("SELECT count(*) AS n FROM notes WHERE body = 'crafted'")[0]["n"] == 0


def test_a_row_whose_hash_does_not_match_or_that_is_private_is_refused(
    mesh: list[Pool], known: PoolIdentity
) -> None:
    hub = mesh[0].hub
    forged = _row(known) | {"body": "changed after hashing"}
    _refused(_changes(hub, known, {"rows": [forged]}), 400, "row_hash_mismatch")
    private = _row(known, namespace="user:0b9a6c2e-9a51-4c9b-9d7a-0c1e6d3f0a11")
    _refused(_changes(hub, known, {"rows": [private]}), 400, "namespace_not_federated")
    _refused(_changes(hub, known, {"rows": "nope"}), 400, "invalid_federation_input")
    elsewhere = _changes(hub, known, {"rows": [_row(known, namespace="fed:not-here")]})
    assert elsewhere.status_code == 200, elsewhere.text
    assert elsewhere.json()["skipped"] == 1 and elsewhere.json()["held"] == []
    _refused(_changes(hub, known, [1, 2]), 400, "invalid_federation_input")
    assert hub.rows("SELECT count(*) AS n FROM notes WHERE body LIKE 'c%ed%'")[0]["n"] == 0
    assert hub.rows("SELECT count(*) AS n FROM notes WHERE namespace = 'fed:not-here'")[0]["n"] == 0


def test_a_forged_or_replayed_sync_message_is_refused(
    mesh: list[Pool], known: PoolIdentity
) -> None:
    hub = mesh[0].hub
    stranger = new_identity()
    _refused(_changes(hub, stranger, {"rows": [_row(stranger)]}), 401, "unknown_peer")
    body = orjson.dumps({"rows": [_row(known, body="accepted once")]})
    request = signed_request(known, "POST", hub.url + "/v1/federation/notes/changes", body)
    first = send(request, body)
    assert first.status_code == 200, first.text
    assert first.json()["applied"] == 1
    _refused(send(request, body), 401, "replayed_request")
    later = datetime.now(UTC) - timedelta(seconds=1)
    tampered = signed_request(
        known, "POST", hub.url + "/v1/federation/notes/tree", b"{}", now=later
    )
    _refused(send(tampered, body), 401, "digest_mismatch")
