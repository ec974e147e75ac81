-- The admin's blacklist (issue 14): workers, users and peer pools the pool refuses. A
-- blacklisted worker record cannot open a link (its tokens are revoked too); a blacklisted user
-- is disabled; a blacklisted peer is removed and its hello refused. `subject` is the record's
-- id (worker, user) or the pool id (peer); `label` the name it had, for the admin's list.
CREATE TABLE blacklist (
    kind       text        NOT NULL CHECK (kind IN ('worker', 'user', 'peer')),
    subject    text        NOT NULL CHECK (subject <> '' AND length(subject) <= 200),
    label      text        NOT NULL CHECK (length(label) <= 200),
    reason     text        NOT NULL CHECK (reason <> '' AND length(reason) <= 500),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, subject)
);
