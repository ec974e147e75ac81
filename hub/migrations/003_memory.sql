-- Conversation memory: the user's data key wrapped once per token, L1 raw messages with a TTL,
-- L2 turns as Fernet ciphertext, and each user's memory preferences. docs/privacy.md says what
-- each table reveals to whoever reads the database.

-- A generation is one data key of a user. A new one starts only when no live token of the user
-- holds a wrap (first token, or every wrapped token revoked or expired); older generations'
-- ciphertexts are then unreadable by design.
CREATE TABLE memory_key_generations (
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    generation integer     NOT NULL CHECK (generation > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, generation)
);

-- Lets a wrap name its token and user together, so a wrap can never sit on another user's token.
ALTER TABLE tokens ADD CONSTRAINT tokens_id_user_id_key UNIQUE (id, user_id);

-- The data key, AES-GCM-wrapped under a key derived from one token (memory/crypto.py). Useless
-- without that token's text, which the database never holds.
CREATE TABLE memory_key_wraps (
    token_id       uuid        PRIMARY KEY,
    user_id        uuid        NOT NULL,
    generation     integer     NOT NULL,
    salt           bytea       NOT NULL,
    wrapped        bytea       NOT NULL,
    key_version    integer     NOT NULL CHECK (key_version > 0),
    kdf            text        NOT NULL,
    format_version smallint    NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (token_id, user_id) REFERENCES tokens (id, user_id) ON DELETE CASCADE,
    FOREIGN KEY (user_id, generation) REFERENCES memory_key_generations ON DELETE CASCADE
);

CREATE INDEX memory_key_wraps_user_idx ON memory_key_wraps (user_id);

-- Revoking a token deletes its wrap, whichever path revoked it (API, CLI, admin, rotation).
CREATE FUNCTION memory_drop_revoked_wrap() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM memory_key_wraps WHERE token_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER tokens_revoked_drop_wrap
    AFTER UPDATE OF revoked_at ON tokens
    FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION memory_drop_revoked_wrap();

-- L1: raw messages, plaintext by design, kept until expires_at and then purged.
CREATE TABLE l1_messages (
    id              bigserial   PRIMARY KEY,
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    conversation_id text        NOT NULL,
    role            text        NOT NULL,
    message         jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);

CREATE INDEX l1_messages_expires_idx ON l1_messages (expires_at);
CREATE INDEX l1_messages_user_idx ON l1_messages (user_id, conversation_id, id);

-- L2: `last_seq` numbers a conversation's turns; turns up to `compacted_through` are covered by
-- the newest summary.
ALTER TABLE conversations
    ADD COLUMN last_seq          integer NOT NULL DEFAULT 0,
    ADD COLUMN compacted_through integer NOT NULL DEFAULT 0;

-- One row per exchange ('turn') or per compaction ('summary'); the text is only in `ciphertext`.
-- `tokens` is an estimate of the plaintext's size, which the ciphertext's length reveals anyway.
CREATE TABLE conversation_turns (
    user_id         uuid        NOT NULL,
    conversation_id text        NOT NULL,
    seq             integer     NOT NULL CHECK (seq > 0),
    kind            text        NOT NULL CHECK (kind IN ('turn', 'summary')),
    generation      integer     NOT NULL,
    ciphertext      bytea       NOT NULL,
    tokens          integer     NOT NULL CHECK (tokens >= 0),
    covers_through  integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, conversation_id, seq),
    FOREIGN KEY (user_id, conversation_id) REFERENCES conversations (user_id, id) ON DELETE CASCADE,
    FOREIGN KEY (user_id, generation) REFERENCES memory_key_generations ON DELETE CASCADE,
    CHECK ((kind = 'summary') = (covers_through IS NOT NULL))
);

-- Per-user opt-in (not secret): with `enabled` false nothing of L2 is written.
CREATE TABLE memory_settings (
    user_id    uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    enabled    boolean     NOT NULL DEFAULT false,
    compaction boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);
