-- The $IAMINE ledger (docs/economy.md, economy/): TigerBeetle's model on PostgreSQL. Amounts are
-- integer micro-credits. Accounts keep posted and pending debit/credit totals; transfers are
-- append-only and idempotent by key; each transfer's entries sum to zero per phase (checked at
-- commit below); each entry stores the account's balances after it.

CREATE TABLE ledger_accounts (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('user', 'worker_owner', 'pool_fee',
                                    'pool_treasury', 'trial_grant', 'peer_pool', 'clearing')),
    -- The owner: a user's id for user and worker_owner, the peer's name for peer_pool, '' for
    -- the pool's own accounts. No foreign key: the books outlive a deleted user.
    ref             text        NOT NULL DEFAULT '',
    debits_posted   bigint      NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_posted  bigint      NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    debits_pending  bigint      NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    credits_pending bigint      NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, ref),
    CHECK ((kind IN ('user', 'worker_owner', 'peer_pool')) = (ref <> '')),
    -- Clearing only ever carries holds (pending); nothing is posted to it.
    CHECK (kind <> 'clearing' OR (debits_posted = 0 AND credits_posted = 0))
);

INSERT INTO ledger_accounts (kind) VALUES ('clearing'), ('pool_fee'), ('pool_treasury'),
    ('trial_grant');

CREATE TABLE ledger_transfers (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key         text        NOT NULL UNIQUE CHECK (key ~ '^[A-Za-z0-9_.:@-]{1,200}$'),
    kind        text        NOT NULL CHECK (kind IN ('hold', 'post', 'void', 'expire', 'grant',
                                'mint', 'correction', 'reversal')),
    job_id      text,
    -- The hold a post, void or expire resolves: at most one resolution per hold.
    pending_id  bigint      UNIQUE REFERENCES ledger_transfers (id),
    -- The transfer a reversal undoes: at most one reversal per transfer.
    reverses_id bigint      UNIQUE REFERENCES ledger_transfers (id),
    amount      bigint      NOT NULL CHECK (amount >= 0),
    funded      boolean,
    expires_at  timestamptz,
    -- The request, compared when the same key comes again (a different one is a conflict).
    request     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    memo        text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL,
    CHECK ((kind = 'hold') = (funded IS NOT NULL AND expires_at IS NOT NULL)),
    CHECK ((kind IN ('post', 'void', 'expire')) = (pending_id IS NOT NULL)),
    CHECK ((kind = 'reversal') = (reverses_id IS NOT NULL)),
    CHECK ((kind IN ('hold', 'post', 'void', 'expire')) = (job_id IS NOT NULL))
);

-- No job is held or charged twice, whatever keys a caller invents.
CREATE UNIQUE INDEX ledger_transfers_job_hold_idx ON ledger_transfers (job_id) WHERE kind = 'hold';
CREATE UNIQUE INDEX ledger_transfers_job_post_idx ON ledger_transfers (job_id) WHERE kind = 'post';

-- The entries (the issue's revenue_ledger). `amount` is negative only for a pending release.
CREATE TABLE revenue_ledger (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transfer_id   bigint      NOT NULL REFERENCES ledger_transfers (id),
    account_id    bigint      NOT NULL REFERENCES ledger_accounts (id),
    side          text        NOT NULL CHECK (side IN ('debit', 'credit')),
    phase         text        NOT NULL CHECK (phase IN ('pending', 'posted')),
    amount        bigint      NOT NULL CHECK (amount <> 0 AND (amount > 0 OR phase = 'pending')),
    balance_after bigint      NOT NULL,
    pending_after bigint      NOT NULL,
    created_at    timestamptz NOT NULL
);

CREATE INDEX revenue_ledger_account_idx ON revenue_ledger (account_id, id);
CREATE INDEX revenue_ledger_transfer_idx ON revenue_ledger (transfer_id);

-- Holds not yet posted, voided or expired: an index of the ledger (derivable, checked by
-- verify), so finding a user's expired holds never scans their history.
CREATE TABLE ledger_open_holds (
    transfer_id bigint      PRIMARY KEY REFERENCES ledger_transfers (id),
    account_id  bigint      NOT NULL REFERENCES ledger_accounts (id),
    amount      bigint      NOT NULL CHECK (amount >= 0),
    expires_at  timestamptz NOT NULL
);

CREATE INDEX ledger_open_holds_account_idx ON ledger_open_holds (account_id, expires_at);
CREATE INDEX ledger_open_holds_expiry_idx ON ledger_open_holds (expires_at);

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: a correction is a new reversing transfer', TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER ledger_transfers_append_only BEFORE UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_transfers_no_truncate BEFORE TRUNCATE ON ledger_transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER revenue_ledger_append_only BEFORE UPDATE OR DELETE ON revenue_ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER revenue_ledger_no_truncate BEFORE TRUNCATE ON revenue_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

-- Double entry in the database too: at commit, each transfer's entries sum to zero per phase.
CREATE FUNCTION ledger_transfer_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM revenue_ledger WHERE transfer_id = NEW.transfer_id GROUP BY phase
        HAVING sum(CASE side WHEN 'credit' THEN amount ELSE -amount END) <> 0
    ) THEN
        RAISE EXCEPTION 'ledger transfer % does not sum to zero', NEW.transfer_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER revenue_ledger_balanced AFTER INSERT ON revenue_ledger
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_transfer_balanced();
