//! Deliveries of a subscription: listing and replay. The SQL here is shared by the API handlers
//! and the CLI twins (`walhook deliveries list|replay`).
//!
//! Guarantees:
//! - a replay never puts a delivery in flight twice: only finished deliveries (delivered or
//!   dead) are replayed; an unfinished one may be in a worker's hands right now and is refused
//!   (409), never reset under the worker;
//! - a replayed delivery keeps its row, event id and payload bytes, so receivers deduplicate it
//!   by `X-Archie-Delivery` like any retry; it becomes `pending` with `attempts = 0`, due now,
//!   with its last error cleared;
//! - a replay only ever touches deliveries of the subscription named in the path;
//! - delivery ids are `del_<n>`; listing is newest first and keyset-paginated by id, so a page
//!   is stable while new deliveries arrive.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::HashMap;
use tokio_postgres::{Client, Row};

use super::auth::EnvHeader;
use super::body;
use super::error::ApiError;
use super::webhooks::{body_bytes, find, path_id, time};
use super::Ctx;
use crate::outbox::{OutboxError, Schema};

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
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            status: None,
            limit: DEFAULT_LIMIT,
            before: None,
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
}

const DELIVERY_COLUMNS: &str = "id, event_id, event, status, last_http_status, attempts, \
     last_error, next_attempt_at, finished_at, created_at";

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
        })
    }

    /// The Archie shape, as in `GET /api/rest/_webhooks/{id}`.
    pub fn summary(&self) -> Value {
        json!({
            "id": format_id(self.id),
            "eventId": self.event_id,
            "status": self.status,
            "httpStatus": self.http_status,
            "attempts": self.attempts,
            "createdAt": time(self.created_at),
        })
    }

    /// The summary plus what an operator needs to decide on a replay.
    pub fn detail(&self) -> Value {
        let mut v = self.summary();
        let finished = matches!(self.status.as_str(), "delivered" | "dead");
        if let Value::Object(m) = &mut v {
            m.insert("event".into(), json!(self.event));
            m.insert("lastError".into(), json!(self.last_error));
            m.insert(
                "nextAttemptAt".into(),
                json!((!finished).then(|| time(self.next_attempt_at))),
            );
            m.insert("finishedAt".into(), json!(self.finished_at.map(time)));
        }
        v
    }
}

pub fn format_id(id: i64) -> String {
    format!("del_{id}")
}

/// `del_<n>` → n.
pub fn parse_id(s: &str) -> Option<i64> {
    let digits = s.strip_prefix("del_")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

/// A subscription's deliveries, newest first.
pub async fn list(
    client: &Client,
    schema: &Schema,
    subscription: &str,
    q: &ListQuery,
) -> Result<Vec<DeliveryRecord>, OutboxError> {
    let rows = client
        .query(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM {} WHERE subscription_id = $1
                   AND ($2::text IS NULL OR status = $2)
                   AND ($3::int8 IS NULL OR id < $3)
                 ORDER BY id DESC LIMIT $4",
                schema.table("deliveries")
            ),
            &[&subscription, &q.status, &q.before, &q.limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(DeliveryRecord::from_row)
        .collect::<Result<_, _>>()?)
}

#[derive(Debug)]
pub enum ReplayOne {
    Replayed(DeliveryRecord),
    NotFound,
    /// Not finished: queued, in flight, or waiting for its next attempt.
    Unfinished,
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
                "UPDATE {} SET status = 'pending', attempts = 0, next_attempt_at = now(),
                     finished_at = NULL, last_error = NULL
                 WHERE id = $1 AND subscription_id = $2 AND status IN ('delivered', 'dead')
                 RETURNING {DELIVERY_COLUMNS}",
                schema.table("deliveries")
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
    Ok(client
        .execute(
            &format!(
                "UPDATE {} SET status = 'pending', attempts = 0, next_attempt_at = now(),
                     finished_at = NULL, last_error = NULL
                 WHERE subscription_id = $1 AND status = 'dead'
                   AND ($2::timestamptz IS NULL OR finished_at >= $2)",
                schema.table("deliveries")
            ),
            &[&subscription, &since],
        )
        .await?)
}

/// Parses `status`, `limit`, `cursor` of `GET /{id}/deliveries`.
pub fn parse_query(params: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery::default();
    if let Some(s) = params.get("status") {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::bad(
                "status",
                "status: expected pending, delivered, failed or dead",
            ));
        }
        q.status = Some(s.clone());
    }
    if let Some(l) = params.get("limit") {
        q.limit = l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad(
                    "limit",
                    format!("limit: expected an integer from 1 to {MAX_LIMIT}"),
                )
            })?;
    }
    if let Some(c) = params.get("cursor") {
        q.before = Some(parse_id(c).ok_or_else(|| {
            ApiError::bad("cursor", "cursor: expected a delivery id like \"del_42\"")
        })?);
    }
    Ok(q)
}

pub(super) async fn list_handler(
    State(ctx): State<Ctx>,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest {
        message: format!("invalid query string: {e}"),
        field: None,
    })?;
    let q = parse_query(&params)?;
    let client = ctx.outbox().await?;
    find(&**client, &ctx, &id, false).await?;
    let rows = list(&client, &ctx.state.schema, &id, &q).await?;
    let next = (rows.len() as i64 == q.limit)
        .then(|| rows.last().map(|d| format_id(d.id)))
        .flatten();
    Ok(Json(json!({
        "deliveries": rows.iter().map(DeliveryRecord::detail).collect::<Vec<_>>(),
        "nextCursor": next,
    })))
}

pub(super) async fn replay_one_handler(
    State(ctx): State<Ctx>,
    _: EnvHeader,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::NotFound("no such delivery for this webhook".into());
    let Ok(Path((id, delivery))) = ids else {
        return Err(not_found());
    };
    let id = path_id(Ok(Path(id)))?;
    let delivery = parse_id(&delivery).ok_or_else(not_found)?;
    let client = ctx.outbox().await?;
    find(&**client, &ctx, &id, false).await?;
    match replay_one(&client, &ctx.state.schema, &id, delivery).await? {
        ReplayOne::Replayed(d) => {
            tracing::info!(webhook = %id, delivery = %format_id(d.id), "delivery replayed");
            Ok(Json(json!({ "delivery": d.detail() })))
        }
        ReplayOne::NotFound => Err(not_found()),
        ReplayOne::Unfinished => Err(ApiError::Conflict(format!(
            "{} is not finished: it is queued or being attempted; only delivered or dead deliveries are replayed",
            format_id(delivery)
        ))),
    }
}

pub(super) async fn replay_dead_handler(
    State(ctx): State<Ctx>,
    _: EnvHeader,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let since = body::parse_replay(&body_bytes(body)?)?;
    let client = ctx.outbox().await?;
    find(&**client, &ctx, &id, false).await?;
    let n = replay_dead(&client, &ctx.state.schema, &id, since).await?;
    tracing::info!(webhook = %id, replayed = n, "dead letters replayed");
    Ok(Json(json!({ "replayed": n })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_queries() {
        assert_eq!(parse_id("del_42"), Some(42));
        assert_eq!(parse_id("del_"), None);
        assert_eq!(parse_id("del_-1"), None);
        assert_eq!(parse_id("del_0"), None);
        assert_eq!(parse_id("del_99999999999999999999"), None);
        assert_eq!(parse_id("42"), None);
        let p = |kv: &[(&str, &str)]| {
            parse_query(
                &kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(p(&[]).unwrap().limit, DEFAULT_LIMIT);
        assert!(p(&[("limit", "0")]).is_err());
        assert!(p(&[("limit", "1001")]).is_err());
        assert!(p(&[("status", "nope")]).is_err());
        let q = p(&[("status", "dead"), ("cursor", "del_7"), ("limit", "5")]).unwrap();
        assert_eq!(
            (q.status.as_deref(), q.before, q.limit),
            (Some("dead"), Some(7), 5)
        );
    }
}
