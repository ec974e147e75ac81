-- Federation, first slice (issue 13, docs/federation.md): the pools this one is peered with,
-- the one-time invites it minted, and the nonces of the signed requests it accepted (a replay
-- is refused while its signature could still pass the age check). Gossip, capabilities and
-- anti-entropy bring their own tables later (federation_state, capabilities, gossip_log).

-- An admitted peer: its key (the pool id is its fingerprint), where to reach it, who admitted
-- it, and the per-peer backoff of this pool's calls to it.
CREATE TABLE peers (
    pool_id              text        PRIMARY KEY CHECK (pool_id ~ '^iam1[a-z2-7]{52}$'),
    public_key           bytea       NOT NULL UNIQUE CHECK (length(public_key) = 32),
    url                  text        NOT NULL CHECK (url ~ '^https?://[^/?#@]+$'),
    admitted_at          timestamptz NOT NULL,
    admitted_by          text        NOT NULL CHECK (admitted_by <> ''),
    last_seen_at         timestamptz,
    last_ok_at           timestamptz,
    consecutive_failures integer     NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    next_try_at          timestamptz,
    last_error           text
);

-- Only the sha256 of an invite's secret is kept. `pool_id` is this pool's id when the invite
-- was minted: a new key (a new pool id) voids every older invite. `for_pool_id`, when set, is
-- the only pool that may use it.
CREATE TABLE federation_invites (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    secret_hash bytea       NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    pool_id     text        NOT NULL CHECK (pool_id ~ '^iam1[a-z2-7]{52}$'),
    for_pool_id text        CHECK (for_pool_id ~ '^iam1[a-z2-7]{52}$'),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL CHECK (expires_at > created_at),
    used_at     timestamptz,
    used_by     text,
    CHECK ((used_at IS NULL) = (used_by IS NULL))
);

CREATE TABLE federation_nonces (
    pool_id    text        NOT NULL,
    nonce      text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (pool_id, nonce)
);
CREATE INDEX federation_nonces_expires_idx ON federation_nonces (expires_at);
