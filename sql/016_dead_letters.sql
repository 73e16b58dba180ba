-- walhook outbox, version 16: a subscription's dead letters, found without walking its history.
--
-- Listing a subscription's deliveries filtered by status (`?status=dead`, `walhook deliveries
-- list --status dead`) walked every delivery of the subscription, newest first, until it had a
-- page: with three dead letters among 300,000 deliveries that took 0.65 s, and it grows with
-- the history retention keeps. The listing now picks its candidates from the stored columns
-- (outbox/deliveries.rs); failed rows are already indexed per subscription
-- (`deliveries_sub_retry`), pending ones after the cursor by sequence, attempted pending ones
-- by `deliveries_again_pending`. Dead letters get their own partial index, in the listing's
-- order. A row enters it only when it dies, so storing and delivering cost what they cost.

CREATE INDEX deliveries_sub_dead ON {schema}.deliveries (subscription_id, sequence)
    WHERE status = 'dead';
