"""Anti-entropy of ``fed:`` notes between peers: pushes since a watermark, tictac reconciles.

Two paths carry note versions between pools (docs/federation.md, "Anti-entropy of fed: notes"):

- :meth:`NoteSync.push_changes` sends a peer every version this database changed since the
  peer's watermark (``note_sync_peers.pushed_seq``); it rides on every gossip round.
- :meth:`NoteSync.reconcile` is the periodic backstop: both pools compare tictac trees
  (:mod:`federation.tictac`), descend only into differing branches and segments, and ship just
  the rows of those segments, both ways. Each pool computes its own tree from its own rows.

A local write leaves its row *pending* (``row_hash`` NULL); :meth:`NoteSync.stamp` gives it an
HLC, this pool as origin, and its ``row_hash`` before anything is sent. A received version is
checked (:mod:`federation.note_rows`), embedded here (a peer's vector is never trusted), and
stored only if it wins: higher HLC, then higher pool id; an identical ``row_hash`` is a no-op.
Only namespaces this pool's admin created are accepted. No connection is held while a peer or
the embedding model is awaited.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import orjson
import structlog

from federation import peers
from federation.errors import FederationError, InvalidFederationInput, PeerFailed
from federation.hlc import HybridClock
from federation.note_rows import MAX_ROWS, Held, fed_namespaces, note_ids, parse_have, parse_rows
from federation.service import Federation, Inbound
from federation.settings import NotesSyncSettings
from federation.signatures import SignedRequest
from federation.tictac import BRANCHES, SEGMENTS, NoteVersion, Tree, decode_values, differing
from federation.tictac import encode_values as encode
from memory.embeddings import MODEL_DIM, MODEL_NAME, Embedder
from memory.notes import NewNote, content_hash

log = structlog.get_logger()

CHANGES_PATH = "/v1/federation/notes/changes"
TREE_PATH = "/v1/federation/notes/tree"
ROWS_PATH = "/v1/federation/notes/rows"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

_VERSION = (
    "SELECT id, namespace, title, body, tags, author_agent, created_at, origin_pool, hlc, "
    "deleted_at IS NOT NULL AS deleted, sync_seq, row_hash FROM notes "
)
_PUSH_SQL = (
    f"{_VERSION} WHERE namespace LIKE 'fed:%' AND row_hash IS NOT NULL AND sync_seq > $1 "
    "AND origin_pool <> $3 ORDER BY sync_seq LIMIT $2"
)
_BY_ID_SQL = f"{_VERSION} WHERE id = ANY($1) AND namespace = ANY($2) AND row_hash IS NOT NULL"
_IN_SEGMENTS_SQL = (
    f"{_VERSION} WHERE namespace = ANY($1) AND namespace LIKE 'fed:%' "
    "AND segment = ANY($2::smallint[]) AND row_hash IS NOT NULL"
)
_TREE_SQL = (
    "SELECT segment, bit_xor(leaf) AS value FROM notes WHERE namespace = ANY($1) "
    "AND namespace LIKE 'fed:%' AND row_hash IS NOT NULL GROUP BY segment"
)
_APPLY_SQL = """
INSERT INTO notes (id, namespace, author_agent, title, body, tags, embedding, embedding_model,
                   embedding_dim, content_hash, origin_pool, hlc, row_hash, sync_seq,
                   created_at, updated_at, deleted_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, nextval('note_sync_seq'),
        $14, $15, $16)
ON CONFLICT (id) DO UPDATE
   SET author_agent = EXCLUDED.author_agent, title = EXCLUDED.title, body = EXCLUDED.body,
       tags = EXCLUDED.tags, embedding = EXCLUDED.embedding,
       embedding_model = EXCLUDED.embedding_model, embedding_dim = EXCLUDED.embedding_dim,
       content_hash = EXCLUDED.content_hash, origin_pool = EXCLUDED.origin_pool,
       hlc = EXCLUDED.hlc, row_hash = EXCLUDED.row_hash, sync_seq = EXCLUDED.sync_seq,
       updated_at = EXCLUDED.updated_at,
       deleted_at = CASE WHEN EXCLUDED.deleted_at IS NULL THEN NULL
                         ELSE coalesce(notes.deleted_at, EXCLUDED.deleted_at) END,
       clock = notes.clock + 1
 WHERE notes.namespace = EXCLUDED.namespace AND notes.row_hash IS NOT NULL
   AND (notes.hlc, notes.origin_pool, notes.row_hash)
     < (EXCLUDED.hlc, EXCLUDED.origin_pool, EXCLUDED.row_hash)
RETURNING id
"""
_COLLECT_SQL = """
WITH gone AS (
    DELETE FROM notes n
     WHERE n.namespace LIKE 'fed:%' AND n.deleted_at IS NOT NULL AND n.row_hash IS NOT NULL
       AND n.deleted_at < $1
       AND NOT EXISTS (
           SELECT 1 FROM peers p
            WHERE p.consecutive_failures < $2
              AND NOT EXISTS (SELECT 1 FROM note_tombstone_acks a
                               WHERE a.note_id = n.id AND a.peer = p.pool_id))
    RETURNING 1)
SELECT count(*) FROM gone
"""


class QuorumNotReached(FederationError):
    """A write asked for W peers and fewer acknowledged it (the local write stays)."""

    code = "write_quorum_not_reached"

    def __init__(self, message: str, *, acknowledged: int, quorum: int) -> None:
        super().__init__(message, param="write_quorum")
        self.acknowledged = acknowledged
        self.quorum = quorum


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _MS


def _version(row: asyncpg.Record, *, origin_pool: str = "", hlc: int = 0) -> NoteVersion:
    """The version a row holds (``origin_pool`` and ``hlc`` given: the row's new stamp)."""
    return NoteVersion(
        id=row["id"],
        namespace=row["namespace"],
        title=row["title"],
        body=row["body"],
        tags=tuple(row["tags"]),
        author_agent=row["author_agent"],
        created_ms=_ms(row["created_at"]),
        origin_pool=origin_pool or row["origin_pool"],
        hlc=hlc or row["hlc"],
        deleted=row["deleted"],
    )


def _held(row: asyncpg.Record) -> Held:
    """What a stamped row holds (its stored ``row_hash``: no need to hash it again)."""
    return Held(bytes(row["row_hash"]).hex(), row["hlc"], row["origin_pool"])


def _stats(**values: int) -> dict[str, int]:
    keys = ("rows_sent", "rows_received", "rows_applied", "bytes_sent", "bytes_received")
    return {key: 0 for key in keys} | values


class NoteSync:
    """This pool's side of ``fed:`` note anti-entropy (one per running hub, federation on)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        federation: Federation,
        embedder: Embedder,
        settings: NotesSyncSettings,
        *,
        down_after_failures: int = 3,
        clock: HybridClock | None = None,
    ) -> None:
        self._pool = pool
        self._federation = federation
        self._embedder = embedder
        self.settings = settings
        self.pool_id = federation.identity.pool_id
        self.clock = clock or HybridClock()
        self._down_after = down_after_failures
        self._seeded = False
        self._stamping = anyio.Lock()

    # -- local rows ----------------------------------------------------------------------------

    async def stamp(self) -> int:
        """Give every pending local ``fed:`` change its HLC, origin and ``row_hash``; how many."""
        async with self._stamping, self._pool.acquire() as conn, conn.transaction():
            if not self._seeded:
                top = await conn.fetchval("SELECT max(hlc) FROM notes")
                self.clock.last = max(self.clock.last, top or 0)
                self._seeded = True
            rows = await conn.fetch(
                "SELECT id, namespace, title, body, tags, author_agent, created_at, "
                "deleted_at IS NOT NULL AS deleted FROM notes "
                "WHERE namespace LIKE 'fed:%' AND row_hash IS NULL ORDER BY id FOR UPDATE"
            )
            stamped = []
            for row in rows:
                version = _version(row, origin_pool=self.pool_id, hlc=self.clock.tick())
                stamped.append((row["id"], version.row_hash(), version.hlc, self.pool_id))
            await conn.executemany(
                "UPDATE notes SET row_hash = $2, hlc = $3, origin_pool = $4, "
                "sync_seq = nextval('note_sync_seq') WHERE id = $1",
                stamped,
            )
        return len(stamped)

    async def namespaces(self, conn: asyncpg.Connection) -> list[str]:
        """The ``fed:`` namespaces this pool's admin created: the only ones it syncs."""
        rows = await conn.fetch(
            "SELECT namespace FROM note_namespaces WHERE namespace LIKE 'fed:%' ORDER BY 1"
        )
        return [row["namespace"] for row in rows]

    async def tree(self, namespaces: Sequence[str]) -> Tree:
        """This pool's tictac tree over ``namespaces`` (computed in SQL)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_TREE_SQL, list(namespaces))
        return Tree({row["segment"]: row["value"] for row in rows if row["value"]})

    async def row_hashes(self) -> dict[UUID, bytes]:
        """Every stamped ``fed:`` row's ``row_hash`` (what pools compare to check convergence)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, row_hash FROM notes WHERE namespace LIKE 'fed:%' "
                "AND row_hash IS NOT NULL"
            )
        return {row["id"]: bytes(row["row_hash"]) for row in rows}

    # -- outbound ------------------------------------------------------------------------------

    async def push_changes(self, peer: peers.Peer) -> dict[str, Any]:
        """Send ``peer`` every version changed since its watermark, in bounded batches."""
        await self.stamp()
        stats = _stats(batches=0)
        while True:
            async with self._pool.acquire() as conn:
                mark = await conn.fetchval(
                    "SELECT pushed_seq FROM note_sync_peers WHERE peer = $1", peer.pool_id
                )
                rows = await conn.fetch(
                    _PUSH_SQL, mark or 0, self.settings.batch_rows, peer.pool_id
                )
            if not rows:
                return stats
            versions, last = self._batch(rows)
            held = await self._send(peer, versions, stats)
            async with self._pool.acquire() as conn, conn.transaction():
                await self._ack_tombstones(conn, peer.pool_id, versions, held)
                await conn.execute(
                    "INSERT INTO note_sync_peers (peer, pushed_seq, pushed_at) "
                    "VALUES ($1, $2, now()) ON CONFLICT (peer) DO UPDATE "
                    "SET pushed_seq = greatest(note_sync_peers.pushed_seq, $2), pushed_at = now()",
                    peer.pool_id,
                    last,
                )
            stats["batches"] += 1

    def _batch(self, rows: Sequence[asyncpg.Record]) -> tuple[list[NoteVersion], int]:
        """The first rows that fit in ``batch_bytes`` (at least one), and the last one's seq."""
        versions: list[NoteVersion] = []
        size, last = 0, 0
        for row in rows:
            version = _version(row)
            size += len(version.title) + len(version.body) * 4 + 400
            if versions and size > self.settings.batch_bytes:
                break
            versions.append(version)
            last = row["sync_seq"]
        return versions, last

    async def _send(
        self, peer: peers.Peer, versions: Sequence[NoteVersion], stats: dict[str, int]
    ) -> set[UUID]:
        """Send versions to a peer's changes route; the ids it now holds (that or newer)."""
        payload = {"rows": [v.as_wire() for v in versions]}
        answer = await self._call(peer, CHANGES_PATH, payload, stats)
        stats["rows_sent"] += len(versions)
        with _answer_of(peer):
            return set(note_ids(answer.get("held"), "held"))

    async def _call(
        self, peer: peers.Peer, path: str, payload: dict[str, Any], stats: dict[str, int]
    ) -> dict[str, Any]:
        stats["bytes_sent"] += len(orjson.dumps(payload))
        answer = await self._federation.client.call(peer, "POST", path, payload)
        stats["bytes_received"] += len(orjson.dumps(answer))
        stats["round_trips"] = stats.get("round_trips", 0) + 1
        return answer

    async def _ack_tombstones(
        self,
        conn: asyncpg.Connection,
        peer_id: str,
        versions: Sequence[NoteVersion],
        held: set[UUID],
    ) -> None:
        acked = [v.id for v in versions if v.deleted and v.id in held]
        await conn.execute(
            "INSERT INTO note_tombstone_acks (note_id, peer, acked_at) "
            "SELECT n.id, $2, now() FROM notes n WHERE n.id = ANY($1) AND n.deleted_at IS NOT NULL "
            "ON CONFLICT DO NOTHING",
            acked,
            peer_id,
        )

    async def reconcile(self, peer: peers.Peer) -> dict[str, Any]:
        """The tictac exchange with ``peer``: roots, differing branches, differing segments,
        then just those segments' rows both ways. A malformed answer is :class:`PeerFailed`."""
        await self.stamp()
        async with self._pool.acquire() as conn:
            mine_ns = await self.namespaces(conn)
        stats = _stats(branches_compared=0, segments_compared=0, segments_differing=0)
        with _answer_of(peer):
            answer = await self._call(peer, TREE_PATH, {"namespaces": mine_ns}, stats)
            shared = [n for n in fed_namespaces(answer.get("namespaces")) if n in mine_ns]
            theirs_root = _int(answer.get("root"), "root")
            branches = decode_values(answer.get("branches"), BRANCHES, "branches")
        mine = await self.tree(shared)
        stats["branches_compared"] = BRANCHES
        if theirs_root == mine.root():
            async with self._pool.acquire() as conn:
                await self._ack_all_tombstones(conn, peer.pool_id, shared)
            return stats | {"in_sync": True}
        wanted_branches = differing(dict(enumerate(mine.branches())), branches)
        message = {"namespaces": shared, "branches": wanted_branches}
        with _answer_of(peer):
            answer = await self._call(peer, TREE_PATH, message, stats)
            theirs = decode_values(answer.get("segments"), SEGMENTS, "segments")
        diff = differing(mine.segments_of(wanted_branches), theirs)
        stats["segments_compared"] = len(wanted_branches) * (SEGMENTS // BRANCHES)
        stats["segments_differing"] = len(diff)
        diff = diff[: self.settings.reconcile_segments]
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_IN_SEGMENTS_SQL, shared, diff)
        have = {str(row["id"]): _held(row).as_wire() for row in rows}
        with _answer_of(peer):
            answer = await self._call(
                peer, ROWS_PATH, {"namespaces": shared, "segments": diff, "have": have}, stats
            )
            wanted = set(note_ids(answer.get("want"), "want"))
            outcome = await self.accept(peer.pool_id, answer.get("rows"))
        stats["rows_received"] += sum(outcome[k] for k in ("applied", "same", "stale", "skipped"))
        stats["rows_applied"] += outcome["applied"]
        ours = [_version(row) for row in rows if row["id"] in wanted]
        for start in range(0, len(ours), self.settings.batch_rows):
            chunk = ours[start : start + self.settings.batch_rows]
            held = await self._send(peer, chunk, stats)
            async with self._pool.acquire() as conn:
                await self._ack_tombstones(conn, peer.pool_id, chunk, held)
        async with self._pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO note_sync_peers (peer, reconciled_at) VALUES ($1, now()) "
                "ON CONFLICT (peer) DO UPDATE SET reconciled_at = now()",
                peer.pool_id,
            )
        return stats | {"in_sync": False}

    async def _ack_all_tombstones(
        self, conn: asyncpg.Connection, peer_id: str, namespaces: Sequence[str]
    ) -> None:
        """Equal roots: the peer holds every version this pool holds, tombstones included."""
        await conn.execute(
            "INSERT INTO note_tombstone_acks (note_id, peer, acked_at) "
            "SELECT id, $2, now() FROM notes WHERE namespace = ANY($1) "
            "AND deleted_at IS NOT NULL AND row_hash IS NOT NULL ON CONFLICT DO NOTHING",
            list(namespaces),
            peer_id,
        )

    async def replicate(self, note_id: UUID, quorum: int) -> int:
        """Push one note to every peer at once; :class:`QuorumNotReached` unless ``quorum``
        acknowledge it. Returns how many did."""
        await self.stamp()
        async with self._pool.acquire() as conn:
            found = await conn.fetch(_BY_ID_SQL, [note_id], await self.namespaces(conn))
            targets = await peers.list_peers(conn)
        if not found:
            raise InvalidFederationInput(f"No fed: note {note_id} to replicate.", param="note_id")
        version = _version(found[0])
        acked: list[str] = []

        async def push(peer: peers.Peer) -> None:
            try:
                if note_id in await self._send(peer, [version], _stats()):
                    acked.append(peer.pool_id)
            except PeerFailed as exc:
                log.info("note_quorum_peer_failed", peer=peer.pool_id, error=exc.message)

        async with anyio.create_task_group() as group:
            for peer in targets:
                group.start_soon(push, peer)
        if len(acked) < quorum:
            raise QuorumNotReached(
                f"The note was stored here but only {len(acked)} of the {quorum} peers asked "
                f"for acknowledged it ({len(targets)} peers tried); it will reach the others "
                "with the next sync.",
                acknowledged=len(acked),
                quorum=quorum,
            )
        return len(acked)

    async def collect_tombstones(self, now: datetime | None = None) -> int:
        """Purge tombstones every live peer acknowledged and older than the minimum age."""
        moment = now or datetime.now(UTC)
        cutoff = moment - timedelta(seconds=self.settings.tombstone_min_age_s)
        async with self._pool.acquire() as conn:
            count = await conn.fetchval(_COLLECT_SQL, cutoff, self._down_after)
        return int(count)

    # -- inbound -------------------------------------------------------------------------------

    async def authenticate(self, inbound: Inbound) -> tuple[str, SignedRequest]:
        """The peer that signed ``inbound`` (its nonce recorded), or a refusal."""
        async with self._pool.acquire() as conn, conn.transaction():
            return await self._federation.authenticate(conn, inbound)

    async def receive_changes(self, sender: str, message: dict[str, Any]) -> dict[str, Any]:
        """Store a peer's pushed versions; the answer lists the ids this pool now holds."""
        return await self.accept(sender, message.get("rows"))

    async def accept(self, sender: str, data: object) -> dict[str, Any]:
        """Check, embed and store the versions that win; the ids held (that or newer)."""
        versions = parse_rows(data, self.clock)
        await self.stamp()
        if not versions:
            return {"applied": 0, "same": 0, "stale": 0, "skipped": 0, "held": []}
        async with self._pool.acquire() as conn:
            local = set(await self.namespaces(conn))
            current = {
                row["id"]: row
                for row in await conn.fetch(
                    "SELECT id, namespace, hlc, origin_pool, row_hash FROM notes "
                    "WHERE id = ANY($1)",
                    [v.id for v in versions],
                )
            }
        counts = {"applied": 0, "same": 0, "stale": 0, "skipped": 0}
        held: list[str] = []
        todo: list[NoteVersion] = []
        for version in versions:
            row = current.get(version.id)
            if version.namespace not in local or (row and row["namespace"] != version.namespace):
                counts["skipped"] += 1
            elif row and row["row_hash"] is None:
                counts["stale"] += 1  # a local change waiting for its stamp: it comes later
            elif row and bytes(row["row_hash"]) == version.row_hash():
                counts["same"] += 1
                held.append(str(version.id))
            elif row and not version.wins_over(row["hlc"], row["origin_pool"], row["row_hash"]):
                counts["stale"] += 1
                held.append(str(version.id))
            else:
                todo.append(version)
        for version in versions:
            self.clock.observe(version.hlc)
        applied = await self._store(todo)
        counts["applied"] = len(applied)
        counts["stale"] += len(todo) - len(applied)
        held += [str(i) for i in applied]
        if applied:
            log.info("fed_notes_received", peer=sender, applied=len(applied))
        return {**counts, "held": held}

    async def _store(self, versions: Sequence[NoteVersion]) -> list[UUID]:
        """Embed the live versions (in one batch) and store those that still win."""
        live = [v for v in versions if not v.deleted]
        vectors = await self._embedder.embed([f"{v.title}\n{v.body}".strip() for v in live])
        vector_of = {v.id: vectors[i] for i, v in enumerate(live)}
        now = datetime.now(UTC)
        applied: list[UUID] = []
        async with self._pool.acquire() as conn, conn.transaction():
            for version in versions:
                vector = vector_of.get(version.id)
                if version.deleted:
                    digest = hashlib.sha256(f"tombstone:{version.id}".encode()).digest()
                else:
                    digest = content_hash(
                        NewNote(
                            version.namespace,
                            version.body,
                            version.title,
                            version.tags,
                            version.author_agent,
                        )
                    )
                stored = await conn.fetchval(
                    _APPLY_SQL,
                    version.id,
                    version.namespace,
                    version.author_agent,
                    version.title,
                    version.body,
                    list(version.tags),
                    vector,
                    None if vector is None else MODEL_NAME,
                    None if vector is None else MODEL_DIM,
                    digest,
                    version.origin_pool,
                    version.hlc,
                    version.row_hash(),
                    _EPOCH + version.created_ms * _MS,
                    now,
                    now if version.deleted else None,
                )
                if stored is not None:
                    applied.append(stored)
        return applied

    async def answer_tree(self, message: dict[str, Any]) -> dict[str, Any]:
        """A peer asks for this pool's tree: the root and branches, or the segments of some
        branches, over the namespaces both pools have."""
        async with self._pool.acquire() as conn:
            local = await self.namespaces(conn)
        shared = [n for n in fed_namespaces(message.get("namespaces")) if n in local]
        await self.stamp()
        tree = await self.tree(shared)
        if "branches" not in message:
            branches = dict(enumerate(tree.branches()))
            return {"namespaces": shared, "root": str(tree.root()), "branches": encode(branches)}
        wanted = _ints(message.get("branches"), BRANCHES, "branches")
        return {"namespaces": shared, "segments": encode(tree.segments_of(wanted))}

    async def answer_rows(self, message: dict[str, Any]) -> dict[str, Any]:
        """A peer's rows of some segments (id → row_hash, HLC, origin): this pool's versions
        there that the peer lacks or that win, and the ids whose peer version wins."""
        async with self._pool.acquire() as conn:
            local = await self.namespaces(conn)
        shared = [n for n in fed_namespaces(message.get("namespaces")) if n in local]
        segments = _ints(message.get("segments"), SEGMENTS, "segments")
        theirs = parse_have(message.get("have"), MAX_ROWS * 10)
        await self.stamp()
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_IN_SEGMENTS_SQL, shared, segments)
        mine = {row["id"]: (row, _held(row)) for row in rows}
        ship = [_version(r) for i, (r, h) in mine.items() if i not in theirs or h.beats(theirs[i])]
        want = [str(i) for i, h in theirs.items() if i not in mine or h.beats(mine[i][1])]
        return {"rows": [v.as_wire() for v in ship[:MAX_ROWS]], "want": want[:MAX_ROWS]}


@contextmanager
def _answer_of(peer: peers.Peer) -> Iterator[None]:
    """A peer's answer that does not hold what it must is the peer's failure, not ours."""
    try:
        yield
    except InvalidFederationInput as exc:
        raise PeerFailed(
            f"{peer.url} answered with bad data: {exc.message}", code="peer_answer_invalid"
        ) from None


def _int(value: object, param: str) -> int:
    try:
        if isinstance(value, str):
            return int(value)
    except ValueError:
        pass
    raise PeerFailed(f"The peer's {param} is not an integer.", code="peer_answer_invalid")


def _ints(value: object, limit: int, param: str) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) > limit
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < limit for v in value)
    ):
        raise InvalidFederationInput(
            f"{param} must be a list of integers in [0, {limit}).", param=param
        )
    return sorted(set(value))
