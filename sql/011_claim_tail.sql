-- walhook outbox, version 11: claiming a backlog in id order.
--
-- A pump that holds every unfinished delivery of its subscription up to some id (nothing
-- failed, nothing left behind) reads what follows in id order, with no per-row "is this the
-- head of its key" probe and no list of the ids it holds; its lanes keep each key's order.
-- That read needs the pending rows in id order; retries need the failed rows in due order. The
-- one index that served both (`deliveries_sub_due`) becomes two partial indexes, so a stored
-- row still enters exactly one of them: writing costs the same as before. Nothing else changes.

CREATE INDEX deliveries_sub_pending ON {schema}.deliveries (subscription_id, id)
    WHERE status = 'pending';
CREATE INDEX deliveries_sub_retry ON {schema}.deliveries (subscription_id, next_attempt_at, id)
    WHERE status = 'failed';
DROP INDEX {schema}.deliveries_sub_due;
