//! Retention: delivered rows are removed after `retention`, dead letters after `dead_retention`;
//! the space their versions took is made reusable soon after ([`vacuum_if_bloated`]).
//!
//! Guarantees: deletes run in small batches (one short transaction each, `SKIP LOCKED`), so
//! pruning never holds locks that ingest or delivery wait on; pending and failed rows are never
//! pruned, nor rows younger than their retention; a delivered row goes within a prune period
//! of its retention, within [`SWEEP_EVERY`] periods if it finished after the walk first passed
//! it, within [`FULL_SWEEP_EVERY`] if it was a dead letter replayed ([`prune_delivered`]);
//! reading for delivered rows costs the rows created since the last run, not the table (plus,
//! now and then, the rows from the lowest one left behind, or from the first); vacuum skips a table it cannot lock at once (`SKIP_LOCKED`), takes no lock that
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
/// [`VACUUM_MIN_DEAD`] and [`VACUUM_DEAD_SHARE`] of the live rows; returns what was vacuumed.
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

/// Where retention's walk over delivered rows stands, kept by the retention task between
/// prune runs (a new process starts from the first row).
#[derive(Debug, Default)]
pub struct Pruner {
    /// Every row with a lower id has been looked at.
    next: i64,
    /// The lowest id the walk passed and left that may still have to go: unfinished, finished
    /// within the retention, or locked by someone else at the time.
    late: Option<i64>,
    /// Prune runs so far.
    runs: u32,
}

impl Pruner {
    /// Where this run's walk starts: where the last one stopped; every [`SWEEP_EVERY`] runs back
    /// at the lowest row it left (so a row delivered late goes at most that many prune periods
    /// after its retention); every [`FULL_SWEEP_EVERY`] runs at the first row (a dead letter
    /// replayed and delivered is not among the rows the walk left).
    fn start(&mut self) {
        if self.runs % FULL_SWEEP_EVERY == 0 {
            self.next = 0;
            self.late = None;
        } else if self.runs % SWEEP_EVERY == 0 {
            if let Some(late) = self.late.take() {
                self.next = self.next.min(late);
            }
        }
        self.runs = self.runs.wrapping_add(1);
    }

    /// Takes note of a statement's answer: its window's end, and the lowest row it left.
    fn walked(&mut self, upto: i64, late: Option<i64>) {
        self.next = upto;
        self.late = match (self.late, late) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// See [`Pruner::start`].
const SWEEP_EVERY: u32 = 10;
const FULL_SWEEP_EVERY: u32 = 100;

/// Rows the walk looks at per statement.
const WALK: i64 = 2000;

/// Deletes expired delivered rows by walking the primary key from `pruner`'s position.
///
/// No index orders delivered rows by when they finished (every success would pay for its
/// entry). Ids and `created_at` ascend together (one process writes deliveries, in blocks each
/// above the last; invariant 4), and a row finishes after it is created, so rows young enough
/// to keep start at the first row created after the cutoff: the walk stops there (a little
/// before it). Each
/// statement looks at [`WALK`] rows and deletes those that are delivered and finished before the
/// cutoff; what it leaves that may have to go later it notes ([`Pruner::walked`]), and a later
/// run walks again from there. Only the statement's own conditions decide what goes, so a walk
/// that starts anywhere never deletes an unfinished or young row. In the steady state each row
/// is read by one walk; walking again from far back costs the rows deleted since the last
/// vacuum, whose index entries the walk steps over (up to ~300 ms per statement in
/// bench/sustained.sh when every tenth run started from the first row). (The inner LIMIT,
/// which the window already implies, tells the planner the rows are few: without it the DELETE
/// read the whole table for each statement, 240 ms per 300k rows in a scratch database, instead
/// of 7 ms.)
async fn prune_delivered(
    client: &Client,
    schema: &Schema,
    pruner: &mut Pruner,
    older_than: Duration,
) -> Result<u64, OutboxError> {
    pruner.start();
    let t = schema.table("deliveries");
    // attempts has no foreign key (it would cost a check per recorded attempt): delete by hand.
    let a = schema.table("attempts");
    let sql = format!(
        "WITH scan AS MATERIALIZED (
             SELECT id, created_at >= now() - make_interval(secs => $2::float8 + $4::float8) AS young,
                    status IN ('pending', 'failed')
                      OR (status = 'delivered'
                          AND finished_at >= now() - make_interval(secs => $2)) AS later
             FROM {t} WHERE id >= $1 ORDER BY id LIMIT $3),
         win AS (
             SELECT count(*) AS n, coalesce(bool_or(young), false) AS young,
                    coalesce(min(id) FILTER (WHERE young), max(id) + 1, $1) AS upto
             FROM scan),
         gone AS (
             DELETE FROM {t} WHERE id IN (
                 SELECT x.id FROM {t} x, win
                 WHERE x.id >= $1 AND x.id < win.upto AND x.status = 'delivered'
                   AND x.finished_at < now() - make_interval(secs => $2)
                 LIMIT $3 FOR UPDATE OF x SKIP LOCKED)
             RETURNING id),
         attempts AS (DELETE FROM {a} WHERE delivery_id IN (SELECT id FROM gone))
         SELECT (SELECT count(*) FROM gone), win.n, win.young, win.upto,
                (SELECT min(id) FROM scan WHERE later AND id < win.upto)
         FROM win"
    );
    let secs = older_than.as_secs_f64();
    // Rows are walked a little after their retention (a tenth of it, 1 s to 60 s: the prune
    // period), so that one delivered soon after it was stored has expired when the walk reaches
    // it; otherwise the rows at the walk's edge, stored just before the cutoff and delivered just
    // after, would be left behind on every run and walked again.
    let margin = (older_than / 10)
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
        .as_secs_f64();
    let mut total = 0;
    loop {
        let row = client
            .query_one(&sql, &[&pruner.next, &secs, &WALK, &margin])
            .await?;
        total += row.get::<_, i64>(0) as u64;
        pruner.walked(row.get(3), row.get(4));
        if row.get::<_, bool>(2) || row.get::<_, i64>(1) < WALK {
            return Ok(total);
        }
        // Leave room for ingest between statements.
        tokio::task::yield_now().await;
    }
}

/// Deletes one batch of dead letters older than `older_than` (found through their own index);
/// returns how many were deleted.
async fn prune_dead_batch(
    client: &Client,
    schema: &Schema,
    older_than: Duration,
) -> Result<u64, OutboxError> {
    let t = schema.table("deliveries");
    let a = schema.table("attempts");
    let secs = older_than.as_secs_f64();
    let n = client
        .query_one(
            &format!(
                "WITH gone AS (
                   DELETE FROM {t} WHERE id IN (
                     SELECT id FROM {t} WHERE status = 'dead'
                       AND finished_at < now() - make_interval(secs => $1)
                     LIMIT $2 FOR UPDATE SKIP LOCKED)
                   RETURNING id),
                 attempts AS (DELETE FROM {a} WHERE delivery_id IN (SELECT id FROM gone))
                 SELECT count(*) FROM gone"
            ),
            &[&secs, &BATCH],
        )
        .await?
        .get::<_, i64>(0);
    Ok(n as u64)
}

/// Prunes until nothing expired is left; returns the number of rows removed.
pub async fn prune(
    client: &Client,
    schema: &Schema,
    pruner: &mut Pruner,
    retention: Duration,
    dead_retention: Duration,
) -> Result<u64, OutboxError> {
    let mut total = prune_delivered(client, schema, pruner, retention).await?;
    loop {
        let n = prune_dead_batch(client, schema, dead_retention).await?;
        total += n;
        if n < BATCH as u64 {
            break;
        }
        // Leave room for ingest between batches.
        tokio::task::yield_now().await;
    }
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
    let t = schema.table("deliveries");
    let subs = schema.table("subscriptions");
    let a = schema.table("attempts");
    let q = schema.table("sequences");
    let orphans = client
        .query_one(
            &format!(
                "WITH orphan AS MATERIALIZED (
                   SELECT q.subscription_id FROM {q} q
                   WHERE NOT EXISTS (SELECT 1 FROM {subs} s WHERE s.id = q.subscription_id)),
                 gone AS (
                   DELETE FROM {t} WHERE id IN (
                     SELECT x.id FROM orphan o CROSS JOIN LATERAL (
                       SELECT d.id FROM {t} d WHERE d.subscription_id = o.subscription_id
                       LIMIT $1 FOR UPDATE SKIP LOCKED) x
                     LIMIT $1)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_resumes_goes_back_to_what_it_left_and_now_and_then_to_the_first_row() {
        let mut p = Pruner::default();
        p.start();
        assert_eq!(p.next, 0, "a new process walks from the first row");
        p.walked(500, Some(40));
        p.walked(900, Some(700));
        p.walked(1200, None);
        assert_eq!((p.next, p.late), (1200, Some(40)));
        for _ in 1..SWEEP_EVERY {
            p.start();
            assert_eq!(p.next, 1200, "between sweeps the walk resumes");
        }
        p.start();
        assert_eq!(
            (p.next, p.late),
            (40, None),
            "the tenth run goes back to row 40"
        );
        p.walked(1500, None);
        while p.runs % FULL_SWEEP_EVERY != 0 {
            p.start();
            assert!(p.next > 0);
        }
        p.start();
        assert_eq!(
            p.next, 0,
            "the hundredth run walks from the first row again"
        );
    }
}
