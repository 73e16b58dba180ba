-- walhook outbox, version 7: opt-in batching per subscription (several events per request).
-- Both NULL: one event per request (the default); both set: a batch of up to
-- batch_max_events events, waiting at most batch_max_wait_ms for it to fill.

ALTER TABLE {schema}.subscriptions
    ADD COLUMN batch_max_events integer,
    ADD COLUMN batch_max_wait_ms integer,
    ADD CONSTRAINT subscriptions_batch_check CHECK (
        (batch_max_events IS NULL AND batch_max_wait_ms IS NULL)
        OR (batch_max_events BETWEEN 1 AND 1000 AND batch_max_wait_ms BETWEEN 0 AND 10000));
