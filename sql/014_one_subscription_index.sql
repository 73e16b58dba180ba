-- walhook outbox, version 14: one index orders a subscription's deliveries, not two.
--
-- Within a subscription, id order and sequence order are the same order: one process writes
-- deliveries at a time (the one reading the slot), its ids ascend in write order (blocks of
-- the identity sequence, each above the last), and each row gets its subscription's next
-- sequence number in the same transaction. So `(subscription_id, sequence)` serves everything
-- `(subscription_id, id DESC)` served: newest first, keyset pages, the console's live page.
--
-- Why drop one: every stored delivery was inserted into both, and every delivery's status
-- change wrote a new entry into both (the update cannot be HOT: status is in the predicates of
-- the queue's partial indexes). bench/e2e.sh measured the second index at ~10 µs of Postgres
-- time per delivery, about a seventh of all Postgres spent per delivery.
--
-- Nothing else changes; no row is touched.

DROP INDEX IF EXISTS {schema}.deliveries_sub_id;
