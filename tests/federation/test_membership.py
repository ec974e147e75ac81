"""Liveness by quorum, candidates, gossip messages and the capability book, on a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from federation import candidates, membership, peers
from federation.capabilities import CapabilityBook, parse_capabilities
from federation.errors import InvalidFederationInput, PeerNotFound
from federation.gossip import parse_message
from federation.identity import PoolIdentity, encode_public_key
from tests.federation.conftest import new_identity

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
AFTER = timedelta(seconds=30)


async def _peer(conn: asyncpg.Connection, identity: PoolIdentity, port: int) -> str:
    await peers.admit_peer(
        conn,
        pool_id=identity.pool_id,
        public_key=identity.public_key,
        url=f"http://127.0.0.1:{port}",
        admitted_by="test",
        now=T0,
    )
    return identity.pool_id


async def _pool_of(conn: asyncpg.Connection, size: int) -> list[str]:
    ids = [await _peer(conn, new_identity(), 9000 + i) for i in range(size)]
    await membership.ensure_members(conn, ids)
    for pool_id in ids:
        await membership.observe_heartbeat(conn, pool_id, (1, 1), T0)
    return ids


async def _judge(
    conn: asyncpg.Connection, me: str, now: datetime, quorum: int = 0
) -> dict[str, str]:
    admitted = {p.pool_id: p.admitted_at for p in await peers.list_peers(conn)}
    return dict(
        await membership.judge(
            conn, me, suspect_after=AFTER, configured_quorum=quorum, admitted_at=admitted, now=now
        )
    )


async def _status(conn: asyncpg.Connection) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {m.pool_id: (m.status, m.suspected_by) for m in await membership.list_members(conn)}


def test_the_default_quorum_is_a_majority_of_this_pool_and_the_other_live_peers() -> None:
    assert membership.dead_quorum(0, 0) == 1  # a single peer: this pool's view decides
    assert membership.dead_quorum(0, 3) == 3  # five pools: this one and two of the other three
    assert membership.dead_quorum(0, 4) == 3
    assert membership.dead_quorum(2, 10) == 2


async def test_a_silent_peer_is_suspected_then_dead_only_when_a_quorum_suspects_it(
    conn: asyncpg.Connection,
) -> None:
    me = new_identity().pool_id
    x, p, q, r = await _pool_of(conn, 4)
    for other in (p, q, r):  # the others keep beating
        await membership.observe_heartbeat(conn, other, (1, 9), T0 + timedelta(seconds=40))
    changed = await _judge(conn, me, T0 + timedelta(seconds=31))
    assert changed == {x: "suspect"}
    await membership.record_suspicions(conn, p, [x], me)
    assert (await _judge(conn, me, T0 + timedelta(seconds=41))) == {}  # two of three votes
    await membership.record_suspicions(conn, q, [x, me], me)  # nobody can suspect this pool
    assert (await _judge(conn, me, T0 + timedelta(seconds=42))) == {x: "dead"}
    status, by = (await _status(conn))[x]
    assert status == "dead" and set(by) == {me, p, q}
    others = {pool_id: by for pool_id, (_, by) in (await _status(conn)).items() if pool_id != x}
    assert all(by == () for by in others.values())  # this pool hears p, q and r
    # One heartbeat from it, directly or relayed, clears every suspicion at once.
    assert await membership.observe_heartbeat(conn, x, (1, 2), T0 + timedelta(seconds=43))
    assert (await _status(conn))[x] == ("alive", ())
    assert not await membership.observe_heartbeat(conn, x, (1, 2), T0 + timedelta(seconds=44))


async def test_one_flaky_link_cannot_evict_a_peer_that_others_still_hear(
    conn: asyncpg.Connection,
) -> None:
    me = new_identity().pool_id
    x, p, q = await _pool_of(conn, 3)
    await membership.record_suspicions(conn, p, [x], me)  # p's link to x is down
    for moment in range(10, 200, 10):  # x's heartbeat still reaches this pool (relayed)
        now = T0 + timedelta(seconds=moment)
        await membership.observe_heartbeat(conn, x, (1, moment), now)
        await membership.observe_heartbeat(conn, q, (1, moment), now)
        await membership.observe_heartbeat(conn, p, (1, moment), now)
        await membership.record_suspicions(conn, p, [x], me)
        assert (await _judge(conn, me, now)) == {}
    assert (await _status(conn))[x][0] == "alive"


async def test_votes_of_pools_this_one_no_longer_hears_do_not_count(
    conn: asyncpg.Connection,
) -> None:
    me = new_identity().pool_id
    x, p, q = await _pool_of(conn, 3)
    await membership.record_suspicions(conn, p, [x], me)
    await membership.record_suspicions(conn, q, [x], me)
    # Cut off from everyone: p's and q's old votes on x are kept but do not make x dead.
    changed = await _judge(conn, me, T0 + timedelta(seconds=31))
    assert changed == {x: "suspect", p: "suspect", q: "suspect"}
    # Hearing p and q again (x still silent), their votes count.
    for other in (p, q):
        await membership.observe_heartbeat(conn, other, (1, 5), T0 + timedelta(seconds=32))
    await membership.record_suspicions(conn, p, [x], me)
    await membership.record_suspicions(conn, q, [x], me)
    assert (await _judge(conn, me, T0 + timedelta(seconds=33))) == {x: "dead"}
    assert (await _status(conn))[p][0] == "alive"  # its heartbeat made it alive at once


async def test_with_a_single_peer_this_pool_s_view_decides_and_a_restart_is_a_new_incarnation(
    conn: asyncpg.Connection,
) -> None:
    me = new_identity().pool_id
    (x,) = await _pool_of(conn, 1)
    assert (await _judge(conn, me, T0 + timedelta(seconds=31))) == {x: "dead"}
    # It restarted: a new incarnation with a low counter is still newer.
    assert await membership.observe_heartbeat(conn, x, (2, 0), T0 + timedelta(seconds=32))
    assert (await _status(conn))[x][0] == "alive"
    assert not await membership.observe_heartbeat(conn, x, (1, 99), T0 + timedelta(seconds=33))


async def test_a_configured_quorum_and_a_never_heard_peer_counted_from_its_admission(
    conn: asyncpg.Connection,
) -> None:
    me = new_identity().pool_id
    x = await _peer(conn, new_identity(), 9100)
    await membership.ensure_members(conn, [x])
    assert (await _judge(conn, me, T0 + timedelta(seconds=29), quorum=2)) == {}
    assert (await _judge(conn, me, T0 + timedelta(seconds=31), quorum=2)) == {x: "suspect"}


async def test_a_candidate_needs_its_own_key_and_is_admitted_by_quorum_or_by_the_admin(
    conn: asyncpg.Connection,
) -> None:
    a, b = await _pool_of(conn, 2)
    stranger, impostor, other = new_identity(), new_identity(), new_identity()
    listed = candidates.Listed(stranger.pool_id, stranger.public_key, "http://127.0.0.1:7001")
    forged = candidates.Listed(stranger.pool_id, impostor.public_key, "http://127.0.0.1:7002")
    assert await candidates.vouch(conn, a, [listed, forged], T0) == 1
    found = await candidates.list_candidates(conn)
    assert [(c.pool_id, c.public_key, c.vouched_by) for c in found] == [
        (stranger.pool_id, stranger.public_key, (a,))
    ]
    assert await candidates.admit_by_quorum(conn, 2, [a, b], T0) == []
    assert await candidates.admit_by_quorum(conn, 0, [a, b], T0) == []  # off by default
    # An admitted peer is never a candidate, and a vouch is withdrawn when no longer listed.
    await candidates.vouch(conn, b, [listed, candidates.Listed(a, b"\0" * 32, "http://x:1")], T0)
    await candidates.vouch(conn, a, [], T0)
    assert [c.vouched_by for c in await candidates.list_candidates(conn)] == [(b,)]
    await candidates.vouch(conn, a, [listed], T0)
    admitted = await candidates.admit_by_quorum(conn, 2, [a, b], T0)
    assert [(p.pool_id, p.url, p.admitted_by.startswith("quorum ")) for p in admitted] == [
        (stranger.pool_id, "http://127.0.0.1:7001", True)
    ]
    assert await candidates.list_candidates(conn) == []
    await candidates.vouch(
        conn, a, [candidates.Listed(other.pool_id, other.public_key, "http://h:2")], T0
    )
    peer = await candidates.admit_candidate(conn, other.pool_id, T0)
    assert peer.admitted_by == "admin" and peer.public_key == other.public_key
    with pytest.raises(PeerNotFound):
        await candidates.admit_candidate(conn, other.pool_id, T0)


def _message(**overrides: object) -> dict[str, object]:
    known = new_identity()
    message: dict[str, object] = {
        "pool_id": known.pool_id,
        "heartbeat": [1, 2],
        "members": [
            {
                "pool_id": known.pool_id,
                "url": "http://127.0.0.1:1",
                "public_key": encode_public_key(known.public_key),
                "heartbeat": [3, 4],
            },
            {"pool_id": 7},
            "junk",
            {"pool_id": "x", "url": "ftp://nope", "public_key": "AAAA"},
        ],
        "suspects": [known.pool_id, "a", 3, known.pool_id.upper()],
        "capabilities": {"models": [{"model": "m", "free_slots": 2, "price_per_1k": 5}]},
    }
    return {**message, **overrides}


def test_a_gossip_message_keeps_good_entries_and_refuses_a_malformed_whole() -> None:
    parsed = parse_message(_message())
    assert parsed.heartbeat == (1, 2)
    assert [(m.url, beat) for m, beat in parsed.members] == [("http://127.0.0.1:1", (3, 4))]
    assert parsed.suspects == [parsed.pool_id]  # only well-formed pool ids are read
    cases: list[tuple[dict[str, object], str]] = [
        ({"heartbeat": [1]}, "heartbeat"),
        ({"heartbeat": [-1, 2]}, "heartbeat"),
        ({"heartbeat": [True, 2]}, "heartbeat"),
        ({"pool_id": None}, "pool_id"),
        ({"members": {"a": 1}}, "members"),
        ({"suspects": "all"}, "suspects"),
        ({"capabilities": {"models": "m"}}, "capabilities"),
    ]
    for bad, param in cases:
        with pytest.raises(InvalidFederationInput) as caught:
            parse_message(_message(**bad))
        assert caught.value.param == param
    with pytest.raises(InvalidFederationInput):
        parse_message([1, 2])


def test_capabilities_drop_bad_entries_and_clamp_numbers() -> None:
    parsed = parse_capabilities(
        {
            "models": [
                {"model": "a", "free_slots": -3, "price_per_1k": 10**15},
                {"model": "", "free_slots": 1, "price_per_1k": 1},
                {"model": "b", "free_slots": True, "price_per_1k": 1},
                {"model": "c", "free_slots": 1.5, "price_per_1k": 1},
                {"model": "x" * 201, "free_slots": 1, "price_per_1k": 1},
                {"model": "d", "free_slots": 4, "price_per_1k": 7},
            ]
        }
    )
    assert parsed == [("a", 0, 10**12), ("d", 4, 7)]
    with pytest.raises(ValueError, match="capabilities"):
        parse_capabilities({"models": None})


def test_the_book_ranks_by_free_slot_then_measured_speed_then_price_and_skips_the_dead() -> None:
    book = CapabilityBook(timedelta(seconds=60))

    def offer(slots: int, price: int) -> dict[str, object]:
        return {"models": [{"model": "m", "free_slots": slots, "price_per_1k": price}]}

    book.update("cheap", "http://c:1", offer(2, 1), T0)
    book.update("fast", "http://f:1", offer(1, 9), T0)
    book.update("full", "http://u:1", offer(0, 0), T0)
    best = book.best("m")
    assert best is not None and best.pool_id == "cheap"  # nobody measured yet: price decides
    book.measured("fast", "m", 50.0)
    book.measured("fast", "m", float("inf"))  # ignored
    best = book.best("m")
    assert best is not None and (best.pool_id, best.tokens_per_s) == ("fast", 50.0)
    best = book.best("m", exclude={"fast"})
    assert best is not None and best.pool_id == "cheap"
    book.set_dead("cheap", True)
    assert book.best("m", exclude={"fast"}) is None  # "full" has no free slot
    assert [o.pool_id for o in book.offers("m")] == ["fast", "full"]
    assert book.best("m", now=T0 + timedelta(seconds=61)) is None  # too old without a round
    assert book.models() == {"m"}
    book.forget("fast")
    assert book.best("m") is None and book.best("other") is None
    with pytest.raises(ValueError, match="capabilities"):
        book.update("cheap", "http://c:1", {"models": 3}, T0)
