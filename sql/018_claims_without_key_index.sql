-- walhook outbox, version 18: claims keep no index of every unfinished row by key.
--
-- `deliveries_key` held every pending or failed row by (subscription, ordering key, id) so that
-- a claim could tell whether an older row of a row's key was unfinished. Every stored delivery
-- entered it, at a random place (the key is the row's primary key, often a uuid):
-- bench/backfill.sh and a scratch build measured it at half of what a stored row costs
-- Postgres, and the backfill's store 19% faster without it.
--
-- A claim still leaves out a row whose key has an older row that was attempted and is
-- unfinished (a failure waiting for its retry, a replay): `deliveries_again_key` (sql/015)
-- holds exactly those, and rows enter it only when attempted. Among rows never attempted the
-- order is the pump's: claims return them in id order (commit order) and its lanes keep each
-- key's rows in the order they came; it does not claim while a failure is not recorded, and
-- leaves to the outbox the rows an answer holds of a key that failed while it ran
-- (deliver/worker).
--
-- Nothing else changes; no row is touched.

DROP INDEX IF EXISTS {schema}.deliveries_key;
