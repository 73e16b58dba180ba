-- walhook outbox, version 4: ownership tied to a live Postgres session; a sequence number per
-- delivery.
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

-- A sequence number per (subscription, delivery), assigned once at enqueue and sent as
-- X-Walhook-Sequence, so a receiver can see a gap and fetch what it missed
-- (GET .../deliveries?after_sequence=N). `sequences` holds each subscription's last number; the
-- ingest writer advances it in the transaction that stores the rows (exactly once with them).
ALTER TABLE {schema}.deliveries ADD COLUMN sequence bigint;
CREATE TABLE {schema}.sequences (
    subscription_id  text PRIMARY KEY,
    last_sequence    bigint NOT NULL
);
-- Number what an upgrade keeps, in enqueue (id) order, and continue after it.
UPDATE {schema}.deliveries d SET sequence = n.seq
FROM (SELECT id, row_number() OVER (PARTITION BY subscription_id ORDER BY id) AS seq
      FROM {schema}.deliveries) n
WHERE n.id = d.id;
INSERT INTO {schema}.sequences (subscription_id, last_sequence)
SELECT subscription_id, max(sequence) FROM {schema}.deliveries GROUP BY subscription_id;
CREATE INDEX deliveries_sub_seq ON {schema}.deliveries (subscription_id, sequence);
