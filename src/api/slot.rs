//! The replication slot's health and its recovery (issue #18): `GET /api/rest/_slot`,
//! `POST /api/rest/_slot/recover`.
//!
//! Guarantees: the API never touches the slot itself; a recovery request is handed to ingest
//! (which owns the slot) and answered 202 at once, or 409 when the slot is not broken; the view
//! names LSNs, times and counts only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::auth::EnvHeader;
use super::common::time;
use super::error::ApiError;
use super::Ctx;
use crate::outbox::slot as store;

/// The last diagnosis of the slot, and its latest recovery.
pub(super) async fn get(State(ctx): State<Ctx>) -> Result<Json<Value>, ApiError> {
    let mut view = ctx.state.slot_control.report().view();
    let client = ctx.outbox().await?;
    let last = store::latest_recovery(&client, &ctx.state.schema, &ctx.state.slot).await?;
    view["lastRecovery"] = match last {
        None => Value::Null,
        Some(r) => json!({
            "id": r.id,
            "reason": r.reason,
            "detail": r.detail,
            "missingSinceLsn": r.since_lsn.map(|l| l.to_string()),
            "missingSince": r.since_time.map(time),
            "slotStart": r.slot_lsn.to_string(),
            "startedAt": time(r.started_at),
            "finishedAt": r.finished_at.map(time),
            "backfills": r.backfill_ids.iter().map(|b| format!("bf_{b}")).collect::<Vec<_>>(),
        }),
    };
    Ok(Json(view))
}

/// Asks ingest to recover the slot.
pub(super) async fn recover(
    State(ctx): State<Ctx>,
    _: EnvHeader,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let control = &ctx.state.slot_control;
    if !control.request_recovery() {
        let r = control.report();
        return Err(ApiError::Conflict(format!(
            "slot {} is not lost, missing or moved (state {}); nothing to recover",
            r.slot,
            r.health.as_str()
        )));
    }
    tracing::info!(slot = %ctx.state.slot, "slot recovery requested through the API");
    let mut view = control.report().view();
    view["recovery"] = json!("requested");
    Ok((StatusCode::ACCEPTED, Json(view)))
}
