//! The Archie subscription endpoints: `POST/GET /api/rest/_webhooks`,
//! `GET/PATCH/DELETE /api/rest/_webhooks/{id}`.
//!
//! Guarantees:
//! - a subscription is stored only after every check passed: body shape (400), project and
//!   environment (403), values (422), and, on the source database, that the table exists, is a
//!   table, has the filter/select columns, and (with `manage_replica_identity = false`) already
//!   has REPLICA IDENTITY FULL, because `walhook run` would otherwise refuse to publish it;
//! - updates are read-modify-write under `SELECT … FOR UPDATE` ([`subscriptions::edit`]), so two
//!   concurrent PATCHes never lose each other's fields;
//! - subscriptions from config.toml are listed but never changed here (409): the file is their
//!   source of truth and the next start or SIGHUP would undo the change;
//! - DELETE removes the subscription and all its deliveries in one transaction, so nothing of it
//!   can be delivered afterwards (its URL and secret are gone with it) and no row is orphaned.
//!   Only an attempt already in flight at that moment may still reach the receiver.
//! - views never include `secret` or `previous_secret`, and show static headers' names with
//!   masked values.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::auth::{check_environment, missing, EnvHeaderMissing, ENVIRONMENT_HEADER};
use super::body::{self, WebhookFields};
use super::common::{body_bytes, find, no_webhook, path_id, time};
use super::deliveries::summary;
use super::error::ApiError;
use super::Ctx;
use crate::config::SignatureScheme;
use crate::model::egress::EgressPolicy;
use crate::model::subscription::Rules;
use crate::model::{Origin, Secret, Subscription};
use crate::outbox::backfills;
use crate::outbox::deliveries::{self, ListQuery};
use crate::outbox::subscriptions::{self, Stored};
use crate::route::check_columns;
use crate::source::setup::{check_manageable, describe_tables, ensure_replica_identity};
use crate::source::SourceError;

/// How many recent deliveries `GET /{id}` returns.
const RECENT_DELIVERIES: i64 = 50;

/// What a header's value reads as in responses.
const MASK: &str = "***";

/// A subscription's breaker as this process's pump last reported it (closed when it has not
/// reported: no failure yet, or another instance owns the subscription).
fn breaker_view(metrics: &crate::metrics::Metrics, id: &str) -> Value {
    use crate::metrics::BreakerState;
    let d = metrics.breaker_detail(id);
    let state = d.as_ref().map_or(BreakerState::Closed, |d| d.state);
    json!({
        "state": match state {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        },
        "reason": d.as_ref().and_then(|d| d.reason.clone()),
        "nextAttemptAt": d.and_then(|d| d.next_attempt).map(|t| time(t.into())),
    })
}

/// The public view of a subscription with its live state: its breaker, and whether routing
/// includes it (`left_out` with the reason when its table or a column it names is gone).
fn view_with_breaker(s: &Stored, metrics: &crate::metrics::Metrics) -> Value {
    let mut v = view(s);
    v["breaker"] = breaker_view(metrics, &s.id);
    let left_out = metrics.left_out().into_iter().find(|(id, _)| *id == s.id);
    v["routing"] = match left_out {
        Some((_, reason)) => json!({ "state": "left_out", "reason": reason }),
        None => json!({ "state": "routed", "reason": null }),
    };
    v
}

/// The public view of a subscription: no secrets.
pub(super) fn view(s: &Stored) -> Value {
    json!({
        "id": s.id,
        "table": s.table.display_name(),
        "events": s.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        "url": s.url,
        "active": s.active,
        "filter": s.filter.as_ref().map(|f| f.to_json()),
        "select": s.select,
        "format": s.format.as_str(),
        "signature": s.signature.as_str(),
        "source": s.origin.as_str(),
        "previousSecretExpiresAt": s.previous_secret_expires_at.map(time),
        // Header values are secrets (tokens): names only, values masked.
        "headers": s.headers.iter().map(|(n, _)| (n.clone(), Value::from(MASK))).collect::<serde_json::Map<_, _>>(),
        "signature_header": s.signature_header,
        "template": s.template,
        "rate_limit": s.rate_limit.map(|r| r.to_string()),
        "batch": s.batch.map(|b| json!({"max_events": b.max_events, "max_wait": b.max_wait_text()})),
        "deactivatedReason": s.deactivated_reason,
        "createdAt": time(s.created_at),
        "updatedAt": time(s.updated_at),
    })
}

fn config_owned(id: &str) -> ApiError {
    ApiError::Conflict(format!(
        "subscription {id:?} comes from config.toml; edit the file and send SIGHUP"
    ))
}

pub async fn list(State(ctx): State<Ctx>) -> Result<Json<Value>, ApiError> {
    let client = ctx.outbox().await?;
    let subs = subscriptions::load_all(&client, &ctx.state.schema).await?;
    Ok(Json(
        json!({ "webhooks": subs.iter().map(|s| view_with_breaker(s, &ctx.state.metrics)).collect::<Vec<_>>() }),
    ))
}

pub async fn get_one(
    State(ctx): State<Ctx>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let client = ctx.outbox().await?;
    let sub = find(&client, &ctx.state.schema, &id).await?;
    let recent = deliveries::list(
        &client,
        &ctx.state.schema,
        &id,
        &ListQuery {
            limit: RECENT_DELIVERIES,
            ..ListQuery::default()
        },
    )
    .await?;
    Ok(Json(json!({
        "webhook": view_with_breaker(&sub, &ctx.state.metrics),
        "deliveries": recent.iter().map(summary).collect::<Vec<_>>(),
    })))
}

pub async fn create(
    State(ctx): State<Ctx>,
    env_missing: Option<Extension<EnvHeaderMissing>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let fields = body::parse_webhook(&body_bytes(body)?)?;
    // The API's order of checks: every required field is named before identity is compared.
    for (name, present) in [
        ("projectId", fields.project_id.is_some()),
        ("environment", fields.environment.is_some()),
        ("table", fields.table.is_some()),
        ("events", fields.events.is_some()),
        ("url", fields.url.is_some()),
        ("secret", fields.secret.is_some()),
    ] {
        if !present {
            return Err(ApiError::bad(
                name,
                format!("missing required field {name}"),
            ));
        }
    }
    check_identity(&ctx, &fields, env_missing.is_some())?;
    let sub = create_from(&ctx, &fields).await?;
    let mut v = view(&sub);
    if fields.backfill == Some(true) {
        let client = ctx.outbox().await?;
        let started = backfills::list(&client, &ctx.state.schema, &sub.id, 1).await?;
        v["backfill"] = started.first().map_or(Value::Null, super::backfills::view);
    }
    Ok((StatusCode::CREATED, Json(v)))
}

/// Creates an API subscription from `fields` after every check (identity excepted: the caller
/// did that); shared by the handler and the web console.
pub(crate) async fn create_from(ctx: &Ctx, fields: &WebhookFields) -> Result<Stored, ApiError> {
    for (name, present) in [
        ("table", fields.table.is_some()),
        ("events", fields.events.is_some()),
        ("url", fields.url.is_some()),
        ("secret", fields.secret.is_some()),
    ] {
        if !present {
            return Err(ApiError::bad(
                name,
                format!("missing required field {name}"),
            ));
        }
    }
    let id = format!("wh_{}", uuid::Uuid::new_v4());
    let new = apply(&id, fields, None)?;
    validate(ctx, &new).await?;
    let backfill = fields.backfill == Some(true);
    if backfill {
        // Refused before anything is stored, with the reason (no primary key, say).
        let source = ctx.source().await?;
        backfills::table_info(&source, &new.table)
            .await
            .map_err(|e| super::backfills::refused("backfill", e))?;
    }
    let client = ctx.outbox().await?;
    let sub = subscriptions::create(&client, &ctx.state.schema, &new).await?;
    tracing::info!(id = %sub.id, table = %sub.table, "webhook created through the API");
    if backfill {
        // Marked at once (restarts never start another); it runs once routing includes the
        // subscription, which the runner waits for.
        crate::ingest::backfill::start_on_create(
            &client,
            &ctx.state.schema,
            std::slice::from_ref(&sub.id),
        )
        .await?;
    }
    // The pool's connection goes back before the wait for routing: held through it, creates
    // running together queued for the API's few connections instead of sharing one reload
    // (1,000 creates next to 9,000 subscriptions: bench/scale.sh).
    drop(client);
    ctx.state.subscriptions_changed().await;
    if backfill {
        ctx.state.backfills.send_modify(|n| *n += 1);
    }
    Ok(sub)
}

pub async fn update(
    State(ctx): State<Ctx>,
    env_missing: Option<Extension<EnvHeaderMissing>>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let fields = body::parse_webhook(&body_bytes(body)?)?;
    check_identity(&ctx, &fields, env_missing.is_some())?;
    Ok(Json(view(&update_from(&ctx, &id, &fields).await?)))
}

/// Overlays `fields` on subscription `id` after every check; shared with the web console.
pub(crate) async fn update_from(
    ctx: &Ctx,
    id: &str,
    fields: &WebhookFields,
) -> Result<Stored, ApiError> {
    let mut client = ctx.outbox().await?;
    let editing = subscriptions::edit(&mut client, &ctx.state.schema, id)
        .await?
        .ok_or_else(|| no_webhook(id))?;
    let current = &editing.current;
    if current.origin == Origin::Config {
        return Err(config_owned(id));
    }
    if fields.backfill.is_some() {
        return Err(ApiError::invalid(
            "backfill",
            format!("backfill applies when a webhook is created; to backfill it now, POST /api/rest/_webhooks/{id}/backfill"),
        ));
    }
    let mut new = apply(id, fields, Some(current))?;
    validate(ctx, &new).await?;
    // Re-enable after a 410 Gone when asked to, or when the URL the receiver gave up on changed.
    let reactivate = current.deactivated_reason.is_some()
        && (fields.active == Some(true) || (fields.active.is_none() && new.url != current.url));
    new.active |= reactivate;
    let sub = editing.update(&new).await?;
    tracing::info!(id = %sub.id, "webhook updated through the API");
    drop(client);
    ctx.state.subscriptions_changed().await;
    Ok(sub)
}

pub async fn delete(
    State(ctx): State<Ctx>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path_id(id)?;
    delete_by_id(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes API subscription `id` with its deliveries; shared with the web console.
pub(crate) async fn delete_by_id(ctx: &Ctx, id: &str) -> Result<(), ApiError> {
    let mut client = ctx.outbox().await?;
    let editing = subscriptions::edit(&mut client, &ctx.state.schema, id)
        .await?
        .ok_or_else(|| no_webhook(id))?;
    if editing.current.origin == Origin::Config {
        return Err(config_owned(id));
    }
    let removed = editing.delete().await?;
    tracing::info!(id = %id, deliveries = removed, "webhook deleted through the API");
    drop(client);
    ctx.state.subscriptions_changed().await;
    Ok(())
}

/// Body `projectId` and `environment`, when given, must be this walhook's; `environment` must be
/// in the body when the header was left out.
fn check_identity(ctx: &Ctx, f: &WebhookFields, env_header_missing: bool) -> Result<(), ApiError> {
    if let Some(p) = &f.project_id {
        if p != &ctx.state.project_id {
            return Err(ApiError::Forbidden {
                message: "projectId does not match this walhook's project".into(),
                field: "projectId".into(),
            });
        }
    }
    match &f.environment {
        Some(e) => check_environment(e.as_bytes(), &ctx.state.environment, "environment"),
        None if env_header_missing => Err(missing(ENVIRONMENT_HEADER)),
        None => Ok(()),
    }
}

/// Overlays the body on `base` (PATCH) or on the defaults (create) and checks each value.
fn apply(id: &str, f: &WebhookFields, base: Option<&Stored>) -> Result<Subscription, ApiError> {
    // Required fields were checked by `create`; PATCH always has a base.
    let need = |name: &str| ApiError::bad(name, format!("missing required field {name}"));
    let table = match (&f.table, base) {
        (Some(t), _) => body::table(t)?,
        (None, Some(b)) => b.table.clone(),
        (None, None) => return Err(need("table")),
    };
    let events = match (&f.events, base) {
        (Some(e), _) => body::events(e)?,
        (None, Some(b)) => b.events.clone(),
        (None, None) => return Err(need("events")),
    };
    let url = match (&f.url, base) {
        (Some(u), _) => u.clone(),
        (None, Some(b)) => b.url.clone(),
        (None, None) => return Err(need("url")),
    };
    let secret = match (&f.secret, base) {
        (Some(s), _) => Secret::new(s.as_str()),
        (None, Some(b)) => b.secret.clone(),
        (None, None) => return Err(need("secret")),
    };
    let filter = match (&f.filter, base) {
        (Some(Some(v)), _) => Some(body::filter(v)?),
        (Some(None), _) | (None, None) => None,
        (None, Some(b)) => b.filter.clone(),
    };
    let select = match (&f.select, base) {
        (Some(Some(v)), _) => Some(v.clone()),
        (Some(None), _) | (None, None) => None,
        (None, Some(b)) => b.select.clone(),
    };
    let format = match (&f.format, base) {
        (Some(s), _) => body::format(s)?,
        (None, Some(b)) => b.format,
        (None, None) => Default::default(),
    };
    let signature = match (&f.signature, base) {
        (Some(s), _) => body::signature(s)?,
        (None, Some(b)) => b.signature,
        (None, None) => SignatureScheme::default(),
    };
    let previous_secret = match (&f.previous_secret, base) {
        (Some(p), _) => p.as_deref().map(Secret::new),
        (None, Some(b)) => b.previous_secret.clone(),
        (None, None) => None,
    };
    let previous_secret_expires_at = match (&f.previous_secret_expires_at, base) {
        (Some(Some(t)), _) => Some(body::parse_time("previous_secret_expires_at", t)?),
        (Some(None), _) | (None, None) => None,
        (None, Some(b)) => b.previous_secret_expires_at,
    };
    let headers = match (&f.headers, base) {
        (Some(Some(h)), _) => h
            .iter()
            .map(|(n, v)| (n.clone(), Secret::new(v.as_str())))
            .collect(),
        (Some(None), _) | (None, None) => Vec::new(),
        (None, Some(b)) => b.headers.clone(),
    };
    let signature_header = match (&f.signature_header, base) {
        (Some(h), _) => h.clone(),
        (None, Some(b)) => b.signature_header.clone(),
        (None, None) => None,
    };
    let template = match (&f.template, base) {
        (Some(t), _) => t.clone(),
        (None, Some(b)) => b.template.clone(),
        (None, None) => None,
    };
    let rate_limit = match (&f.rate_limit, base) {
        (Some(Some(r)), _) => Some(body::rate_limit(r)?),
        (Some(None), _) | (None, None) => None,
        (None, Some(b)) => b.rate_limit,
    };
    let batch = match (&f.batch, base) {
        (Some(b), _) => *b,
        (None, Some(b)) => b.batch,
        (None, None) => None,
    };
    Ok(Subscription {
        headers,
        signature_header,
        template,
        rate_limit,
        batch,
        id: id.to_string(),
        origin: Origin::Api,
        table,
        events,
        url,
        secret,
        active: f.active.or(base.map(|b| b.active)).unwrap_or(true),
        filter,
        select,
        format,
        signature,
        // Clearing the previous secret clears its expiry too.
        previous_secret_expires_at: previous_secret.as_ref().and(previous_secret_expires_at),
        previous_secret,
    })
}

/// Every check of `sub`: the model's validator first (cheap; the same one config.toml and
/// reloads use), then the source database's catalog.
async fn validate(ctx: &Ctx, sub: &Subscription) -> Result<(), ApiError> {
    let rules = Rules {
        egress: EgressPolicy::from_config(&ctx.state.delivery),
        // The API refuses walhook's own schema even when the outbox lives elsewhere: a
        // subscription to it is never what the caller meant.
        own_schema: Some(unquote(&ctx.state.schema.0)),
    };
    sub.validate(&rules)
        .map_err(|e| ApiError::invalid(e.field, e.to_string()))?;
    let client = ctx.source().await?;
    let source_err = |e: SourceError| match e {
        // describe_tables and ensure_replica_identity say what is wrong and what to run.
        SourceError::Table { reason, .. } => Ok(ApiError::invalid("table", reason)),
        e @ (SourceError::Setup(_) | SourceError::Config(_)) => {
            Ok(ApiError::invalid("table", e.to_string()))
        }
        e => Err(e),
    };
    let mut infos = match describe_tables(&client, std::slice::from_ref(&sub.table)).await {
        Ok(i) => i,
        Err(e) => return Err(on_source_error(ctx, source_err(e)).await),
    };
    for info in &infos {
        if let Err(e) = check_columns(sub, &info.columns, &info.unpublished_generated) {
            return Err(ApiError::invalid(e.used_in, e.to_string()));
        }
    }
    // A table walhook's role cannot prepare would fail at every reload: refuse it now.
    if let Err(e) = check_manageable(&client, &infos, &ctx.state.publication).await {
        return Err(on_source_error(ctx, source_err(e)).await);
    }
    // Never changes anything with manage = false: it only reports what to run.
    if !ctx.state.manage_replica_identity {
        if let Err(e) = ensure_replica_identity(&client, &mut infos, false).await {
            return Err(on_source_error(ctx, source_err(e)).await);
        }
    }
    Ok(())
}

async fn on_source_error(ctx: &Ctx, e: Result<ApiError, SourceError>) -> ApiError {
    match e {
        Ok(api) => api,
        Err(e) => {
            let retryable = e.is_retryable();
            if retryable {
                ctx.reset_source().await;
            }
            ApiError::from_db("source database", &e, retryable)
        }
    }
}

/// `"walhook"` → `walhook`.
fn unquote(quoted: &str) -> String {
    quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(quoted)
        .replace("\"\"", "\"")
}
