-- walhook outbox, version 16: a subscription's failed and dead deliveries, newest first,
-- found without walking its history.
--
-- Two readers walked every delivery of a subscription to find its few failed or dead ones:
-- - its listing filtered by status (`?status=dead`, `walhook deliveries list --status dead`)
--   went newest first through the derived statuses until it had a page: with three dead
--   letters among 300,000 deliveries, 0.65 s, growing with the history retention keeps;
-- - the console's overview (its latest error per subscription) sorted all failed and dead
--   rows of the outbox on every page view.
-- Both now read these two partial indexes, in sequence order (which is id order within a
-- subscription: sql/014). A row enters them only when it fails or dies, so storing a delivery
-- and a first-attempt success cost what they cost.

CREATE INDEX deliveries_sub_failed ON {schema}.deliveries (subscription_id, sequence)
    WHERE status = 'failed';
CREATE INDEX deliveries_sub_dead ON {schema}.deliveries (subscription_id, sequence)
    WHERE status = 'dead';
