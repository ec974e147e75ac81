-- Worker identity and trust (issue 12, docs/trust.md). A worker *is* the record behind its token:
-- name, owner, allowed models, hardware and slot cap are written by the admin or the owner, and a
-- worker's `hello` may only narrow them. Shares, stats, exclusions, trust and earnings key on the
-- record's id, never on a name the worker chose for itself.

CREATE TABLE workers (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name             text        NOT NULL UNIQUE
                                 CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$'),
    owner_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Models the worker may serve; empty: any model the pool's catalog allows.
    models           text[]      NOT NULL DEFAULT '{}',
    hardware         text        NOT NULL CHECK (hardware IN ('gpu', 'cpu')),
    max_slots        integer     NOT NULL CHECK (max_slots BETWEEN 1 AND 1024),
    -- 0 new, 1 passed the checker's canaries, 2 established, 3 granted by the admin.
    trust            smallint    NOT NULL DEFAULT 0 CHECK (trust BETWEEN 0 AND 3),
    trust_reason     text        NOT NULL DEFAULT 'registered',
    trust_changed_at timestamptz NOT NULL DEFAULT now(),
    -- Jobs whose dispute window closed without an upheld dispute (settlement counts them).
    verified_jobs    bigint      NOT NULL DEFAULT 0 CHECK (verified_jobs >= 0),
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX workers_owner_idx ON workers (owner_id);

-- Every change of a worker's trust, with why (the admin's history; RED reads it too).
CREATE TABLE worker_trust_events (
    id         bigserial   PRIMARY KEY,
    worker_id  uuid        NOT NULL REFERENCES workers (id) ON DELETE CASCADE,
    from_level smallint    NOT NULL,
    to_level   smallint    NOT NULL,
    reason     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX worker_trust_events_worker_idx ON worker_trust_events (worker_id, id DESC);

-- A user may ask for more trust than the pool's minimum for their own chats, never less.
ALTER TABLE user_preferences
    ADD COLUMN min_trust smallint NOT NULL DEFAULT 0 CHECK (min_trust BETWEEN 0 AND 3);

-- A worker-scope token belongs to one worker record (its owner is the token's user).
ALTER TABLE tokens ADD COLUMN worker_id uuid REFERENCES workers (id) ON DELETE CASCADE;

CREATE INDEX tokens_worker_id_idx ON tokens (worker_id) WHERE worker_id IS NOT NULL;

-- Worker tokens issued before records existed get one record each, as the least they could be:
-- a CPU worker of 4 slots at trust 0, named after the token's public prefix. The admin adjusts
-- them (`iamine workers update`).
WITH made AS (
    INSERT INTO workers (name, owner_id, hardware, max_slots, trust_reason)
    SELECT 'w-' || substr(regexp_replace(t.prefix, '[^A-Za-z0-9]', '', 'g'), 1, 40), t.user_id,
           'cpu', 4, 'token issued before worker records'
    FROM tokens t
    WHERE 'worker' = ANY (t.scopes) AND t.user_id IS NOT NULL
    RETURNING id, name
)
UPDATE tokens t SET worker_id = made.id
FROM made
WHERE made.name = 'w-' || substr(regexp_replace(t.prefix, '[^A-Za-z0-9]', '', 'g'), 1, 40);

-- From now on a token with the worker scope must name its worker, and only such a token may.
ALTER TABLE tokens ADD CONSTRAINT tokens_worker_scope_has_record
    CHECK (('worker' = ANY (scopes)) = (worker_id IS NOT NULL));

-- The worker's owner is the token's user: a token cannot speak for someone else's worker.
CREATE FUNCTION tokens_worker_owned_by_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.worker_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM workers WHERE id = NEW.worker_id AND owner_id = NEW.user_id
    ) THEN
        RAISE EXCEPTION 'a worker token must belong to the worker''s owner'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER tokens_worker_owned_by_user
    BEFORE INSERT OR UPDATE OF worker_id, user_id ON tokens
    FOR EACH ROW EXECUTE FUNCTION tokens_worker_owned_by_user();
