-- walhook outbox, version 15: only dead letters are indexed by when they finished.
--
-- `(status, finished_at)` over delivered and dead rows served retention and the console. Every
-- delivery entered it when it succeeded (the status update cannot be HOT: status is in the
-- predicates of the queue's partial indexes), for a reader that runs once per prune period.
-- bench/e2e.sh measured the success record at 17.5-17.9 µs of Postgres time per row with it
-- and 14.1-15.3 µs without it, in alternating runs.
--
-- Delivered rows are now found by retention's walk of the primary key in write order (ids and
-- created_at ascend together: one process writes deliveries at a time), which stops at the
-- first row younger than the retention (see outbox::retention). Dead letters, which can pile
-- up for days and are read by retention, the gauges and "replay every dead letter since",
-- keep an index of their own, holding only them.
--
-- Nothing else changes; no row is touched.

CREATE INDEX IF NOT EXISTS deliveries_dead ON {schema}.deliveries (finished_at, subscription_id)
    WHERE status = 'dead';
DROP INDEX IF EXISTS {schema}.deliveries_finished;
