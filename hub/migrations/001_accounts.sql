-- Accounts and bearer tokens. pgvector is enabled here so every later migration can use it.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE users (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text        NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

-- A token is stored as the SHA-256 of its full text; `prefix` is the public part used to find the
-- row. The admin token of the pool has no user and the `admin` scope.
CREATE TABLE tokens (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid        REFERENCES users (id) ON DELETE CASCADE,
    prefix       text        NOT NULL UNIQUE,
    hash         bytea       NOT NULL CHECK (octet_length(hash) = 32),
    name         text        NOT NULL DEFAULT '',
    scopes       text[]      NOT NULL CHECK (scopes <@ ARRAY['user', 'worker', 'admin']::text[]
                                             AND cardinality(scopes) > 0),
    is_pool_admin boolean    NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    CHECK (user_id IS NOT NULL OR scopes = ARRAY['admin']::text[])
);

CREATE INDEX tokens_user_id_idx ON tokens (user_id);
