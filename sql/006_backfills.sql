-- walhook outbox, version 6: backfills (existing rows of a subscription's table sent as READ
-- events). A backfill's progress (the primary key of the last row read, rows done) is written
-- by the ingest writer in the same outbox transaction as the chunk's deliveries, so after a
-- crash it resumes from the last stored chunk and re-sends at most the chunk in flight, with
-- the same event ids. Deleting the subscription deletes its backfills.

CREATE TABLE {schema}.backfills (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id  text NOT NULL REFERENCES {schema}.subscriptions (id) ON DELETE CASCADE,
    -- The user's boolean expression on the table, NULL = every row.
    where_sql        text,
    chunk_size       integer NOT NULL CHECK (chunk_size > 0),
    -- Pacing: the pause between two chunks, in milliseconds.
    pause_ms         integer NOT NULL DEFAULT 0 CHECK (pause_ms >= 0),
    state            text NOT NULL DEFAULT 'running'
                     CHECK (state IN ('running', 'done', 'cancelled', 'failed')),
    -- The primary-key columns of the last row read, as to_jsonb renders them; NULL = none yet.
    last_key         jsonb,
    rows_done        bigint NOT NULL DEFAULT 0,
    rows_estimated   bigint,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    error            text
);
CREATE INDEX backfills_sub ON {schema}.backfills (subscription_id, id);
CREATE INDEX backfills_running ON {schema}.backfills (id) WHERE state = 'running';
