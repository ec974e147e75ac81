-- Federation gossip (issue 13, docs/federation.md "Gossip"): this pool's view of every peer's
-- liveness, the pools learned through gossip that wait for admission, what each peer serves,
-- and a log of every exchange.

-- Liveness of each admitted peer as this pool sees it. `heartbeat` is the highest counter seen
-- for the peer's current `incarnation` (its start time), directly or relayed by another peer;
-- `heartbeat_at` is when this pool saw it rise. `suspected_by` lists the pools that suspect the
-- peer: this one, and each peer that said so itself in a signed gossip message. `dead` once
-- the suspicion reached the quorum; a higher heartbeat clears both.
CREATE TABLE federation_state (
    pool_id      text        PRIMARY KEY REFERENCES peers (pool_id) ON DELETE CASCADE,
    incarnation  bigint      NOT NULL DEFAULT 0 CHECK (incarnation >= 0),
    heartbeat    bigint      NOT NULL DEFAULT 0 CHECK (heartbeat >= 0),
    heartbeat_at timestamptz,
    suspected_by text[]      NOT NULL DEFAULT '{}',
    status       text        NOT NULL DEFAULT 'alive' CHECK (status IN ('alive', 'suspect', 'dead')),
    status_at    timestamptz
);

-- A pool that admitted peers named in gossip but this pool has not admitted: admitted by the
-- admin, or by `admit_quorum` admitted peers vouching for it (each said so itself, signed).
-- The pool id is the fingerprint of the key (checked before the row is written).
CREATE TABLE peer_candidates (
    pool_id       text        PRIMARY KEY CHECK (pool_id ~ '^iam1[a-z2-7]{52}$'),
    public_key    bytea       NOT NULL CHECK (length(public_key) = 32),
    url           text        NOT NULL CHECK (url ~ '^https?://[^/?#@]+$'),
    vouched_by    text[]      NOT NULL DEFAULT '{}',
    first_seen_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL
);

-- What each peer said it serves in its last gossip (claims; the router ranks peers by the
-- speed this pool measures, kept in memory). Read by the CLI and the admin API.
CREATE TABLE peer_capabilities (
    pool_id      text        NOT NULL REFERENCES peers (pool_id) ON DELETE CASCADE,
    model        text        NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    free_slots   integer     NOT NULL CHECK (free_slots >= 0),
    price_per_1k bigint      NOT NULL CHECK (price_per_1k >= 0),
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (pool_id, model)
);

-- One row per gossip exchange, either direction, kept `gossip_log_keep_s`.
CREATE TABLE gossip_log (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             timestamptz NOT NULL,
    peer           text        NOT NULL,
    direction      text        NOT NULL CHECK (direction IN ('out', 'in')),
    ok             boolean     NOT NULL,
    bytes_sent     integer     NOT NULL DEFAULT 0 CHECK (bytes_sent >= 0),
    bytes_received integer     NOT NULL DEFAULT 0 CHECK (bytes_received >= 0),
    detail         jsonb       NOT NULL DEFAULT '{}',
    error          text
);
CREATE INDEX gossip_log_at_idx ON gossip_log (at);
CREATE INDEX gossip_log_peer_idx ON gossip_log (peer, at DESC);
