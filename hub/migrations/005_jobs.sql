-- Pool intelligence on a schedule (docs/jobs.md, docs/agents.md): the record of every scheduled
-- job run, the checker's worker benchmarks, the RED daemon's reports and its versioned playbook,
-- and each user's agent preferences (auto-review).

-- One row per finished run, whichever way it was started (schedule, admin API, CLI).
CREATE TABLE job_runs (
    id         bigserial   PRIMARY KEY,
    job        text        NOT NULL,
    trigger    text        NOT NULL CHECK (trigger IN ('schedule', 'api', 'cli')),
    started_at timestamptz NOT NULL,
    ended_at   timestamptz NOT NULL,
    outcome    text        NOT NULL CHECK (outcome IN ('ok', 'error', 'skipped')),
    summary    text        NOT NULL DEFAULT '',
    detail     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CHECK (ended_at >= started_at)
);

CREATE INDEX job_runs_job_idx ON job_runs (job, started_at DESC);

-- One row per check of one model on one worker. Speeds are NULL when the benchmark produced no
-- usable measurement; tools_ok is NULL when the worker does not announce tool support.
CREATE TABLE worker_benchmarks (
    id                bigserial   PRIMARY KEY,
    worker_id         text        NOT NULL,
    worker_name       text        NOT NULL,
    owner_id          uuid        REFERENCES users (id) ON DELETE SET NULL,
    hardware          text        NOT NULL,
    model             text        NOT NULL,
    prompt_tokens     integer,
    completion_tokens integer,
    prompt_tps        double precision,
    generation_tps    double precision,
    ttft_ms           double precision,
    known_answer_ok   boolean,
    tools_ok          boolean,
    passed            boolean     NOT NULL,
    error             text,
    raw               jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX worker_benchmarks_worker_idx ON worker_benchmarks (worker_id, created_at DESC);
CREATE INDEX worker_benchmarks_recent_idx ON worker_benchmarks (created_at DESC);

-- One row per RED run: the state it saw, the model's raw plan, each action's verdict.
CREATE TABLE red_reports (
    id         bigserial   PRIMARY KEY,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz NOT NULL,
    mode       text        NOT NULL CHECK (mode IN ('dry_run', 'apply')),
    model      text        NOT NULL,
    outcome    text        NOT NULL CHECK (outcome IN ('ok', 'error', 'skipped')),
    report     jsonb       NOT NULL
);

CREATE INDEX red_reports_recent_idx ON red_reports (started_at DESC);

-- The RED daemon's own notes, append-only: every run, admin edit and rollback adds a version;
-- the newest one is the playbook in force.
CREATE TABLE red_playbook (
    version    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    text       text        NOT NULL,
    source     text        NOT NULL CHECK (source IN ('red', 'admin', 'rollback')),
    report_id  bigint      REFERENCES red_reports (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A user's agent preferences (not memory, not secret).
CREATE TABLE user_preferences (
    user_id     uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    auto_review boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
