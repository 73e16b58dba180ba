-- walhook outbox, version 10: the subscription option `backfill = true` (config.toml and the
-- API's create) backfills the table once, when the subscription is first stored. The backfill
-- it started is marked `on_create`; at most one such row per subscription (the unique index)
-- records that it was started, so restarts, reloads and several instances starting together
-- never start a second one. Deleting the subscription deletes the mark with its backfills, so a
-- subscription deleted and defined again is a new one.
ALTER TABLE {schema}.backfills ADD COLUMN on_create boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX backfills_on_create ON {schema}.backfills (subscription_id) WHERE on_create;
