-- Hub replicas of one pool (issue 18, docs/scale-out.md): each running replica keeps a row
-- here with a heartbeat, and one row per worker whose WebSocket it holds. A replica whose
-- heartbeat is stale is dead: readers ignore its rows, and the next live replica deletes them
-- (the cascade takes its worker sessions). The live placement view travels over the bus; these
-- tables are the durable record an operator (or a replica that starts) reads.
CREATE TABLE hub_replicas (
    id        text        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
    address   text        NOT NULL CHECK (length(address) <= 200),
    started   timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX hub_replicas_heartbeat ON hub_replicas (heartbeat);

CREATE TABLE worker_sessions (
    worker_id  text        PRIMARY KEY CHECK (worker_id <> '' AND length(worker_id) <= 200),
    replica_id text        NOT NULL REFERENCES hub_replicas (id) ON DELETE CASCADE,
    name       text        NOT NULL CHECK (length(name) <= 200),
    models     text[]      NOT NULL,
    slots      integer     NOT NULL CHECK (slots >= 0),
    free_slots integer     NOT NULL CHECK (free_slots >= 0),
    linked_at  timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX worker_sessions_replica ON worker_sessions (replica_id);
