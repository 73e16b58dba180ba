-- walhook outbox, version 12: a plain success costs no attempt row.
--
-- Most deliveries succeed at their first attempt; writing an attempt row for each doubled the
-- rows (and index entries) a delivery wrote. Such a success now keeps its outcome on the
-- delivery itself (`last_http_status`, and the two columns below), and `attempts` holds a row
-- for every other attempt: failures, and the success that ends a series of failures.
-- `all_attempts` shows both as one history, for the console and for operators' SQL. Rows
-- recorded before this version keep their attempt rows (and have no `last_attempt_at`, so the
-- view does not show them twice).

ALTER TABLE {schema}.deliveries
    ADD COLUMN last_attempt_at timestamptz,
    ADD COLUMN last_duration_ms integer;

CREATE VIEW {schema}.all_attempts AS
    SELECT id, delivery_id, attempted_at, duration_ms, http_status, error_kind, response_body
    FROM {schema}.attempts
    UNION ALL
    SELECT NULL::bigint, d.id, d.last_attempt_at, d.last_duration_ms, d.last_http_status,
           NULL::text, NULL::text
    FROM {schema}.deliveries d
    WHERE d.status = 'delivered' AND d.attempts = 1 AND d.last_attempt_at IS NOT NULL;
