-- walhook outbox, version 17: `delivery_states` reads a delivered run only for the columns
-- that need it.
--
-- Version 15's view joined every row the cursor delivered to its run (an index probe per
-- row), whatever the query asked for, and looked up the subscription's cursor once per row.
-- Counting a 300,000-row outbox by status took 1.6 s, most of it in those probes.
--
-- Now the cursor is a lateral join on the subscription alone, which the planner caches per
-- subscription (Memoize), and each column a run supplies (HTTP status, times, duration) is its
-- own subquery, evaluated only when that column is read and the row was delivered by the
-- cursor. The same query takes 0.18 s; a page of 1,000 rows with every column costs what it
-- did (four probes instead of one per row, on a bounded page); reading the run columns of a
-- whole table costs about three times more, which no reader of walhook's does.
--
-- The columns, their order and their values are those of version 15.

CREATE OR REPLACE VIEW {schema}.delivery_states AS
    SELECT d.id, d.subscription_id, d.event_id, d.event, d.ordering_key, d.payload, d.commit_lsn,
           CASE WHEN k.covered THEN 'delivered' ELSE d.status END AS status,
           CASE WHEN k.covered THEN 1 ELSE d.attempts END AS attempts,
           d.next_attempt_at,
           CASE WHEN k.covered THEN
               (SELECT r.http_status FROM {schema}.delivered_runs r
                WHERE r.subscription_id = d.subscription_id AND r.last_sequence >= d.sequence
                ORDER BY r.last_sequence LIMIT 1)
           ELSE d.last_http_status END AS last_http_status,
           d.last_error, d.created_at,
           CASE WHEN k.covered THEN
               (SELECT r.recorded_at FROM {schema}.delivered_runs r
                WHERE r.subscription_id = d.subscription_id AND r.last_sequence >= d.sequence
                ORDER BY r.last_sequence LIMIT 1)
           ELSE d.finished_at END AS finished_at,
           CASE WHEN k.covered THEN
               (SELECT r.attempted_at FROM {schema}.delivered_runs r
                WHERE r.subscription_id = d.subscription_id AND r.last_sequence >= d.sequence
                ORDER BY r.last_sequence LIMIT 1)
           ELSE d.last_attempt_at END AS last_attempt_at,
           CASE WHEN k.covered THEN
               (SELECT r.duration_ms FROM {schema}.delivered_runs r
                WHERE r.subscription_id = d.subscription_id AND r.last_sequence >= d.sequence
                ORDER BY r.last_sequence LIMIT 1)
           ELSE d.last_duration_ms END AS last_duration_ms,
           d.sequence
    FROM {schema}.deliveries d
    LEFT JOIN LATERAL (
        SELECT c.last_sequence AS upto FROM {schema}.delivered_runs c
        WHERE c.subscription_id = d.subscription_id
        ORDER BY c.last_sequence DESC LIMIT 1) cur ON true
    CROSS JOIN LATERAL (
        SELECT d.status = 'pending' AND d.last_attempt_at IS NULL AND d.sequence <= cur.upto
               AS covered
        -- Evaluated once per row (OFFSET 0 keeps the planner from copying it into each column).
        OFFSET 0) k;
