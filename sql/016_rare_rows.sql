-- walhook outbox, version 16: the rare rows (failed, dead, slot-recovery markers) found without
-- walking the outbox.
--
-- Three readers walked every delivery to find a few:
-- - a subscription's listing filtered by status (`?status=dead`, `walhook deliveries list
--   --status dead`) went newest first through the derived statuses until it had a page: with
--   three dead letters among 300,000 deliveries, 0.65 s, growing with the history retention
--   keeps;
-- - the console's overview (the latest error of each subscription) sorted all failed and dead
--   rows of the outbox on every page view;
-- - a slot recovery, waiting for its RESYNC markers to be delivered, counted them five times a
--   second with a scan of the whole table (0.12 s at 266 MB, for up to a minute).
-- Each now reads a partial index. Failed and dead rows are indexed per subscription in sequence
-- order (which is id order within a subscription: sql/014). A row enters these indexes only
-- when it fails, dies or is a marker, so storing a delivery and a first-attempt success cost
-- what they cost.

CREATE INDEX deliveries_sub_failed ON {schema}.deliveries (subscription_id, sequence)
    WHERE status = 'failed';
CREATE INDEX deliveries_sub_dead ON {schema}.deliveries (subscription_id, sequence)
    WHERE status = 'dead';
CREATE INDEX deliveries_markers ON {schema}.deliveries (event_id)
    WHERE event = 'RESYNC';
