//! Retention: delivered rows are removed after `retention` (those the delivered cursor recorded
//! with their runs, each subscription's newest run kept), dead letters after `dead_retention`;
//! the space their versions took is made reusable soon after ([`vacuum_if_bloated`]).
//!
//! Guarantees: deletes run in small batches (one short transaction each, `SKIP LOCKED`), so
//! pruning never holds locks that ingest or delivery wait on; pending and failed rows are never
//! pruned; vacuum skips a table it cannot lock at once (`SKIP_LOCKED`), takes no lock that
//! ingest's or delivery's statements wait on, and runs in one server process (`PARALLEL 0`).
//!
//! Why walhook vacuums its own tables: every delivery leaves dead row versions (its status
//! update, then its deletion). Autovacuum visits a table at most once per `autovacuum_naptime`
//! (a server-wide minute by default); under sustained load a minute of dead versions is several
//! times the live rows, and the outbox grew to three times its early size before it levelled
//! off (bench/sustained.sh). Vacuuming when the dead versions pass a share of the live ones keeps
//! it near the live size.

use std::time::Duration;

use tokio_postgres::Client;
use tracing::info;

use super::{OutboxError, Schema};

const BATCH: i64 = 1000;

/// Dead row versions that make a table worth vacuuming: at least this many ...
const VACUUM_MIN_DEAD: i64 = 10_000;
/// ... and at least this share of its live rows.
const VACUUM_DEAD_SHARE: f64 = 0.2;

/// A table walhook vacuumed and the dead row versions the statistics counted before.
#[derive(Debug)]
pub struct Vacuumed {
    pub table: String,
    pub dead: i64,
    pub live: i64,
    pub took: std::time::Duration,
}

/// Vacuums `deliveries` and `attempts` when the statistics count more dead row versions than
/// `VACUUM_MIN_DEAD` and `VACUUM_DEAD_SHARE` of the live rows; returns what was vacuumed.
/// A table another vacuum holds is skipped (its turn comes at the next call).
pub async fn vacuum_if_bloated(
    client: &Client,
    schema: &Schema,
) -> Result<Vec<Vacuumed>, OutboxError> {
    let rows = client
        .query(
            "SELECT relname::text, n_dead_tup, n_live_tup FROM pg_stat_user_tables
             WHERE relid IN ($1::text::regclass, $2::text::regclass)
               AND n_dead_tup >= $3 AND n_dead_tup >= $4::float8 * n_live_tup",
            &[
                &schema.table("deliveries"),
                &schema.table("attempts"),
                &VACUUM_MIN_DEAD,
                &VACUUM_DEAD_SHARE,
            ],
        )
        .await?;
    let mut done = Vec::new();
    for row in rows {
        let table: String = row.get(0);
        let started = std::time::Instant::now();
        // VACUUM cannot run inside a transaction block; this is a statement of its own.
        // `PARALLEL 0`: a manual VACUUM otherwise vacuums the indexes with parallel workers
        // (autovacuum never does), every core at once, and the deliveries of that moment wait.
        client
            .batch_execute(&format!(
                "VACUUM (SKIP_LOCKED, PARALLEL 0) {}",
                schema.table(&table)
            ))
            .await?;
        done.push(Vacuumed {
            table,
            dead: row.get(1),
            live: row.get(2),
            took: started.elapsed(),
        });
    }
    Ok(done)
}

/// Deletes the deliveries `ids` selects (SQL, after the common table expressions `ctes`, which
/// end with a comma when given) with their attempts; returns how many were deleted.
async fn delete_deliveries(
    client: &Client,
    schema: &Schema,
    ctes: &str,
    ids: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, OutboxError> {
    let t = schema.table("deliveries");
    // attempts has no foreign key (it would cost a check per recorded attempt): delete by hand.
    let a = schema.table("attempts");
    let n = client
        .query_one(
            &format!(
                "WITH {ctes}
                 gone AS (DELETE FROM {t} WHERE id IN ({ids}) RETURNING id),
                 attempts AS (DELETE FROM {a} WHERE delivery_id IN (SELECT id FROM gone))
                 SELECT count(*) FROM gone"
            ),
            params,
        )
        .await?
        .get::<_, i64>(0);
    Ok(n as u64)
}

/// Deletes one batch of expired rows of `status`; returns how many were deleted.
async fn prune_batch(
    client: &Client,
    schema: &Schema,
    status: &str,
    older_than: Duration,
) -> Result<u64, OutboxError> {
    let ids = format!(
        "SELECT id FROM {} WHERE status = $1
           AND finished_at < now() - make_interval(secs => $2)
         LIMIT $3 FOR UPDATE SKIP LOCKED",
        schema.table("deliveries")
    );
    let secs = older_than.as_secs_f64();
    delete_deliveries(client, schema, "", &ids, &[&status, &secs, &BATCH]).await
}

/// The subscriptions whose delivered cursor has runs written before the retention (sql/015),
/// each with the last sequence number those runs cover (a CTE named `old`, `$1` the retention
/// in seconds). A subscription's runs are written in sequence order, so their times ascend with
/// their numbers: the expired ones are a prefix, read from the oldest (at most 1,000 a call).
fn expired_runs(schema: &Schema) -> String {
    format!(
        "old AS MATERIALIZED (
           SELECT q.subscription_id AS sub, max(r.last_sequence) AS upto
           FROM {q} q CROSS JOIN LATERAL (
               SELECT o.last_sequence, o.recorded_at FROM {runs} o
               WHERE o.subscription_id = q.subscription_id
               ORDER BY o.subscription_id, o.last_sequence LIMIT 1000) r
           WHERE r.recorded_at < now() - make_interval(secs => $1)
           GROUP BY q.subscription_id),",
        q = schema.table("sequences"),
        runs = schema.table("delivered_runs"),
    )
}

/// Deletes the rows the delivered cursor recorded in runs written before `older_than` (they stay
/// `pending` on disk, so the per-status prune does not see them), then those runs, keeping each
/// subscription's newest (its cursor); returns how many rows were deleted.
async fn prune_covered(
    client: &Client,
    schema: &Schema,
    older_than: Duration,
) -> Result<u64, OutboxError> {
    let secs = older_than.as_secs_f64();
    let ids = format!(
        "SELECT x.id FROM old CROSS JOIN LATERAL (
           SELECT d.id FROM {d} d
           WHERE d.subscription_id = old.sub AND d.sequence <= old.upto
             AND {covered}
           ORDER BY d.subscription_id, d.sequence
           LIMIT $2 FOR UPDATE SKIP LOCKED) x
         LIMIT $2",
        d = schema.table("deliveries"),
        covered = super::queue::run_may_cover("d."),
    );
    let old = expired_runs(schema);
    let runs = schema.table("delivered_runs");
    let drop_runs = format!(
        "WITH {}
         gone AS (DELETE FROM {runs} r USING old
                  WHERE r.subscription_id = old.sub AND r.last_sequence <= old.upto
                    AND r.last_sequence < (SELECT max(c.last_sequence) FROM {runs} c
                                           WHERE c.subscription_id = old.sub)
                  RETURNING 1)
         SELECT count(*) FROM gone",
        old
    );
    let mut total = 0;
    // A round takes up to 1,000 expired runs per subscription: first the rows they delivered,
    // then the runs. A busy subscription writes a few hundred runs a second, so a prune period
    // may need several rounds; they stop when no expired run is left (bounded, in case the
    // load keeps adding).
    for _ in 0..MAX_RUN_ROUNDS {
        loop {
            let n = delete_deliveries(client, schema, &old, &ids, &[&secs, &BATCH]).await?;
            total += n;
            if n < BATCH as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let dropped: i64 = client.query_one(&drop_runs, &[&secs]).await?.get(0);
        if dropped == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(total)
}

/// Rounds of [`prune_covered`] in one prune, at most.
const MAX_RUN_ROUNDS: usize = 1000;

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
    total += prune_covered(client, schema, retention).await?;
    // Deliveries of a deleted subscription can never be sent (its URL and secret are gone); one
    // enqueued between the delete and the routing switch would otherwise stay pending forever.
    // Every subscription that ever had a delivery has a `sequences` row (the writer numbers
    // rows in the same transaction; sql/004 numbered older ones), so the orphans are found
    // from the few subscription ids there that no longer exist, through the subscription's
    // index, instead of by reading every delivery on every run (it used to: ~130 ms per 300k
    // rows, each prune period). The ids come first, on their own (MATERIALIZED), and the rows
    // of each after (LATERAL): as one join, the planner, which has no statistics for these
    // small tables, read all of `deliveries` before the anti-join left nothing (30-70 ms a run
    // in bench/sustained.sh); this way no orphan id means no delivery read (0.4 ms).
    let subs = schema.table("subscriptions");
    let orphan = format!(
        "orphan AS MATERIALIZED (
           SELECT q.subscription_id FROM {q} q
           WHERE NOT EXISTS (SELECT 1 FROM {subs} s WHERE s.id = q.subscription_id)),",
        q = schema.table("sequences"),
    );
    let ids = format!(
        "SELECT x.id FROM orphan o CROSS JOIN LATERAL (
           SELECT d.id FROM {t} d WHERE d.subscription_id = o.subscription_id
           LIMIT $1 FOR UPDATE SKIP LOCKED) x
         LIMIT $1",
        t = schema.table("deliveries"),
    );
    let orphans = delete_deliveries(client, schema, &orphan, &ids, &[&BATCH]).await?;
    // ... and the runs of their delivered cursors (sql/015).
    client
        .execute(
            &format!(
                "WITH {orphan}
                 gone AS (DELETE FROM {} r USING orphan o WHERE r.subscription_id = o.subscription_id)
                 SELECT 1",
                schema.table("delivered_runs")
            ),
            &[],
        )
        .await?;
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
