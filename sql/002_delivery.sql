-- walhook outbox, version 2: delivery options per subscription, leases, the per-subscription
-- claim index.

ALTER TABLE {schema}.subscriptions
    ADD COLUMN format text NOT NULL DEFAULT 'json'
        CHECK (format IN ('json', 'slack', 'discord')),
    ADD COLUMN signature text NOT NULL DEFAULT 'archie'
        CHECK (signature IN ('archie', 'standard')),
    ADD COLUMN previous_secret text,
    ADD COLUMN previous_secret_expires_at timestamptz,
    -- Set when a receiver answered 410 Gone (active is then false).
    ADD COLUMN deactivated_at timestamptz,
    ADD COLUMN deactivated_reason text;

-- The worker that holds the lease; a result is recorded only by the lease holder.
ALTER TABLE {schema}.deliveries ADD COLUMN leased_by uuid;

-- The claim query runs per subscription: its due, unfinished deliveries, oldest first.
CREATE INDEX deliveries_sub_due ON {schema}.deliveries (subscription_id, next_attempt_at, id)
    WHERE status IN ('pending', 'failed');
-- The API lists a subscription's deliveries newest first.
CREATE INDEX deliveries_sub_id ON {schema}.deliveries (subscription_id, id DESC);
DROP INDEX {schema}.deliveries_due;

-- Recording an attempt must be cheap (one per delivery at tens of thousands a second): no
-- foreign-key check per attempt; retention deletes a delivery's attempts with it.
ALTER TABLE {schema}.attempts DROP CONSTRAINT attempts_delivery_id_fkey;
-- Room on each page so that taking and renewing a lease (columns no index uses) is a HOT update
-- that touches no index.
ALTER TABLE {schema}.deliveries SET (fillfactor = 70);
