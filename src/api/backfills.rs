//! Backfills of a subscription: `POST /{id}/backfill`, `GET /{id}/backfills`,
//! `GET /{id}/backfills/{backfill_id}`, `DELETE /{id}/backfills/{backfill_id}` (cancel). The
//! statements are in [`crate::outbox::backfills`]; the runner is [`crate::ingest::backfill`].
//!
//! Guarantees:
//! - a backfill is stored only after every check passed: body shape (400), `chunk_size` and
//!   `pause_ms` ranges (422), a table with a primary key (422 saying why), and a `where` that is
//!   one boolean expression the planner accepts on the table (422 naming the problem); a refused
//!   request runs nothing on the table (`EXPLAIN` only plans, in a READ ONLY transaction);
//! - cancel is immediate: the row is `cancelled` when the response is sent and this process's
//!   runner is woken at once; at most the chunk already handed to the stream is still stored.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::auth::EnvHeader;
use super::common::{body_bytes, find, path_id, time};
use super::error::ApiError;
use super::Ctx;
use crate::outbox::backfills::{self, Backfill, BackfillRefused};

pub(crate) const DEFAULT_CHUNK: i32 = 1000;
pub(crate) const MAX_CHUNK: i64 = 10_000;
pub(crate) const MAX_PAUSE_MS: i64 = 60_000;
/// Backfills listed per subscription, newest first.
const LIST_LIMIT: i64 = 100;

pub(crate) fn format_id(id: i64) -> String {
    format!("bf_{id}")
}

fn parse_id(s: &str) -> Option<i64> {
    let digits = s.strip_prefix("bf_")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

/// Rows per second from the start to the end (or now, while it runs).
pub(crate) fn rate(b: &Backfill) -> f64 {
    let end = b.finished_at.unwrap_or_else(chrono::Utc::now);
    let secs = (end - b.started_at).num_milliseconds() as f64 / 1000.0;
    if secs > 0.0 {
        (b.rows_done as f64 / secs).round()
    } else {
        0.0
    }
}

pub(super) fn view(b: &Backfill) -> Value {
    let rate = rate(b);
    json!({
        "id": format_id(b.id),
        "webhookId": b.subscription_id,
        "state": b.state,
        "where": b.where_sql,
        "chunkSize": b.chunk_size,
        "pauseMs": b.pause_ms,
        "rowsDone": b.rows_done,
        "rowsEstimated": b.rows_estimated,
        "rowsPerSecond": rate,
        "startedAt": time(b.started_at),
        "finishedAt": b.finished_at.map(time),
        "error": b.error,
    })
}

struct Request {
    where_sql: Option<String>,
    chunk_size: i32,
    pause_ms: i32,
}

fn parse(body: &[u8]) -> Result<Request, ApiError> {
    let mut req = Request {
        where_sql: None,
        chunk_size: DEFAULT_CHUNK,
        pause_ms: 0,
    };
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(req);
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
        message: format!("the body is not valid JSON: {e}"),
        field: None,
    })?;
    let Value::Object(m) = v else {
        return Err(ApiError::BadRequest {
            message: "the body must be a JSON object".into(),
            field: None,
        });
    };
    for (k, v) in m {
        match k.as_str() {
            "where" => match v {
                Value::Null => {}
                Value::String(s) => req.where_sql = Some(s),
                _ => return Err(ApiError::bad("where", "where must be a string")),
            },
            "chunk_size" | "chunkSize" => {
                req.chunk_size = int_in("chunk_size", &v, 1, MAX_CHUNK)?;
            }
            "pause_ms" | "pauseMs" => {
                req.pause_ms = int_in("pause_ms", &v, 0, MAX_PAUSE_MS)?;
            }
            other => {
                return Err(ApiError::bad(
                    other,
                    format!("unknown field {other:?}; expected where, chunk_size, pause_ms"),
                ))
            }
        }
    }
    Ok(req)
}

pub(super) async fn create(
    State(ctx): State<Ctx>,
    _: EnvHeader,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = path_id(id)?;
    let req = parse(&body_bytes(body)?)?;
    let b = start(
        &ctx,
        &id,
        req.where_sql.as_deref(),
        req.chunk_size,
        req.pause_ms,
    )
    .await?;
    tracing::info!(webhook = %id, backfill = b.id, "backfill started through the API");
    Ok((StatusCode::ACCEPTED, Json(view(&b))))
}

/// Starts a backfill of subscription `id` after every check (the table has a primary key, the
/// `where` is one boolean expression the planner accepts); shared with the web console.
pub(crate) async fn start(
    ctx: &Ctx,
    id: &str,
    where_sql: Option<&str>,
    chunk_size: i32,
    pause_ms: i32,
) -> Result<Backfill, ApiError> {
    check_range("chunk_size", chunk_size.into(), 1, MAX_CHUNK)?;
    check_range("pause_ms", pause_ms.into(), 0, MAX_PAUSE_MS)?;
    let outbox = ctx.outbox().await?;
    let sub = find(&outbox, &ctx.state.schema, id).await?;
    // A connection of its own: the check runs a READ ONLY transaction.
    let mut source = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        crate::pg::tls::connect_sql(&ctx.state.source),
    )
    .await
    .map_err(|_| ApiError::Unavailable("source database: connection timed out".into()))?
    .map_err(|e| ApiError::from_db("source database", &e, true))?;
    backfills::table_info(&source, &sub.table)
        .await
        .map_err(|e| refused("table", e))?;
    let estimate = backfills::check_where(&mut source, &sub.table, where_sql)
        .await
        .map_err(|e| refused("table", e))?;
    let b = backfills::create(
        &outbox,
        &ctx.state.schema,
        id,
        where_sql,
        chunk_size,
        pause_ms,
        estimate,
    )
    .await?;
    ctx.state.backfills.send_modify(|n| *n += 1);
    Ok(b)
}

/// A refused backfill as the API's error: `where` problems name `where`, the others `field`.
pub(super) fn refused(field: &str, e: BackfillRefused) -> ApiError {
    match e {
        BackfillRefused::Db(e) => ApiError::from(e),
        BackfillRefused::BadWhere(m) => ApiError::invalid("where", format!("where {m}")),
        other => ApiError::invalid(field, other.to_string()),
    }
}

pub(super) async fn list(
    State(ctx): State<Ctx>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let client = ctx.outbox().await?;
    find(&client, &ctx.state.schema, &id).await?;
    let all = backfills::list(&client, &ctx.state.schema, &id, LIST_LIMIT).await?;
    Ok(Json(
        json!({ "backfills": all.iter().map(view).collect::<Vec<_>>() }),
    ))
}

fn no_backfill(b: &str) -> ApiError {
    ApiError::NotFound(format!("no backfill with id {b:?}"))
}

pub(super) async fn get_one(
    State(ctx): State<Ctx>,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Ok(Path((id, bid))) = ids else {
        return Err(ApiError::NotFound("no such backfill".into()));
    };
    let n = parse_id(&bid).ok_or_else(|| no_backfill(&bid))?;
    let client = ctx.outbox().await?;
    find(&client, &ctx.state.schema, &id).await?;
    let b = backfills::get(&client, &ctx.state.schema, &id, n)
        .await?
        .ok_or_else(|| no_backfill(&bid))?;
    Ok(Json(view(&b)))
}

pub(super) async fn cancel(
    State(ctx): State<Ctx>,
    _: EnvHeader,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Ok(Path((id, bid))) = ids else {
        return Err(ApiError::NotFound("no such backfill".into()));
    };
    Ok(Json(view(&cancel_by_id(&ctx, &id, &bid).await?)))
}

/// Cancels backfill `bid` (`bf_N`) of subscription `id`; shared with the web console.
pub(crate) async fn cancel_by_id(ctx: &Ctx, id: &str, bid: &str) -> Result<Backfill, ApiError> {
    let n = parse_id(bid).ok_or_else(|| no_backfill(bid))?;
    let client = ctx.outbox().await?;
    find(&client, &ctx.state.schema, id).await?;
    let b = backfills::cancel(&client, &ctx.state.schema, id, n)
        .await?
        .ok_or_else(|| no_backfill(bid))?;
    ctx.state.backfills.send_modify(|n| *n += 1);
    tracing::info!(webhook = %id, backfill = n, state = %b.state, "backfill cancel requested");
    Ok(b)
}

/// 422 naming `field` when `n` is outside `min..=max`.
fn check_range(field: &str, n: i64, min: i64, max: i64) -> Result<(), ApiError> {
    if !(min..=max).contains(&n) {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// `v` as an integer within `min..=max`: 400 when it is not an integer, 422 when out of range,
/// both naming `field`.
fn int_in(field: &str, v: &Value, min: i64, max: i64) -> Result<i32, ApiError> {
    let n = v
        .as_i64()
        .ok_or_else(|| ApiError::bad(field, format!("{field} must be an integer")))?;
    check_range(field, n, min, max)?;
    Ok(n as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_bodies() {
        assert_eq!(parse_id("bf_7"), Some(7));
        assert_eq!(parse_id("bf_0"), None);
        assert_eq!(parse_id("7"), None);
        let r = parse(br#"{"where": "id > 3", "chunk_size": 50}"#).unwrap();
        assert_eq!((r.where_sql.as_deref(), r.chunk_size), (Some("id > 3"), 50));
        assert_eq!(parse(b"").unwrap().chunk_size, DEFAULT_CHUNK);
        assert!(parse(br#"{"chunk_size": 0}"#).is_err());
        assert!(parse(br#"{"nope": 1}"#).is_err());
    }
}
