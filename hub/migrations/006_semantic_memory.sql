-- Semantic memory (docs/memory.md, docs/privacy.md): L3 personal facts, encrypted under the
-- user's data key and searched by embedding, and L4 agent notes in namespaces, searched by
-- embedding and full text. Every vector records the model and dimension that made it.

-- L3: one row per fact version. A fact is current while valid_to is NULL (or in the future); a
-- newer contradicting fact closes it (valid_to, superseded_by) and the old row stays as history.
-- The text is only in `ciphertext`; `embedding`, `key` and `tags` are plaintext so SQL can search.
CREATE TABLE facts (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id             uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    generation          integer     NOT NULL,
    ciphertext          bytea       NOT NULL,
    embedding           vector(384) NOT NULL,
    embedding_model     text        NOT NULL,
    embedding_dim       smallint    NOT NULL CHECK (embedding_dim > 0),
    key                 text        CHECK (key ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    tags                text[]      NOT NULL DEFAULT '{}',
    confidence          real        NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    source              text        NOT NULL CHECK (source IN ('explicit', 'extracted')),
    source_conversation text        CHECK (source_conversation ~ '^[A-Za-z0-9._:-]{1,128}$'),
    valid_from          timestamptz NOT NULL,
    valid_to            timestamptz,
    superseded_by       uuid        REFERENCES facts (id) ON DELETE SET NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    -- Crypto-shredding deletes the user's key generations, and with them these rows.
    FOREIGN KEY (user_id, generation) REFERENCES memory_key_generations ON DELETE CASCADE,
    CHECK (valid_to IS NULL OR valid_to >= valid_from)
);

CREATE INDEX facts_embedding_idx ON facts USING hnsw (embedding vector_cosine_ops);
CREATE INDEX facts_user_idx ON facts (user_id, created_at DESC);
CREATE INDEX facts_user_key_idx ON facts (user_id, key) WHERE key IS NOT NULL AND valid_to IS NULL;

-- Write rules of shared namespaces (`pool:` and `fed:`), made by the first note written there.
CREATE TABLE note_namespaces (
    namespace  text        PRIMARY KEY CHECK (namespace ~ '^(pool|fed):[a-z0-9][a-z0-9._-]{0,62}$'),
    owner_id   uuid        REFERENCES users (id) ON DELETE SET NULL,
    write_rule text        NOT NULL CHECK (write_rule IN ('members', 'owner')),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- L4: agent notes, plaintext (full-text search needs the words; docs/privacy.md says so).
-- Rows that may cross pools get a time-ordered id (UUIDv7), a content hash, an origin pool
-- (NULL: this pool; federation fills it) and a logical clock; deletes are tombstones that keep
-- the id, the namespace and the clock and drop the content.
CREATE TABLE notes (
    id              uuid        PRIMARY KEY,
    namespace       text        NOT NULL
                    CHECK (namespace ~ '^(user:[0-9a-f-]{36}|(pool|fed):[a-z0-9][a-z0-9._-]{0,62})$'),
    owner_id        uuid        REFERENCES users (id) ON DELETE CASCADE,
    author_id       uuid        REFERENCES users (id) ON DELETE SET NULL,
    author_agent    text        NOT NULL DEFAULT '',
    title           text        NOT NULL DEFAULT '',
    body            text        NOT NULL DEFAULT '',
    tags            text[]      NOT NULL DEFAULT '{}',
    embedding       vector(384),
    embedding_model text,
    embedding_dim   smallint    CHECK (embedding_dim > 0),
    tsv             tsvector    GENERATED ALWAYS AS (
                        setweight(to_tsvector('english'::regconfig, title), 'A')
                        || setweight(to_tsvector('english'::regconfig, body), 'B')
                    ) STORED,
    content_hash    bytea       NOT NULL CHECK (octet_length(content_hash) = 32),
    origin_pool     text,
    clock           bigint      NOT NULL DEFAULT 1 CHECK (clock > 0),
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz,
    -- A private namespace is its owner's: `user:<owner_id>`, and only then is owner_id set.
    CHECK ((namespace LIKE 'user:%') = (owner_id IS NOT NULL)),
    CHECK (owner_id IS NULL OR namespace = 'user:' || owner_id::text),
    CHECK ((deleted_at IS NULL) = (embedding IS NOT NULL))
);

CREATE INDEX notes_embedding_idx ON notes USING hnsw (embedding vector_cosine_ops);
CREATE INDEX notes_tsv_idx ON notes USING gin (tsv);
CREATE INDEX notes_tags_idx ON notes USING gin (tags);
CREATE INDEX notes_namespace_idx ON notes (namespace, created_at DESC);
CREATE INDEX notes_owner_idx ON notes (owner_id) WHERE owner_id IS NOT NULL;
