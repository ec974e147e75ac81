-- Anti-entropy of `fed:` notes (issue 13 item 4, docs/federation.md "Anti-entropy of fed:
-- notes"). Only rows of `fed:` namespaces take part; `user:` and `pool:` rows never leave.

-- `row_hash`: sha256 of the note version's canonical JSON (RFC 8785, federation/tictac.py);
-- NULL while a local change waits to be stamped (with an HLC and this pool as its origin) by
-- federation/notes_sync.py, which stamps every pending row before it syncs: that is also how
-- the `fed:` rows written before this migration get their first hash.
-- `hlc`: the version's hybrid logical clock, physical milliseconds << 16 | logical counter.
-- `sync_seq`: when this database last changed the row (stamp or accepted row), for the per-peer
-- watermarks of the push path.
-- `segment` and `leaf` make the tictac tree computable in SQL: the segment is the first 10 bits
-- of sha256(id) (never the id itself: a UUIDv7 starts with its time), the leaf the first 64
-- bits of sha256(id ‖ row_hash) as a signed bigint, XORed per segment with bit_xor.
CREATE SEQUENCE note_sync_seq;

ALTER TABLE notes
    ADD COLUMN row_hash bytea  CHECK (octet_length(row_hash) = 32),
    ADD COLUMN hlc      bigint CHECK (hlc > 0),
    ADD COLUMN sync_seq bigint,
    ADD COLUMN segment  smallint GENERATED ALWAYS AS (
        (get_byte(sha256(uuid_send(id)), 0) << 2) | (get_byte(sha256(uuid_send(id)), 1) >> 6)
    ) STORED,
    ADD COLUMN leaf     bigint GENERATED ALWAYS AS (
        ('x' || encode(substring(sha256(uuid_send(id) || row_hash) FROM 1 FOR 8), 'hex'))
            ::bit(64)::bigint
    ) STORED;

CREATE INDEX notes_fed_seq_idx ON notes (sync_seq) WHERE namespace LIKE 'fed:%';
CREATE INDEX notes_fed_segment_idx ON notes (segment) WHERE namespace LIKE 'fed:%';
CREATE INDEX notes_fed_pending_idx ON notes (id) WHERE namespace LIKE 'fed:%' AND row_hash IS NULL;

-- Per peer: the highest `sync_seq` it acknowledged (pushes send only what follows).
CREATE TABLE note_sync_peers (
    peer          text        PRIMARY KEY REFERENCES peers (pool_id) ON DELETE CASCADE,
    pushed_seq    bigint      NOT NULL DEFAULT 0 CHECK (pushed_seq >= 0),
    pushed_at     timestamptz,
    reconciled_at timestamptz
);

-- The peers known to hold a tombstone (or something newer): once every live peer does, and the
-- tombstone is old enough, it is purged.
CREATE TABLE note_tombstone_acks (
    note_id  uuid        NOT NULL REFERENCES notes (id) ON DELETE CASCADE,
    peer     text        NOT NULL REFERENCES peers (pool_id) ON DELETE CASCADE,
    acked_at timestamptz NOT NULL,
    PRIMARY KEY (note_id, peer)
);
