//! Operational endpoints, without authentication: `/healthz`, `/readyz`, `/metrics`.
//!
//! Guarantees:
//! - `/healthz` answers 200 whenever the process serves HTTP; it touches no database;
//! - `/readyz` is 200 only while the slot streams and the outbox answers `SELECT 1`, else 503
//!   with the reason (a lost, missing or moved slot: what happened, since when, what to do);
//! - `/metrics` always answers 200 with the process counters; figures read from the databases
//!   (pending and dead deliveries per subscription, slot lag and retained WAL) are left out when a
//!   database does not answer within [`DB_WAIT`], so a scrape never hangs or fails because of a
//!   database; OpenMetrics when the scraper's `Accept` asks for it, else Prometheus text 0.0.4;
//! - these endpoints reveal counts and subscription ids only, never URLs or secrets.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::Ctx;
use crate::metrics::{DbGauges, Format};
use crate::outbox::{self, gauges};

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
    let slot = ctx.state.slot_control.report();
    if slot.health.is_broken() {
        return not_ready(&slot.message());
    }
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
    // A subscription left out of routing does not make walhook unready (the others are
    // served), but it is named here with why.
    let left_out: Vec<serde_json::Value> = ctx
        .state
        .metrics
        .left_out()
        .into_iter()
        .map(|(id, reason)| json!({ "subscription": id, "reason": reason }))
        .collect();
    Json(json!({ "status": "ready", "subscriptions_left_out": left_out })).into_response()
}

pub async fn metrics(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    let (queues, slot) = tokio::join!(
        tokio::time::timeout(DB_WAIT, queue_gauges(&ctx)),
        tokio::time::timeout(DB_WAIT, slot_gauges(&ctx)),
    );
    let queues = queues.ok().flatten().unwrap_or_default();
    let slot = slot.ok().flatten();
    let gauges = DbGauges {
        pending: queues
            .iter()
            .map(|q| (q.subscription.clone(), q.pending))
            .collect(),
        dead: queues
            .iter()
            .map(|q| (q.subscription.clone(), q.dead))
            .collect(),
        oldest_pending_seconds: queues
            .into_iter()
            .map(|q| (q.subscription, q.oldest_pending_seconds))
            .collect(),
        slot_lag_bytes: slot.and_then(|s| s.lag),
        slot_retained_bytes: slot.and_then(|s| s.retained),
        streaming: ctx.state.streaming.load(Ordering::Relaxed),
    };
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    (
        [(header::CONTENT_TYPE, format.content_type())],
        ctx.state.metrics.render_as(&gauges, format),
    )
        .into_response()
}

/// Unfinished and dead deliveries per subscription; None when the outbox does not answer.
async fn queue_gauges(ctx: &Ctx) -> Option<Vec<gauges::QueueCounts>> {
    let client = ctx.state.outbox.get().await.ok()?;
    gauges::queue_counts(&client, &ctx.state.schema)
        .await
        .map_err(|e| tracing::warn!(error = %e, "metrics: reading outbox gauges failed"))
        .ok()
}

/// The slot's lag and retained WAL; None when unknown (no slot, or a standby).
async fn slot_gauges(ctx: &Ctx) -> Option<crate::pg::catalog::SlotBytes> {
    let client = ctx.source().await.ok()?;
    match crate::pg::catalog::slot_bytes(&client, &ctx.state.slot).await {
        Ok(slot) => slot,
        Err(e) => {
            if matches!(&e, crate::pg::PgError::Sql(e) if e.is_closed()) {
                ctx.reset_source().await;
            }
            None
        }
    }
}
