//! Deliveries as operators see them: listing, replay, and the per-subscription counts behind
//! the queue gauges. Shared by the API handlers and the CLI twins (`walhook deliveries
//! list|replay`).
//!
//! Guarantees:
//! - a replay never puts a delivery in flight twice: only finished deliveries (delivered or
//!   dead) are replayed; an unfinished one may be in a worker's hands right now and is reported
//!   as [`ReplayOne::Unfinished`], never reset under the worker;
//! - a replayed delivery keeps its row, event id and payload bytes, so receivers deduplicate it
//!   like any retry; it becomes `pending` with `attempts = 0`, due now, with its last error
//!   cleared and its last attempt's time kept (the mark of a row attempted before, which the
//!   delivered cursor never covers: sql/015);
//! - a replay only ever touches deliveries of the subscription it names;
//! - listing is newest first and keyset-paginated by id, so a page is stable while new
//!   deliveries arrive; with `after_sequence` it is oldest first by the subscription's sequence
//!   number, so a receiver that saw a gap reads exactly what follows the last number it has;
//! - a listing filtered by status shows exactly the rows `delivery_states` shows in it, and
//!   costs what its page costs, not the subscription's history (each candidate branch walks an
//!   index in the page's order: sql/016).

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Row};

use super::queue::{cursor_sequence, run_may_cover};
use super::{OutboxError, Schema};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 1000;

/// The states of `deliveries.status`.
pub const STATUSES: [&str; 4] = ["pending", "delivered", "failed", "dead"];

#[derive(Debug, Clone)]
pub struct ListQuery {
    pub status: Option<String>,
    pub limit: i64,
    /// Only deliveries older (smaller id) than this one.
    pub before: Option<i64>,
    /// Only deliveries whose sequence number is above this one, in sequence order.
    pub after_sequence: Option<i64>,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            status: None,
            limit: DEFAULT_LIMIT,
            before: None,
            after_sequence: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub id: i64,
    pub event_id: String,
    pub event: String,
    pub status: String,
    pub http_status: Option<i32>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The subscription's sequence number of this delivery (sent as X-Walhook-Sequence).
    pub sequence: Option<i64>,
}

const DELIVERY_COLUMNS: &str = "id, event_id, event, status, last_http_status, attempts, \
     last_error, next_attempt_at, finished_at, created_at, sequence";

impl DeliveryRecord {
    fn from_row(r: &Row) -> Result<DeliveryRecord, tokio_postgres::Error> {
        Ok(DeliveryRecord {
            id: r.try_get("id")?,
            event_id: r.try_get("event_id")?,
            event: r.try_get("event")?,
            status: r.try_get("status")?,
            http_status: r.try_get("last_http_status")?,
            attempts: r.try_get("attempts")?,
            last_error: r.try_get("last_error")?,
            next_attempt_at: r.try_get("next_attempt_at")?,
            finished_at: r.try_get("finished_at")?,
            created_at: r.try_get("created_at")?,
            sequence: r.try_get("sequence")?,
        })
    }

    /// Delivered or dead: no worker will touch it again unless it is replayed.
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "delivered" | "dead")
    }
}

/// A subscription's deliveries, newest first; with `after_sequence`, those numbered above it,
/// lowest number first; with `status`, only those in that state.
pub async fn list(
    client: &Client,
    schema: &Schema,
    subscription: &str,
    q: &ListQuery,
) -> Result<Vec<DeliveryRecord>, OutboxError> {
    // id breaks ties only where rows were numbered by hand (never by walhook).
    let order = if q.after_sequence.is_some() {
        "sequence, id"
    } else {
        "sequence DESC, id DESC"
    };
    let page = format!(
        "subscription_id = $1
         AND ($3::int8 IS NULL OR (id < $3 AND sequence < {before}))
         AND ($5::int8 IS NULL OR sequence > $5)",
        before = sequence_bound(schema, "$1", "$3", i64::MAX),
    );
    // Statuses as operators see them come from `delivery_states`: the delivered cursor's rows
    // stay `pending` on disk (sql/015). Filtering on that derived status walked the whole
    // history; a filtered page first picks its candidates from the stored columns, each branch
    // on an index in the page's order, and the view then only derives the page's own rows.
    let within = match q.status.as_deref() {
        None => String::new(),
        Some(status) => {
            let d = schema.table("deliveries");
            let branches = stored_as(
                status,
                &cursor_sequence(&schema.table("delivered_runs"), "$1"),
            )
            .iter()
            .map(|cond| {
                format!("(SELECT id FROM {d} WHERE {page} AND {cond} ORDER BY {order} LIMIT $4)")
            })
            .collect::<Vec<_>>();
            if branches.is_empty() {
                // Not a status walhook writes (callers check against STATUSES): nothing.
                "AND false".to_string()
            } else {
                format!("AND id IN ({})", branches.join(" UNION ALL "))
            }
        }
    };
    let rows = client
        .query(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM {view} WHERE {page}
                   AND ($2::text IS NULL OR status = $2) {within}
                 ORDER BY {order} LIMIT $4",
                view = schema.table("delivery_states"),
            ),
            &[
                &subscription,
                &q.status,
                &q.before,
                &q.limit,
                &q.after_sequence,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(DeliveryRecord::from_row)
        .collect::<Result<_, _>>()?)
}

/// The stored rows that `delivery_states` shows in `status`, as conditions on `deliveries`'
/// own columns whose union is exactly those rows (`cursor`: the subscription's delivered
/// cursor, a SQL expression). Below the cursor a `pending` row never attempted was delivered
/// by it; every other row shows what it stores.
fn stored_as(status: &str, cursor: &str) -> Vec<String> {
    match status {
        "dead" => vec!["status = 'dead'".into()],
        "failed" => vec!["status = 'failed'".into()],
        "pending" => vec![
            // After the cursor (or without one), every pending row is waiting ...
            format!("status = 'pending' AND sequence > coalesce({cursor}, -1)"),
            // ... and at or below it, only those attempted before: replays.
            format!("status = 'pending' AND last_attempt_at IS NOT NULL AND sequence <= {cursor}"),
        ],
        "delivered" => vec![format!(
            "(status = 'delivered' OR ({} AND sequence <= {cursor}))",
            run_may_cover("")
        )],
        _ => Vec::new(),
    }
}

/// SQL: the sequence number of the subscription's delivery `id` (both SQL expressions), or
/// `missing` when that row is gone (pruned between two pages).
///
/// Pages are keyed by delivery id, and a subscription's id order is its sequence order
/// (sql/014), but only `(subscription_id, sequence)` is indexed: a page bounded by this
/// sequence starts where it should in the index instead of walking from the newest entry. The
/// id bound stays next to it, so a pruned key row still gives the right page, only slower.
pub(super) fn sequence_bound(
    schema: &Schema,
    subscription: &str,
    id: &str,
    missing: i64,
) -> String {
    format!(
        "coalesce((SELECT k.sequence FROM {} k WHERE k.id = {id} AND k.subscription_id = {subscription}), {missing})",
        schema.table("deliveries")
    )
}

#[derive(Debug)]
pub enum ReplayOne {
    Replayed(DeliveryRecord),
    NotFound,
    /// Not finished: queued, in flight, or waiting for its next attempt.
    Unfinished,
}

/// A CTE counting a replay of the subscription of the rows in `u` (sql/013): the instance that
/// owns it notices the count move and its pump reads the outbox, whichever process replayed.
fn bump_replays(schema: &Schema) -> String {
    format!(
        "b AS (UPDATE {} SET replays = replays + 1
               WHERE subscription_id = (SELECT subscription_id FROM u LIMIT 1))",
        schema.table("sequences")
    )
}

/// Puts one delivery back to `pending`, due now (see module doc).
pub async fn replay_one(
    client: &Client,
    schema: &Schema,
    subscription: &str,
    delivery: i64,
) -> Result<ReplayOne, OutboxError> {
    let row = client
        .query_opt(
            &format!(
                "WITH t AS (
                     SELECT id, last_http_status, last_attempt_at, last_duration_ms FROM {}
                     WHERE id = $1 AND subscription_id = $2 AND status IN ('delivered', 'dead')),
                 u AS (
                     UPDATE {} d SET status = 'pending', attempts = 0, next_attempt_at = now(),
                         finished_at = NULL, last_error = NULL,
                         last_http_status = t.last_http_status,
                         last_duration_ms = t.last_duration_ms,
                         -- A replayed row keeps a `last_attempt_at` (one the delivered cursor
                         -- recorded takes its run's): a `pending` row attempted before is never
                         -- taken for one the cursor delivered (sql/015).
                         last_attempt_at = coalesce(t.last_attempt_at, d.finished_at, now())
                     FROM t WHERE d.id = t.id
                     RETURNING d.*),
                 {}
                 SELECT {DELIVERY_COLUMNS} FROM u",
                schema.table("delivery_states"),
                schema.table("deliveries"),
                bump_replays(schema),
            ),
            &[&delivery, &subscription],
        )
        .await?;
    if let Some(r) = row {
        return Ok(ReplayOne::Replayed(DeliveryRecord::from_row(&r)?));
    }
    let exists = client
        .query_opt(
            &format!(
                "SELECT 1 FROM {} WHERE id = $1 AND subscription_id = $2",
                schema.table("deliveries")
            ),
            &[&delivery, &subscription],
        )
        .await?;
    Ok(if exists.is_some() {
        ReplayOne::Unfinished
    } else {
        ReplayOne::NotFound
    })
}

/// Puts every dead letter of the subscription (dead-lettered at or after `since`, when given)
/// back to `pending`; returns how many.
pub async fn replay_dead(
    client: &Client,
    schema: &Schema,
    subscription: &str,
    since: Option<DateTime<Utc>>,
) -> Result<u64, OutboxError> {
    let row = client
        .query_one(
            &format!(
                "WITH u AS (
                     UPDATE {} d SET status = 'pending', attempts = 0, next_attempt_at = now(),
                         finished_at = NULL, last_error = NULL,
                         last_attempt_at = coalesce(d.last_attempt_at, d.finished_at, now())
                     WHERE subscription_id = $1 AND status = 'dead'
                       AND ($2::timestamptz IS NULL OR finished_at >= $2)
                     RETURNING subscription_id),
                 {}
                 SELECT count(*) FROM u",
                schema.table("deliveries"),
                bump_replays(schema),
            ),
            &[&subscription, &since],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}
