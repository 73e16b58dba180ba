//! Deliveries of a subscription: `GET /{id}/deliveries`, `POST /{id}/deliveries/{d}/replay` and
//! `POST /{id}/replay`. The statements are in [`crate::outbox::deliveries`], shared with the CLI
//! twins (`walhook deliveries list|replay`).
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
use serde_json::{json, Value};
use std::collections::HashMap;

use super::auth::EnvHeader;
use super::body;
use super::common::{body_bytes, find, path_id, time};
use super::error::ApiError;
use super::Ctx;
use crate::outbox::deliveries::{
    list, replay_dead, replay_one, DeliveryRecord, ListQuery, ReplayOne, MAX_LIMIT, STATUSES,
};

/// The Archie shape, as in `GET /api/rest/_webhooks/{id}`.
pub(super) fn summary(d: &DeliveryRecord) -> Value {
    json!({
        "id": format_id(d.id),
        "eventId": d.event_id,
        "status": d.status,
        "httpStatus": d.http_status,
        "attempts": d.attempts,
        "createdAt": time(d.created_at),
    })
}

/// The summary plus what an operator needs to decide on a replay.
fn detail(d: &DeliveryRecord) -> Value {
    let mut v = summary(d);
    let finished = d.is_finished();
    if let Value::Object(m) = &mut v {
        m.insert("event".into(), json!(d.event));
        m.insert("lastError".into(), json!(d.last_error));
        m.insert(
            "nextAttemptAt".into(),
            json!((!finished).then(|| time(d.next_attempt_at))),
        );
        m.insert("finishedAt".into(), json!(d.finished_at.map(time)));
        m.insert("sequence".into(), json!(d.sequence));
    }
    v
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
    if let Some(n) = params.get("after_sequence") {
        if q.before.is_some() {
            return Err(ApiError::bad(
                "after_sequence",
                "after_sequence: not with cursor (page on with nextAfterSequence)",
            ));
        }
        q.after_sequence = Some(n.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad(
                "after_sequence",
                "after_sequence: expected a sequence number (0 or more)",
            )
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
    find(&client, &ctx.state.schema, &id).await?;
    let rows = list(&client, &ctx.state.schema, &id, &q).await?;
    let full = rows.len() as i64 == q.limit;
    if q.after_sequence.is_some() {
        // Oldest first: the next page follows the last number of this one.
        let next = full.then(|| rows.last().and_then(|d| d.sequence)).flatten();
        return Ok(Json(json!({
            "deliveries": rows.iter().map(detail).collect::<Vec<_>>(),
            "nextCursor": null,
            "nextAfterSequence": next,
        })));
    }
    let next = full.then(|| rows.last().map(|d| format_id(d.id))).flatten();
    Ok(Json(json!({
        "deliveries": rows.iter().map(detail).collect::<Vec<_>>(),
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
    find(&client, &ctx.state.schema, &id).await?;
    match replay_one(&client, &ctx.state.schema, &id, delivery).await? {
        ReplayOne::Replayed(d) => {
            ctx.state.handoff.replayed(&id);
            tracing::info!(webhook = %id, delivery = %format_id(d.id), "delivery replayed");
            Ok(Json(json!({ "delivery": detail(&d) })))
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
    find(&client, &ctx.state.schema, &id).await?;
    let n = replay_dead(&client, &ctx.state.schema, &id, since).await?;
    if n > 0 {
        ctx.state.handoff.replayed(&id);
    }
    tracing::info!(webhook = %id, replayed = n, "dead letters replayed");
    Ok(Json(json!({ "replayed": n })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::deliveries::DEFAULT_LIMIT;

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
