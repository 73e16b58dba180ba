//! What the web console reads beyond the API's listing: one delivery with its payload, its
//! attempts, per-subscription health of the last hour, and the newest deliveries of a
//! subscription for the live page.
//!
//! Guarantees:
//! - read-only: nothing here writes;
//! - every statement is bounded: by a LIMIT, or per subscription by index walks of bounded
//!   length (its newest rows, its newest runs, its newest failed and dead rows: sql/016), so the
//!   overview's cost follows the number of subscriptions, not the traffic or the table's size;
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

/// Successes of one subscription read at most, of each kind (recorded on their rows, or by the
/// delivered cursor's runs), for its last success and latency percentiles: its newest ones.
const HEALTH_SAMPLE: i64 = 500;
/// Runs of one subscription's delivered cursor read at most for that sample.
const HEALTH_RUNS: i64 = 50;

/// Per subscription that had traffic or errors: last success and latency percentiles over its
/// newest successes of the last hour (up to `HEALTH_SAMPLE` of each kind), and the latest
/// error among its failed and dead deliveries. Each subscription costs a few index walks of
/// bounded length, whatever the hour's traffic: an overview at 20k deliveries/s read every
/// success of the hour (0.56 s for 300,000).
pub async fn health(client: &Client, schema: &Schema) -> Result<Vec<Health>, OutboxError> {
    let d = schema.table("deliveries");
    let runs = schema.table("delivered_runs");
    let subs = schema.table("sequences");
    // Successes recorded on their rows: among the subscription's newest rows. Successes of the
    // delivered cursor: the rows its newest runs of the hour cover (sql/015; they stay
    // `pending`), finished when their run was recorded.
    let sql = format!(
        "WITH done AS (
             SELECT s.subscription_id AS s, x.finished_at, x.created_at
             FROM {subs} s CROSS JOIN LATERAL (
                 SELECT n.finished_at, n.created_at
                 FROM (SELECT status, finished_at, created_at FROM {d}
                       WHERE subscription_id = s.subscription_id
                       ORDER BY subscription_id, sequence DESC LIMIT {HEALTH_SAMPLE}) n
                 WHERE n.status = 'delivered' AND n.finished_at > now() - interval '1 hour'
                 UNION ALL
                 SELECT * FROM (
                     SELECT r.recorded_at, c.created_at
                     FROM (SELECT first_sequence, last_sequence, recorded_at FROM {runs}
                           WHERE subscription_id = s.subscription_id
                           ORDER BY subscription_id, last_sequence DESC LIMIT {HEALTH_RUNS}) r
                     CROSS JOIN LATERAL (
                         SELECT c.created_at FROM {d} c
                         WHERE c.subscription_id = s.subscription_id
                           AND c.sequence BETWEEN r.first_sequence AND r.last_sequence
                           AND {covered}
                         ORDER BY c.subscription_id, c.sequence DESC LIMIT {HEALTH_SAMPLE}) c
                     WHERE r.recorded_at > now() - interval '1 hour'
                     ORDER BY r.last_sequence DESC LIMIT {HEALTH_SAMPLE}) covered) x),
         ok AS (
             SELECT s, max(finished_at) AS last_ok,
                    percentile_cont(0.5) WITHIN GROUP
                        (ORDER BY extract(epoch FROM finished_at - created_at)) * 1000 AS p50,
                    percentile_cont(0.99) WITHIN GROUP
                        (ORDER BY extract(epoch FROM finished_at - created_at)) * 1000 AS p99
             FROM done GROUP BY 1),
         bad AS (
             SELECT s.subscription_id AS s, e.created_at, e.last_error
             FROM {subs} s CROSS JOIN LATERAL (
                 SELECT * FROM (
                     (SELECT sequence, created_at, last_error FROM {d}
                      WHERE subscription_id = s.subscription_id AND status = 'failed'
                        AND last_error IS NOT NULL
                      ORDER BY subscription_id, sequence DESC LIMIT 1)
                     UNION ALL
                     (SELECT sequence, created_at, last_error FROM {d}
                      WHERE subscription_id = s.subscription_id AND status = 'dead'
                        AND last_error IS NOT NULL
                      ORDER BY subscription_id, sequence DESC LIMIT 1)) f
                 ORDER BY sequence DESC LIMIT 1) e)
         SELECT coalesce(ok.s, bad.s), ok.last_ok, ok.p50::float8, ok.p99::float8,
                bad.created_at, bad.last_error
         FROM ok FULL JOIN bad ON ok.s = bad.s",
        covered = super::queue::run_may_cover("c."),
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
