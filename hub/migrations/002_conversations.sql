-- Conversation ids a user has used (from X-Conversation-Id or created by the hub). The id is the
-- client's string, unique per user only, so one user's id never reveals or collides with another's.
CREATE TABLE conversations (
    user_id        uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    id             text        NOT NULL CHECK (id ~ '^[A-Za-z0-9._:-]{1,128}$'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_active_at timestamptz NOT NULL DEFAULT now(),
    exchanges      integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, id)
);

CREATE INDEX conversations_recent_idx ON conversations (user_id, last_active_at DESC);
