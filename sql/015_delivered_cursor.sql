-- walhook outbox, version 15: a first-attempt success is recorded by a cursor, not by its row.
--
-- Until now every success updated its delivery to `delivered`: a new version of the whole row
-- (payload included), three index entries (the update cannot be HOT: status is in the queue's
-- partial-index predicates), and a dead version for vacuum. bench/e2e.sh measured that update
-- at 12.5–15.7 µs of Postgres time per delivery, a third of all Postgres spent per delivery.
--
-- Now a pump that holds every unfinished delivery of its subscription (memory and id-order
-- reads, deliver/cursor.rs) records the successes that end an unbroken run of finished
-- sequence numbers as one row of `delivered_runs`: "every delivery numbered from
-- `first_sequence` to `last_sequence` that was still waiting for its first attempt was
-- delivered, the last at `attempted_at`, answered `http_status`". The subscription's newest
-- run is its cursor. A run is written per record batch (one every few milliseconds under
-- load), not per delivery; everything else (failures, retries, dead letters, replays, and
-- successes the pump could not put in an unbroken run) is written on the row as before.
--
-- So a row stays `pending` on disk when the cursor delivered it. Its status as operators see it:
-- `delivered` when it is `pending`, never attempted (`last_attempt_at IS NULL`: every record
-- writes it; a replay keeps it), and numbered at or below the cursor. The view
-- `delivery_states` says that once for every reader (the API, the console, operators' SQL).
--
-- Claims no longer read a subscription's pending rows from its first: they start after the
-- cursor. What can still be unfinished below the cursor is a row attempted before (a replay,
-- or its retries): the two partial indexes below hold exactly those, and rows enter them only
-- when attempted, so storing a delivery costs what it cost before.

CREATE TABLE {schema}.delivered_runs (
    subscription_id text COLLATE "C" NOT NULL,
    first_sequence  bigint NOT NULL,
    last_sequence   bigint NOT NULL,
    http_status     integer NOT NULL,
    attempted_at    timestamptz NOT NULL,
    duration_ms     integer NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, last_sequence)
);

-- Unfinished rows attempted before, by key (is an older row of this key still unfinished?) ...
CREATE INDEX deliveries_again_key ON {schema}.deliveries (subscription_id, ordering_key, id)
    WHERE status IN ('pending', 'failed') AND last_attempt_at IS NOT NULL;
-- ... and the pending ones in id order (replays, which a claim reads wherever they stand).
CREATE INDEX deliveries_again_pending ON {schema}.deliveries (subscription_id, id)
    WHERE status = 'pending' AND last_attempt_at IS NOT NULL;

-- Failed rows recorded before version 12 have no `last_attempt_at`; every failed row is an
-- attempted one, and the indexes above must hold it.
UPDATE {schema}.deliveries SET last_attempt_at = coalesce(finished_at, next_attempt_at, created_at)
WHERE status = 'failed' AND last_attempt_at IS NULL;

CREATE VIEW {schema}.delivery_states AS
    SELECT d.id, d.subscription_id, d.event_id, d.event, d.ordering_key, d.payload, d.commit_lsn,
           CASE WHEN k.covered THEN 'delivered' ELSE d.status END AS status,
           CASE WHEN k.covered THEN 1 ELSE d.attempts END AS attempts,
           d.next_attempt_at,
           CASE WHEN k.covered THEN r.http_status ELSE d.last_http_status END AS last_http_status,
           d.last_error, d.created_at,
           CASE WHEN k.covered THEN r.recorded_at ELSE d.finished_at END AS finished_at,
           CASE WHEN k.covered THEN r.attempted_at ELSE d.last_attempt_at END AS last_attempt_at,
           CASE WHEN k.covered THEN r.duration_ms ELSE d.last_duration_ms END AS last_duration_ms,
           d.sequence
    FROM {schema}.deliveries d
    CROSS JOIN LATERAL (
        SELECT d.status = 'pending' AND d.last_attempt_at IS NULL
               AND d.sequence <= (SELECT c.last_sequence FROM {schema}.delivered_runs c
                                  WHERE c.subscription_id = d.subscription_id
                                  ORDER BY c.last_sequence DESC LIMIT 1) AS covered
        -- Evaluated once per row (OFFSET 0 keeps the planner from copying it into each column).
        OFFSET 0) k
    LEFT JOIN LATERAL (
        SELECT r.http_status, r.attempted_at, r.duration_ms, r.recorded_at
        FROM {schema}.delivered_runs r
        WHERE k.covered AND r.subscription_id = d.subscription_id AND r.last_sequence >= d.sequence
        ORDER BY r.last_sequence LIMIT 1) r ON true;

CREATE OR REPLACE VIEW {schema}.all_attempts AS
    SELECT id, delivery_id, attempted_at, duration_ms, http_status, error_kind, response_body
    FROM {schema}.attempts
    UNION ALL
    SELECT NULL::bigint, d.id, d.last_attempt_at, d.last_duration_ms, d.last_http_status,
           NULL::text, NULL::text
    FROM {schema}.delivery_states d
    WHERE d.status = 'delivered' AND d.attempts = 1 AND d.last_attempt_at IS NOT NULL;
