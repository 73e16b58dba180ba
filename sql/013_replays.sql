-- walhook outbox, version 13: replays are counted per subscription.
--
-- A pump that took every row of its subscription from memory does not read the outbox on a
-- timer any more: once per `poll_interval` the instance reads each owned subscription's last
-- sequence number and this count, and only a pump whose subscription moved without it (rows
-- stored by another instance, a replay from another process) reads the outbox. Replays bump the
-- count in the statement that puts the rows back. Nothing else changes.

ALTER TABLE {schema}.sequences ADD COLUMN replays bigint NOT NULL DEFAULT 0;
