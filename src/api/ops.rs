//! Operational endpoints, without authentication: `/healthz`, `/readyz`, `/metrics`.
//!
//! Guarantees:
//! - `/healthz` answers 200 whenever the process serves HTTP; it touches no database;
//! - `/readyz` is 200 only while the slot streams and the outbox answers `SELECT 1`, else 503
//!   with the reason;
//! - `/metrics` always answers 200 with the process counters; figures read from the databases
//!   (pending and dead deliveries per subscription, slot lag) are left out when a database does
//!   not answer within [`DB_WAIT`], so a scrape never hangs or fails because of a database;
//! - these endpoints reveal counts and subscription ids only, never URLs or secrets.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::Ctx;
use crate::metrics::DbGauges;
use crate::outbox::{self, deliveries};

/// Longest wait for a database during a probe or scrape.
const DB_WAIT: Duration = Duration::from_secs(2);

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(ctx): State<Ctx>) -> Response {
    let not_ready = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": reason })),
        )
            .into_response()
    };
    if !ctx.state.streaming.load(Ordering::Relaxed) {
        return not_ready("the replication slot is not streaming");
    }
    let outbox_ok = tokio::time::timeout(DB_WAIT, async {
        let client = ctx.state.outbox.get().await.ok()?;
        outbox::ping(&client).await.ok()
    })
    .await
    .ok()
    .flatten()
    .is_some();
    if !outbox_ok {
        return not_ready("the outbox database does not answer");
    }
    Json(json!({ "status": "ready" })).into_response()
}

pub async fn metrics(State(ctx): State<Ctx>) -> Response {
    let (queues, lag) = tokio::join!(
        tokio::time::timeout(DB_WAIT, queue_gauges(&ctx)),
        tokio::time::timeout(DB_WAIT, slot_lag(&ctx)),
    );
    let (pending, dead) = queues.ok().flatten().unwrap_or_default();
    let gauges = DbGauges {
        pending,
        dead,
        slot_lag_bytes: lag.ok().flatten(),
        streaming: ctx.state.streaming.load(Ordering::Relaxed),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ctx.state.metrics.render(&gauges),
    )
        .into_response()
}

type PerSub = Vec<(String, i64)>;

/// Unfinished and dead deliveries per subscription, zeros included so that a gauge drops to 0
/// rather than disappearing. Each count is an index range scan of one subscription.
async fn queue_gauges(ctx: &Ctx) -> Option<(PerSub, PerSub)> {
    let client = ctx.state.outbox.get().await.ok()?;
    let counts = deliveries::counts(&client, &ctx.state.schema)
        .await
        .map_err(|e| tracing::warn!(error = %e, "metrics: reading outbox gauges failed"))
        .ok()?;
    let pending = counts
        .iter()
        .map(|c| (c.subscription.clone(), c.unfinished))
        .collect();
    let dead = counts
        .into_iter()
        .map(|c| (c.subscription, c.dead))
        .collect();
    Some((pending, dead))
}

/// WAL the slot has not confirmed yet, in bytes; None when unknown (no slot, or a standby).
async fn slot_lag(ctx: &Ctx) -> Option<i64> {
    let client = ctx.source().await.ok()?;
    match crate::pg::catalog::slot_lag_bytes(&client, &ctx.state.slot).await {
        Ok(lag) => lag,
        Err(e) => {
            if e.is_closed() {
                ctx.reset_source().await;
            }
            None
        }
    }
}
