//! The delivery queue's SQL: claim, renew, release, and record results.
//!
//! Guarantees:
//! - a claim leases rows to one worker (`leased_by`) until `lease_until`; rows whose lease
//!   expired (a crashed worker) are claimable again, rows under a live lease never are;
//! - only the oldest unfinished delivery of a (subscription, ordering key) is claimable, so a key
//!   goes out in commit order and a failing delivery blocks only its own key (a table without a
//!   primary key has the empty key and no ordering);
//! - a result is written only while the writer still holds the lease, and the attempt row and
//!   the delivery's new state are written in one statement.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::outbox::{OutboxError, Schema};

/// A leased delivery, ready to send.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub event_id: String,
    pub event: String,
    pub ordering_key: String,
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: i32,
}

/// The new state of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewStatus {
    Delivered,
    Failed { retry_in: Duration },
    Dead,
}

/// One attempt's result, to be recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub id: i64,
    pub status: NewStatus,
    pub attempted_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub http_status: Option<i32>,
    pub error_kind: Option<&'static str>,
    pub error: Option<String>,
    pub response_body: String,
}

/// SQL for one outbox schema, prepared as text once.
#[derive(Debug, Clone)]
pub struct Queue {
    claim: String,
    renew: String,
    release: String,
    record: String,
}

impl Queue {
    pub fn new(schema: &Schema) -> Queue {
        let d = schema.table("deliveries");
        let a = schema.table("attempts");
        Queue {
            claim: format!(
                "UPDATE {d} SET lease_until = now() + $3 * interval '1 millisecond', leased_by = $4
                 WHERE id IN (
                     SELECT c.id FROM {d} c
                     WHERE c.subscription_id = $1 AND c.status IN ('pending', 'failed')
                       AND c.next_attempt_at <= now()
                       AND (c.lease_until IS NULL OR c.lease_until < now())
                       AND (c.ordering_key = '' OR NOT EXISTS (
                           SELECT 1 FROM {d} o
                           WHERE o.subscription_id = c.subscription_id
                             AND o.ordering_key = c.ordering_key
                             AND o.status IN ('pending', 'failed') AND o.id < c.id))
                     ORDER BY c.next_attempt_at, c.id
                     LIMIT $2
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, event_id, event, ordering_key, payload, attempts"
            ),
            renew: format!(
                "UPDATE {d} SET lease_until = now() + $3 * interval '1 millisecond'
                 WHERE id = ANY($1) AND leased_by = $2 AND status IN ('pending', 'failed')"
            ),
            release: format!(
                "UPDATE {d} SET lease_until = NULL, leased_by = NULL
                 WHERE id = ANY($1) AND leased_by = $2 AND status IN ('pending', 'failed')"
            ),
            record: format!(
                "WITH r AS (
                     SELECT * FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::timestamptz[],
                                          $5::int[], $6::int[], $7::text[], $8::text[], $9::text[])
                         AS r(id, status, retry_in, at, duration_ms, http_status, error_kind, error, body)),
                 u AS (
                     UPDATE {d} d SET status = r.status, attempts = d.attempts + 1,
                         last_http_status = r.http_status, last_error = r.error,
                         next_attempt_at = CASE WHEN r.status = 'failed'
                             THEN now() + r.retry_in * interval '1 second' ELSE d.next_attempt_at END,
                         lease_until = NULL, leased_by = NULL,
                         finished_at = CASE WHEN r.status IN ('delivered', 'dead') THEN now() END
                     FROM r WHERE d.id = r.id AND d.leased_by = $10
                     RETURNING d.id)
                 INSERT INTO {a} (delivery_id, attempted_at, duration_ms, http_status, error_kind, response_body)
                 SELECT r.id, r.at, r.duration_ms, r.http_status, r.error_kind, r.body
                 FROM r JOIN u ON u.id = r.id"
            ),
        }
    }

    /// Leases up to `limit` due deliveries of one subscription to `worker`.
    pub async fn claim(
        &self,
        client: &Client,
        subscription: &str,
        limit: i64,
        lease: Duration,
        worker: Uuid,
    ) -> Result<Vec<Claimed>, OutboxError> {
        let rows = client
            .query(
                &self.claim,
                &[&subscription, &limit, &(lease.as_millis() as f64), &worker],
            )
            .await?;
        let mut out: Vec<Claimed> = rows
            .iter()
            .map(|r| Claimed {
                id: r.get(0),
                event_id: r.get(1),
                event: r.get(2),
                ordering_key: r.get(3),
                payload: r.get(4),
                attempts: r.get(5),
            })
            .collect();
        // RETURNING does not keep the subquery's order; send oldest first.
        out.sort_unstable_by_key(|c| c.id);
        Ok(out)
    }

    pub async fn renew(
        &self,
        client: &Client,
        ids: &[i64],
        worker: Uuid,
        lease: Duration,
    ) -> Result<u64, OutboxError> {
        Ok(client
            .execute(&self.renew, &[&ids, &worker, &(lease.as_millis() as f64)])
            .await?)
    }

    /// Gives leased rows back without consuming an attempt (breaker opened, shutdown).
    pub async fn release(
        &self,
        client: &Client,
        ids: &[i64],
        worker: Uuid,
    ) -> Result<u64, OutboxError> {
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(client.execute(&self.release, &[&ids, &worker]).await?)
    }

    /// Records a batch of results; returns how many were still held by `worker`.
    pub async fn record(
        &self,
        client: &Client,
        batch: &[Recorded],
        worker: Uuid,
    ) -> Result<u64, OutboxError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
        let status: Vec<&str> = batch
            .iter()
            .map(|r| match r.status {
                NewStatus::Delivered => "delivered",
                NewStatus::Failed { .. } => "failed",
                NewStatus::Dead => "dead",
            })
            .collect();
        let retry_in: Vec<f64> = batch
            .iter()
            .map(|r| match r.status {
                NewStatus::Failed { retry_in } => retry_in.as_secs_f64(),
                _ => 0.0,
            })
            .collect();
        let at: Vec<DateTime<Utc>> = batch.iter().map(|r| r.attempted_at).collect();
        let dur: Vec<i32> = batch.iter().map(|r| r.duration_ms).collect();
        let http: Vec<Option<i32>> = batch.iter().map(|r| r.http_status).collect();
        let kind: Vec<Option<&str>> = batch.iter().map(|r| r.error_kind).collect();
        let err: Vec<Option<&str>> = batch.iter().map(|r| r.error.as_deref()).collect();
        let body: Vec<&str> = batch.iter().map(|r| r.response_body.as_str()).collect();
        Ok(client
            .execute(
                &self.record,
                &[
                    &ids, &status, &retry_in, &at, &dur, &http, &kind, &err, &body, &worker,
                ],
            )
            .await?)
    }
}

/// 410 Gone: the subscription stops receiving (routing and delivery) until someone reactivates it.
pub async fn deactivate(
    client: &Client,
    schema: &Schema,
    subscription: &str,
    reason: &str,
) -> Result<bool, OutboxError> {
    let n = client
        .execute(
            &format!(
                "UPDATE {} SET active = false, deactivated_at = now(), deactivated_reason = $2,
                     updated_at = now()
                 WHERE id = $1 AND active",
                schema.table("subscriptions")
            ),
            &[&subscription, &reason],
        )
        .await?;
    Ok(n > 0)
}
