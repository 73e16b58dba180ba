-- walhook outbox, version 3: a subscription's deliveries are sent by one owner at a time.
--
-- Leasing each delivery row cost a row lock and an UPDATE per delivery, two thirds of the
-- database's work per delivery. One lease per subscription keeps the same guarantees (one
-- sender per delivery, a crashed owner's work comes back when its lease expires) and makes a
-- claim a plain read.

CREATE TABLE {schema}.delivery_owners (
    subscription_id  text PRIMARY KEY,
    -- One pump of one walhook process; a result is recorded only by the current owner.
    worker           uuid NOT NULL,
    lease_until      timestamptz NOT NULL,
    acquired_at      timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE {schema}.deliveries DROP COLUMN lease_until, DROP COLUMN leased_by;
