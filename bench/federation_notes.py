"""Anti-entropy of ``fed:`` notes at scale: N pools, M notes, 1 % changed, Merkle rounds only.

An in-process simulation (seeded, no network, no database) of the tictac reconcile that
``federation/notes_sync.py`` runs between hubs, with the same functions: versions and their
``row_hash`` (:class:`~federation.tictac.NoteVersion`), segments and leaves, trees, the branch
and segment diffs, and the wire shapes of the ``tree`` and ``rows`` messages (their bytes are
what the JSON would weigh). Each pool keeps its tree up to date with one XOR per stored row, as
the SQL columns do.

**Scenario.** ``--pools`` pools hold the same ``--notes`` notes. Then ``--changed`` of the notes
(1 % by default) are edited, each at a random pool (a new HLC, origin that pool); a tenth of those
edits also hit the same note at a second pool (a conflict). Rounds follow: in each, every pool
reconciles with ``--fanout`` random peers (push-pull: rows ship both ways, the winner by HLC
then pool id is kept). The run stops when every pool's root is equal (and checks that every pool
then holds the same versions).

**Output** (one JSON line): ``rounds`` to converge, ``bytes`` exchanged in total,
``bytes_full_state`` (the same exchanges each shipping every row instead: what naive
anti-entropy costs), their ratio, ``rows_shipped``, ``segments_compared`` per exchange, and
``seconds_per_round`` (simulation time per round for all pools, tree math included).

    .venv/bin/python bench/federation_notes.py --pools 100 --notes 10000
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from federation.note_rows import Held
from federation.tictac import (
    BRANCH_WIDTH,
    NoteVersion,
    Tree,
    differing,
    encode_values,
    leaf_of,
    segment_of,
)

NAMESPACES = ["fed:bench"]


@dataclass
class SimPool:
    """One pool: its versions by id and its tree's segment values, kept up to date by XOR."""

    pool_id: str
    rows: dict[uuid.UUID, NoteVersion]
    hashes: dict[uuid.UUID, bytes]
    segments: dict[int, int] = field(default_factory=dict)

    def held(self, note_id: uuid.UUID) -> Held:
        """What this pool holds of a note (its stored hash, as the SQL column has it)."""
        version = self.rows[note_id]
        return Held(self.hashes[note_id].hex(), version.hlc, version.origin_pool)

    def tree(self) -> Tree:
        """The pool's tree as it stands."""
        return Tree({s: v for s, v in self.segments.items() if v})

    def store(self, version: NoteVersion) -> bool:
        """Keep ``version`` if it wins over the stored one; whether it did."""
        held = self.rows.get(version.id)
        digest = version.row_hash()
        if held is not None and (held is version or self.hashes[version.id] == digest):
            return False
        if held is not None and not version.wins_over(
            held.hlc, held.origin_pool, self.hashes[version.id]
        ):
            return False
        segment = segment_of(version.id)
        value = self.segments.get(segment, 0) ^ leaf_of(version.id, digest)
        if held is not None:
            value ^= leaf_of(version.id, self.hashes[version.id])
        self.segments[segment] = value
        self.rows[version.id] = version
        self.hashes[version.id] = digest
        return True


def _size(message: dict[str, Any]) -> int:
    return len(orjson.dumps(message))


def reconcile(
    a: SimPool, b: SimPool, index: dict[int, list[uuid.UUID]], stats: dict[str, int]
) -> None:
    """One Merkle exchange from ``a`` with ``b``, counting the bytes each message weighs
    (``index``: the note ids of each segment, as the SQL index on ``segment`` finds them)."""
    mine, peer_tree = a.tree(), b.tree()
    stats["exchanges"] += 1
    stats["bytes"] += _size({"namespaces": NAMESPACES})
    branches = dict(enumerate(peer_tree.branches()))
    stats["bytes"] += _size(
        {
            "namespaces": NAMESPACES,
            "root": str(peer_tree.root()),
            "branches": encode_values(branches),
        }
    )
    if mine.root() == peer_tree.root():
        return
    wanted = differing(dict(enumerate(mine.branches())), branches)
    theirs_segments = peer_tree.segments_of(wanted)
    stats["bytes"] += _size({"namespaces": NAMESPACES, "branches": wanted})
    stats["bytes"] += _size({"namespaces": NAMESPACES, "segments": encode_values(theirs_segments)})
    diff = set(differing(mine.segments_of(wanted), theirs_segments))
    stats["segments_compared"] += len(wanted) * BRANCH_WIDTH
    have = {i: a.held(i) for s in diff for i in index[s]}
    stats["bytes"] += _size({"namespaces": NAMESPACES, "segments": sorted(diff), "have": {
        str(i): h.as_wire() for i, h in have.items()
    }})  # fmt: skip
    theirs = {i: b.held(i) for s in diff for i in index[s]}
    ship = [b.rows[i] for i, h in theirs.items() if i not in have or h.beats(have[i])]
    want = [i for i, h in have.items() if i not in theirs or h.beats(theirs[i])]
    stats["bytes"] += _size({"rows": [v.as_wire() for v in ship], "want": [str(i) for i in want]})
    for version in ship:
        a.store(version)
    sent = [a.rows[i] for i in want]
    stats["bytes"] += _size({"rows": [v.as_wire() for v in sent]})
    stats["bytes"] += _size({"held": [str(i) for i in want]})
    for version in sent:
        b.store(version)
    stats["rows_shipped"] += len(ship) + len(sent)


def seeded_uuid7(rng: random.Random, millis: int) -> uuid.UUID:
    """A UUIDv7 as ``memory.notes.uuid7`` makes them, from a seeded RNG."""
    rand_a, rand_b = rng.getrandbits(12), rng.getrandbits(62)
    return uuid.UUID(int=(millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b)


def pool_id(n: int) -> str:
    """A well-formed pool id for simulated pool ``n``."""
    letters = "abcdefghijklmnopqrstuvwxyz234567"
    return "iam1" + "".join(letters[(n >> (5 * k)) % 32] for k in range(52))


def run(pools: int, notes: int, changed: float, fanout: int, seed: int) -> dict[str, Any]:
    """Build the pools, change the notes, reconcile until the roots agree; the figures."""
    rng = random.Random(seed)
    base_ms = 1_796_299_491_000
    origin = pool_id(0)
    versions = [
        NoteVersion(
            id=seeded_uuid7(rng, base_ms + n),
            namespace=NAMESPACES[0],
            title=f"note {n}",
            body=f"Body of note {n}: " + "lorem ipsum " * rng.randint(5, 40),
            tags=("bench",),
            author_agent="bench",
            created_ms=base_ms + n,
            origin_pool=origin,
            hlc=(base_ms + n) << 16,
            deleted=False,
        )
        for n in range(notes)
    ]
    hashes = {v.id: v.row_hash() for v in versions}
    index: dict[int, list[uuid.UUID]] = defaultdict(list)
    for version in versions:
        index[segment_of(version.id)].append(version.id)
    tree = Tree.of_rows(hashes.items())
    sims = [
        SimPool(pool_id(p), {v.id: v for v in versions}, dict(hashes), dict(tree.segments))
        for p in range(pools)
    ]
    full_row_bytes = _size({"rows": [v.as_wire() for v in versions]})
    edits = rng.sample(versions, max(1, round(notes * changed)))
    for k, version in enumerate(edits):
        writers = rng.sample(sims, 2 if k % 10 == 0 and pools > 1 else 1)
        for w, sim in enumerate(writers):
            edited = replace(
                version,
                body=f"{version.body} (edited at {sim.pool_id[:8]})",
                origin_pool=sim.pool_id,
                hlc=((base_ms + 10_000_000) << 16) + k * 4 + w,
            )
            sim.store(edited)
    stats = {"exchanges": 0, "bytes": 0, "rows_shipped": 0, "segments_compared": 0}
    rounds = 0
    started = time.perf_counter()
    while len({sim.tree().root() for sim in sims}) > 1:
        rounds += 1
        for sim in sims:
            for peer in rng.sample([s for s in sims if s is not sim], min(fanout, pools - 1)):
                reconcile(sim, peer, index, stats)
        if rounds > 100:
            raise RuntimeError("no convergence in 100 rounds")
    elapsed = time.perf_counter() - started
    assert all(sim.hashes == sims[0].hashes for sim in sims[1:])
    full = stats["exchanges"] * full_row_bytes
    return {
        "bench": "federation_notes",
        "pools": pools,
        "notes": notes,
        "changed": len(edits),
        "fanout": fanout,
        "rounds": rounds,
        "exchanges": stats["exchanges"],
        "rows_shipped": stats["rows_shipped"],
        "bytes": stats["bytes"],
        "bytes_full_state": full,
        "bytes_ratio": round(stats["bytes"] / full, 5) if full else None,
        "segments_compared_per_exchange": round(
            stats["segments_compared"] / max(stats["exchanges"], 1), 1
        ),
        "seconds_per_round": round(elapsed / max(rounds, 1), 4),
    }


def main() -> None:
    """Parse the arguments, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--notes", type=int, default=10_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--fanout", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not 1 <= args.pools <= 1000 or args.notes < 1 or not 0 < args.changed <= 1:
        parser.error("need 1 <= --pools <= 1000, --notes >= 1 and 0 < --changed <= 1")
    print(orjson.dumps(run(args.pools, args.notes, args.changed, args.fanout, args.seed)).decode())


if __name__ == "__main__":
    main()
