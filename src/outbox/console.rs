//! What the web console reads beyond the API's listing: one delivery with its payload, its
//! attempts, per-subscription health of the last hour, and the newest deliveries of a
//! subscription for the live page.
//!
//! Guarantees:
//! - read-only: nothing here writes;
//! - every statement is bounded: by a LIMIT, or by an index range over the last hour of finished
//!   deliveries (`deliveries_finished`) and the unfinished ones (`deliveries_sub_due`), so the
//!   overview's cost follows the last hour's traffic, not the table's size;
//! - a statement only ever reads deliveries of the subscription it names (except [`health`],
//!   which groups by subscription).

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::{OutboxError, Schema};

/// One delivery with what was (or will be) sent.
#[derive(Debug, Clone)]
pub struct DeliveryBody {
    pub id: i64,
    pub event_id: String,
    pub event: String,
    pub status: String,
    pub ordering_key: String,
    pub payload: String,
    pub sequence: Option<i64>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub attempted_at: DateTime<Utc>,
    pub duration_ms: Option<i32>,
    pub http_status: Option<i32>,
    pub error_kind: Option<String>,
    pub response_body: Option<String>,
}

/// The last hour of one subscription, as the overview shows it.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub subscription: String,
    /// When its latest delivery of the last hour succeeded.
    pub last_success: Option<DateTime<Utc>>,
    /// The error of its most recent failed or dead delivery, and when that delivery was created.
    pub last_error: Option<(DateTime<Utc>, String)>,
    /// Enqueue → 2xx of the deliveries delivered in the last hour, in milliseconds.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The newest deliveries of a subscription, for the live page.
#[derive(Debug, Clone)]
pub struct LiveRow {
    pub id: i64,
    pub event: String,
    pub payload: String,
    pub created_at: DateTime<Utc>,
}

/// Longest response body shown per attempt (the worker stores bounded bodies already).
const BODY_SHOWN: i32 = 8192;

pub async fn delivery(
    client: &Client,
    schema: &Schema,
    subscription: &str,
    id: i64,
) -> Result<Option<DeliveryBody>, OutboxError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT id, event_id, event, status, ordering_key, payload, sequence, attempts,
                        last_error, created_at, finished_at
                 FROM {} WHERE id = $1 AND subscription_id = $2",
                schema.table("delivery_states")
            ),
            &[&id, &subscription],
        )
        .await?;
    Ok(row.map(|r| DeliveryBody {
        id: r.get(0),
        event_id: r.get(1),
        event: r.get(2),
        status: r.get(3),
        ordering_key: r.get(4),
        payload: r.get(5),
        sequence: r.get(6),
        attempts: r.get(7),
        last_error: r.get(8),
        created_at: r.get(9),
        finished_at: r.get(10),
    }))
}

/// The attempts of one delivery, oldest first, at most `limit`.
pub async fn attempts(
    client: &Client,
    schema: &Schema,
    delivery: i64,
    limit: i64,
) -> Result<Vec<AttemptRow>, OutboxError> {
    let rows = client
        .query(
            &format!(
                // `all_attempts`: a first-attempt success has no attempt row, only its
                // outcome on the delivery (sql/012).
                "SELECT attempted_at, duration_ms, http_status, error_kind,
                        left(response_body, {BODY_SHOWN})
                 FROM {} WHERE delivery_id = $1 ORDER BY attempted_at, id LIMIT $2",
                schema.table("all_attempts")
            ),
            &[&delivery, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AttemptRow {
            attempted_at: r.get(0),
            duration_ms: r.get(1),
            http_status: r.get(2),
            error_kind: r.get(3),
            response_body: r.get(4),
        })
        .collect())
}

/// Per subscription that had traffic or errors: last success and latency percentiles of the
/// last hour, and its latest error among unfinished and dead deliveries.
pub async fn health(client: &Client, schema: &Schema) -> Result<Vec<Health>, OutboxError> {
    let d = schema.table("deliveries");
    let runs = schema.table("delivered_runs");
    // Deliveries finished in the last hour: those recorded on their rows, and those of the
    // delivered cursor's runs written in that hour (sql/015; their rows stay `pending`).
    let sql = format!(
        "WITH done AS (
             SELECT subscription_id AS s, finished_at, created_at FROM {d}
             WHERE status = 'delivered' AND finished_at > now() - interval '1 hour'
             UNION ALL
             SELECT r.subscription_id, r.recorded_at, x.created_at
             FROM {runs} r JOIN {d} x ON x.subscription_id = r.subscription_id
                 AND x.sequence BETWEEN r.first_sequence AND r.last_sequence
             WHERE r.recorded_at > now() - interval '1 hour'
               AND x.status = 'pending' AND x.last_attempt_at IS NULL),
         ok AS (
             SELECT s, max(finished_at) AS last_ok,
                    percentile_cont(0.5) WITHIN GROUP
                        (ORDER BY extract(epoch FROM finished_at - created_at)) * 1000 AS p50,
                    percentile_cont(0.99) WITHIN GROUP
                        (ORDER BY extract(epoch FROM finished_at - created_at)) * 1000 AS p99
             FROM done GROUP BY 1),
         bad AS (
             SELECT DISTINCT ON (subscription_id) subscription_id AS s, created_at, last_error
             FROM {d} WHERE status IN ('failed', 'dead') AND last_error IS NOT NULL
             ORDER BY subscription_id, id DESC)
         SELECT coalesce(ok.s, bad.s), ok.last_ok, ok.p50::float8, ok.p99::float8,
                bad.created_at, bad.last_error
         FROM ok FULL JOIN bad ON ok.s = bad.s"
    );
    let rows = client.query(&sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| Health {
            subscription: r.get(0),
            last_success: r.get(1),
            p50_ms: r.get(2),
            p99_ms: r.get(3),
            last_error: match (r.get(4), r.get(5)) {
                (Some(t), Some(e)) => Some((t, e)),
                _ => None,
            },
        })
        .collect())
}

/// The highest delivery id of the subscription (0 without any): the live page starts after it.
pub async fn newest_id(
    client: &Client,
    schema: &Schema,
    subscription: &str,
) -> Result<i64, OutboxError> {
    Ok(client
        .query_one(
            &format!(
                // The newest by sequence is the newest by id (sql/014), and indexed.
                "SELECT coalesce((SELECT id FROM {} WHERE subscription_id = $1
                                  ORDER BY sequence DESC LIMIT 1), 0)::int8",
                schema.table("deliveries")
            ),
            &[&subscription],
        )
        .await?
        .get(0))
}

/// Deliveries of the subscription with an id above `after`, oldest first, at most `limit`.
pub async fn after(
    client: &Client,
    schema: &Schema,
    subscription: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<LiveRow>, OutboxError> {
    let rows = client
        .query(
            &format!(
                "SELECT id, event, payload, created_at FROM {}
                 WHERE subscription_id = $1 AND id > $2 AND sequence > {after}
                 ORDER BY sequence, id LIMIT $3",
                schema.table("deliveries"),
                after = super::deliveries::sequence_bound(schema, "$1", "$2", 0),
            ),
            &[&subscription, &after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| LiveRow {
            id: r.get(0),
            event: r.get(1),
            payload: r.get(2),
            created_at: r.get(3),
        })
        .collect())
}
