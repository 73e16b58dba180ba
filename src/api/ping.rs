//! Test sends: `POST /api/rest/_webhooks/{id}/test` and `walhook send-test`.
//!
//! Guarantees:
//! - the ping is signed and formatted exactly like a real delivery of the subscription (same
//!   format, signature scheme, secret and previous secret), with `"event": "PING"` and an id
//!   `evt_ping_<uuid>` that can never collide with a change's `evt_<lsn><ordinal>`;
//! - it goes through the delivery HTTP client, so the same egress rules apply (HTTPS, private
//!   networks, no redirects, timeouts);
//! - nothing is written to the outbox: a ping is not a delivery and is never retried;
//! - the receiver's answer is reported as data (`httpStatus`, `durationMs`, `error`); only a
//!   problem on our side is an error status.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

use super::auth::EnvHeader;
use super::common::{find, path_id};
use super::error::ApiError;
use super::Ctx;
use crate::config::{DeliveryConfig, TableName};
use crate::deliver::http::HttpSender;
use crate::deliver::request;
use crate::model::Subscription;

#[derive(Debug, Clone, PartialEq)]
pub struct PingResult {
    /// The receiver's status; None when no response arrived.
    pub http_status: Option<u16>,
    pub duration_ms: u64,
    /// Why the ping failed (connection, timeout, refused address, non-2xx), if it did.
    pub error: Option<String>,
    /// The start of the receiver's answer (shown by the web console; not part of the API's JSON).
    pub response_body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PingError {
    /// The ping could not be built or signed (a stored secret the scheme cannot use, say).
    #[error("cannot prepare the test send: {0}")]
    Prepare(String),
    /// The HTTP client could not be built from `[delivery]`.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The ping payload and its event id.
pub fn payload(project_id: &str, environment: &str, table: &TableName) -> (String, String) {
    let event_id = format!("evt_ping_{}", uuid::Uuid::new_v4().simple());
    let table = table.display_name();
    let body = json!({
        "id": event_id,
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        "project_id": project_id,
        "environment": environment,
        "table": table,
        "event": "PING",
        "record": {},
        "data": {},
        "changed_fields": [],
    });
    (event_id, body.to_string())
}

/// Builds, signs and sends one ping to the subscription's URL.
pub async fn send(
    sub: &Subscription,
    project_id: &str,
    environment: &str,
    delivery: &DeliveryConfig,
) -> Result<PingResult, PingError> {
    let (event_id, body) = payload(project_id, environment, &sub.table);
    transport(sub, delivery, &event_id, &body).await
}

/// Formats, signs and posts exactly as the delivery worker does for a real delivery.
async fn transport(
    sub: &Subscription,
    delivery: &DeliveryConfig,
    event_id: &str,
    payload: &str,
) -> Result<PingResult, PingError> {
    let now = Utc::now();
    // A ping has no row, hence no ordering key and no sequence number.
    let event = request::Event {
        payload,
        ordering_key: "",
        event_id,
        event: "PING",
        sequence: None,
    };
    // A batching subscription gets a batch of one, as its receiver parses every delivery.
    let (headers, body) = match sub.batch {
        None => request::build(sub, &event, now),
        Some(_) => request::render(sub, &event).and_then(|one| {
            let item = request::BatchItem {
                event_id,
                body: &one,
            };
            request::build_batch(sub, &[item], now)
        }),
    }
    .map_err(PingError::Prepare)?;
    let sender = HttpSender::new(delivery).map_err(|e| PingError::Client(e.to_string()))?;
    let outcome = sender.post(&sub.url, &headers, Bytes::from(body)).await;
    Ok(PingResult {
        http_status: outcome.http_status,
        duration_ms: u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
        error: outcome.error,
        response_body: outcome.response_body,
    })
}

impl PingResult {
    pub fn to_json(&self) -> Value {
        json!({
            "httpStatus": self.http_status,
            "durationMs": self.duration_ms,
            "error": self.error,
        })
    }
}

pub(super) async fn handler(
    State(ctx): State<Ctx>,
    _: EnvHeader,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let sub = {
        let client = ctx.outbox().await?;
        find(&client, &ctx.state.schema, &id).await?
    };
    let st = &ctx.state;
    match send(&sub, &st.project_id, &st.environment, &st.delivery).await {
        Ok(r) => {
            tracing::info!(webhook = %id, status = ?r.http_status, ms = r.duration_ms, "test send");
            Ok(Json(r.to_json()))
        }
        Err(PingError::Prepare(m)) => Err(ApiError::Unprocessable {
            message: format!("cannot prepare the test send: {m}"),
            field: None,
        }),
        Err(e @ PingError::Client(_)) => {
            tracing::error!(error = %e, "test send");
            Err(ApiError::Unavailable(e.to_string()))
        }
    }
}
