-- Routing policy (one validated JSON document per key) and the record of excluded workers.
CREATE TABLE pool_config (
    key        text        PRIMARY KEY,
    value      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE worker_exclusions (
    id          bigserial   PRIMARY KEY,
    worker_id   text        NOT NULL,
    worker_name text        NOT NULL,
    owner_id    uuid        REFERENCES users (id) ON DELETE SET NULL,
    reason      text        NOT NULL,
    detail      text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX worker_exclusions_recent_idx ON worker_exclusions (created_at DESC);
