-- Shared namespaces (`pool:`, `fed:`) become explicit and membership-based (issue 11, item 3):
-- the admin creates them (or a user the admin allowed), a user reads one only once subscribed
-- (by the admin, or by themself when the namespace is open), and a first note no longer creates
-- a namespace. docs/memory.md describes the model.

-- `owner_id` stays the namespace's owning user (NULL: the admin's). `open`: any user may
-- subscribe themself. `created_by_admin`: made by the admin, not by a user with the grant.
ALTER TABLE note_namespaces
    ADD COLUMN open             boolean NOT NULL DEFAULT false,
    ADD COLUMN created_by_admin boolean NOT NULL DEFAULT false;

-- Users the admin allowed to create shared namespaces.
CREATE TABLE namespace_creators (
    user_id    uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    granted_at timestamptz NOT NULL DEFAULT now()
);

-- Who reads (and, per the write rule, writes) each shared namespace.
CREATE TABLE namespace_subscriptions (
    namespace     text        NOT NULL REFERENCES note_namespaces (namespace) ON DELETE CASCADE,
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    by_admin      boolean     NOT NULL,
    subscribed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, user_id)
);

CREATE INDEX namespace_subscriptions_user_idx ON namespace_subscriptions (user_id, namespace);

-- Namespaces made before this migration were made by a first note. They stay, closed, with their
-- owner; the owner and everyone who wrote there stay subscribed, so nobody loses sight of what
-- they wrote. Nobody else reads them until the admin subscribes them.
INSERT INTO note_namespaces (namespace, write_rule)
SELECT DISTINCT namespace, 'members' FROM notes WHERE owner_id IS NULL
ON CONFLICT (namespace) DO NOTHING;

INSERT INTO namespace_subscriptions (namespace, user_id, by_admin)
SELECT namespace, owner_id, false FROM note_namespaces WHERE owner_id IS NOT NULL
UNION
SELECT namespace, author_id, false FROM notes WHERE owner_id IS NULL AND author_id IS NOT NULL
ON CONFLICT (namespace, user_id) DO NOTHING;
