-- walhook outbox, version 9: the slot's guard and its recoveries (issue #18).

-- The highest position walhook ever reported to its slot beyond the checkpoint (idle slots follow
-- the server's keepalives). Written BEFORE the position is reported, so a slot whose
-- confirmed_flush_lsn is past max(checkpoint, fence) was moved by someone else (recreated, or
-- advanced by another consumer): the changes in between never reached the outbox.
CREATE TABLE {schema}.slot_fence (
    slot        text PRIMARY KEY,
    lsn         bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per recovery of a lost slot: what was lost since when, the new slot's start, and the
-- backfills started so that receivers converge.
CREATE TABLE {schema}.slot_recoveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slot             text NOT NULL,
    -- lost | missing | moved
    reason           text NOT NULL,
    detail           text NOT NULL,
    -- The checkpoint at the time: changes committed after it are missing.
    since_lsn        bigint,
    since_time       timestamptz,
    -- Where the new slot starts.
    slot_lsn         bigint NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    backfill_ids     bigint[] NOT NULL DEFAULT '{}',
    finished_at      timestamptz
);
