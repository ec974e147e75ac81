-- Settlement, disputes and slashing (issue 12, docs/economy.md). A job's worker share is first
-- credited to the worker's unsettled earnings (`worker_earnings`, ref = the worker record's id);
-- a settlement run moves it to the owner (`settle`) once the dispute window has closed with no
-- open or upheld dispute. An upheld dispute or a slash reverses unsettled posts (users refunded,
-- key `refund:<job>`) and a slash moves a penalty from the owner to the pool treasury (`slash`).

ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_accounts_kind_check;
ALTER TABLE ledger_accounts ADD CONSTRAINT ledger_accounts_kind_check
    CHECK (kind IN ('user', 'worker_owner', 'worker_earnings', 'pool_fee', 'pool_treasury',
                    'trial_grant', 'peer_pool', 'clearing'));
ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_accounts_check;
ALTER TABLE ledger_accounts ADD CONSTRAINT ledger_accounts_owned_has_ref
    CHECK ((kind IN ('user', 'worker_owner', 'worker_earnings', 'peer_pool')) = (ref <> ''));

ALTER TABLE ledger_transfers DROP CONSTRAINT ledger_transfers_kind_check;
ALTER TABLE ledger_transfers ADD CONSTRAINT ledger_transfers_kind_check
    CHECK (kind IN ('hold', 'post', 'void', 'expire', 'grant', 'mint', 'correction', 'reversal',
                    'settle', 'slash'));
ALTER TABLE ledger_transfers DROP CONSTRAINT ledger_transfers_check3;
ALTER TABLE ledger_transfers ADD CONSTRAINT ledger_transfers_job_kinds_have_job
    CHECK ((kind IN ('hold', 'post', 'void', 'expire', 'settle')) = (job_id IS NOT NULL));

-- No job's earning is settled twice, whatever keys a caller invents.
CREATE UNIQUE INDEX ledger_transfers_job_settle_idx ON ledger_transfers (job_id)
    WHERE kind = 'settle';
-- Settlement looks for posts with worker earnings older than the dispute window.
CREATE INDEX ledger_transfers_post_time_idx ON ledger_transfers (created_at, id)
    WHERE kind = 'post' AND request ? 'worker_id';

-- A closed settlement period: the entries after `after_entry_id` up to `through_entry_id`.
CREATE TABLE ledger_periods (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    after_entry_id   bigint      NOT NULL CHECK (after_entry_id >= 0),
    through_entry_id bigint      NOT NULL,
    settled_jobs     integer     NOT NULL CHECK (settled_jobs >= 0),
    settled_amount   bigint      NOT NULL CHECK (settled_amount >= 0),
    closed_at        timestamptz NOT NULL,
    CHECK (through_entry_id > after_entry_id)
);

-- Per account and period: posted balance before, posted debits and credits in it, balance after.
-- No foreign key to ledger_accounts (accounts are never deleted): its check would take a key
-- share lock on every account of the period out of id order, deadlocking with postings.
CREATE TABLE ledger_statements (
    period_id  bigint NOT NULL REFERENCES ledger_periods (id),
    account_id bigint NOT NULL,
    opening    bigint NOT NULL,
    debits     bigint NOT NULL CHECK (debits >= 0),
    credits    bigint NOT NULL CHECK (credits >= 0),
    closing    bigint NOT NULL,
    PRIMARY KEY (period_id, account_id),
    CHECK (closing = opening + credits - debits)
);

CREATE INDEX ledger_statements_account_idx ON ledger_statements (account_id, period_id);

-- A worker's punishment: its unsettled earnings forfeited (each post reversed, users refunded)
-- and a penalty from its owner to the pool treasury. Idempotent by the caller's key.
CREATE TABLE slashing_events (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key                 text        NOT NULL UNIQUE CHECK (key ~ '^[A-Za-z0-9_.:@-]{1,190}$'),
    worker_id           uuid        NOT NULL,
    owner_id            uuid        NOT NULL,
    reason              text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    evidence            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    amount              bigint      NOT NULL CHECK (amount >= 0),
    forfeited           bigint      NOT NULL CHECK (forfeited >= 0),
    penalty_transfer_id bigint      REFERENCES ledger_transfers (id),
    reversal_ids        bigint[]    NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL,
    CHECK ((amount > 0) = (penalty_transfer_id IS NOT NULL))
);

CREATE INDEX slashing_events_worker_idx ON slashing_events (worker_id, id DESC);

CREATE TRIGGER slashing_events_append_only BEFORE UPDATE OR DELETE ON slashing_events
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

-- A user's (or the admin's) claim that a charged job was bad. One per job; while open the job's
-- earning is not settled; upheld: the post is reversed and the worker slashed; rejected: the
-- earning settles normally.
CREATE TABLE disputes (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id            text        NOT NULL UNIQUE,
    post_id           bigint      NOT NULL UNIQUE REFERENCES ledger_transfers (id),
    user_id           uuid        NOT NULL,
    worker_id         uuid        NOT NULL,
    owner_id          uuid        NOT NULL,
    opened_by         text        NOT NULL CHECK (opened_by IN ('user', 'admin')),
    reason            text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 2000),
    status            text        NOT NULL DEFAULT 'open'
                                  CHECK (status IN ('open', 'upheld', 'rejected')),
    note              text        NOT NULL DEFAULT '' CHECK (length(note) <= 2000),
    slashing_event_id bigint      REFERENCES slashing_events (id),
    created_at        timestamptz NOT NULL,
    -- The database's time (not the ledger clock), comparable with worker_trust_events.
    resolved_at       timestamptz,
    CHECK ((status = 'open') = (resolved_at IS NULL)),
    CHECK (status = 'upheld' OR slashing_event_id IS NULL)
);

CREATE INDEX disputes_user_idx ON disputes (user_id, id DESC);
CREATE INDEX disputes_status_idx ON disputes (status, id DESC);
CREATE INDEX disputes_upheld_worker_idx ON disputes (worker_id, resolved_at)
    WHERE status = 'upheld';
