-- walhook outbox, version 4: ownership tied to a live Postgres session.
--
-- An instance owns subscriptions under one worker id and holds a session-level advisory lock
-- (key: walhook's namespace, `session_lock`) on one dedicated connection. When its process dies
-- the server ends that session and the lock is gone, so another instance (or the restarted one)
-- takes the subscriptions over at once instead of waiting for `lease_until`; the lease stays as
-- the fallback for a network partition, where the session may outlive the owner's reach. Rows
-- written before this version have no session_lock and are taken over on their lease alone.
-- Nothing else changes: pending, failed and dead deliveries are kept as they are.

ALTER TABLE {schema}.delivery_owners
    ADD COLUMN session_lock integer,
    -- The owner's backend pid, for operators (pg_stat_activity); liveness uses the lock.
    ADD COLUMN session_pid integer;

-- One statement renews or gives up all of an instance's subscriptions.
CREATE INDEX delivery_owners_worker ON {schema}.delivery_owners (worker);
