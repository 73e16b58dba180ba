//! Retention: delivered rows are removed after `retention`, dead letters after `dead_retention`.
//!
//! Guarantees: deletes run in small batches (one short transaction each, `SKIP LOCKED`), so
//! pruning never holds locks that ingest or delivery wait on; pending and failed rows are never
//! pruned.

use std::time::Duration;

use tokio_postgres::Client;
use tracing::info;

use super::{OutboxError, Schema};

const BATCH: i64 = 1000;

/// Deletes one batch of expired rows of `status`; returns how many were deleted.
async fn prune_batch(
    client: &Client,
    schema: &Schema,
    status: &str,
    older_than: Duration,
) -> Result<u64, OutboxError> {
    let t = schema.table("deliveries");
    // attempts has no foreign key (it would cost a check per recorded attempt): delete by hand.
    let a = schema.table("attempts");
    let secs = older_than.as_secs_f64();
    let n = client
        .query_one(
            &format!(
                "WITH gone AS (
                   DELETE FROM {t} WHERE id IN (
                     SELECT id FROM {t} WHERE status = $1
                       AND finished_at < now() - make_interval(secs => $2)
                     LIMIT $3 FOR UPDATE SKIP LOCKED)
                   RETURNING id),
                 attempts AS (DELETE FROM {a} WHERE delivery_id IN (SELECT id FROM gone))
                 SELECT count(*) FROM gone"
            ),
            &[&status, &secs, &BATCH],
        )
        .await?
        .get::<_, i64>(0);
    Ok(n as u64)
}

/// Prunes until nothing expired is left; returns the number of rows removed.
pub async fn prune(
    client: &Client,
    schema: &Schema,
    retention: Duration,
    dead_retention: Duration,
) -> Result<u64, OutboxError> {
    let mut total = 0;
    for (status, age) in [("delivered", retention), ("dead", dead_retention)] {
        loop {
            let n = prune_batch(client, schema, status, age).await?;
            total += n;
            if n < BATCH as u64 {
                break;
            }
            // Leave room for ingest between batches.
            tokio::task::yield_now().await;
        }
    }
    // Deliveries of a deleted subscription can never be sent (its URL and secret are gone); one
    // enqueued between the delete and the routing switch would otherwise stay pending forever.
    let t = schema.table("deliveries");
    let subs = schema.table("subscriptions");
    let a = schema.table("attempts");
    let orphans = client
        .query_one(
            &format!(
                "WITH gone AS (
                   DELETE FROM {t} WHERE id IN (
                     SELECT d.id FROM {t} d
                     WHERE NOT EXISTS (SELECT 1 FROM {subs} s WHERE s.id = d.subscription_id)
                     LIMIT $1 FOR UPDATE SKIP LOCKED)
                   RETURNING id),
                 attempts AS (DELETE FROM {a} WHERE delivery_id IN (SELECT id FROM gone))
                 SELECT count(*) FROM gone"
            ),
            &[&BATCH],
        )
        .await?
        .get::<_, i64>(0) as u64;
    if orphans > 0 {
        info!(rows = orphans, "pruned deliveries of deleted subscriptions");
    }
    // A pump gives its ownership up when it stops; one that crashed leaves an expired row.
    client
        .execute(
            &format!(
                "DELETE FROM {o} w WHERE w.lease_until < now()
                   AND NOT EXISTS (SELECT 1 FROM {subs} s WHERE s.id = w.subscription_id)",
                o = schema.table("delivery_owners")
            ),
            &[],
        )
        .await?;
    if total > 0 {
        info!(rows = total, "pruned outbox");
    }
    Ok(total + orphans)
}
