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
//! - views never include `secret` or `previous_secret`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::auth::{check_environment, missing, EnvHeaderMissing, ENVIRONMENT_HEADER};
use super::body::{self, Spec, WebhookFields};
use super::common::{body_bytes, find, no_webhook, path_id, time};
use super::deliveries::summary;
use super::error::ApiError;
use super::Ctx;
use crate::config::SignatureScheme;
use crate::outbox::deliveries::{self, ListQuery};
use crate::outbox::subscriptions::{self, StoredSubscription, SubscriptionSource, Values};
use crate::route::UnknownColumn;
use crate::source::setup::{describe_tables, ensure_replica_identity};
use crate::source::SourceError;

/// How many recent deliveries `GET /{id}` returns.
const RECENT_DELIVERIES: i64 = 50;

/// The public view of a subscription: no secrets.
pub(super) fn view(s: &StoredSubscription) -> Value {
    json!({
        "id": s.id,
        "table": s.table,
        "events": s.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        "url": s.url,
        "active": s.active,
        "filter": s.filter.as_ref().map(|f| f.to_json()),
        "select": s.select,
        "format": s.format.as_str(),
        "signature": s.signature.as_str(),
        "source": match s.source {
            SubscriptionSource::Config => "config",
            SubscriptionSource::Api => "api",
        },
        "previousSecretExpiresAt": s.previous_secret_expires_at.map(time),
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
        json!({ "webhooks": subs.iter().map(view).collect::<Vec<_>>() }),
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
        "webhook": view(&sub),
        "deliveries": recent.iter().map(summary).collect::<Vec<_>>(),
    })))
}

pub async fn create(
    State(ctx): State<Ctx>,
    env_missing: Option<Extension<EnvHeaderMissing>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let fields = body::parse_webhook(&body_bytes(body)?)?;
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
    let spec = apply(&fields, None)?;
    validate(&ctx, &spec).await?;
    let id = format!("wh_{}", uuid::Uuid::new_v4());
    let client = ctx.outbox().await?;
    let sub =
        subscriptions::create(&client, &ctx.state.schema, &id, &values(&spec, spec.active)).await?;
    tracing::info!(id = %sub.id, table = %sub.table, "webhook created through the API");
    ctx.state.changed.notify_one();
    Ok((StatusCode::CREATED, Json(view(&sub))))
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
    let mut client = ctx.outbox().await?;
    let editing = subscriptions::edit(&mut client, &ctx.state.schema, &id)
        .await?
        .ok_or_else(|| no_webhook(&id))?;
    let current = &editing.current;
    if current.source == SubscriptionSource::Config {
        return Err(config_owned(&id));
    }
    let spec = apply(&fields, Some(current))?;
    validate(&ctx, &spec).await?;
    // Re-enable after a 410 Gone when asked to, or when the URL the receiver gave up on changed.
    let reactivate = current.deactivated_reason.is_some()
        && (fields.active == Some(true) || (fields.active.is_none() && spec.url != current.url));
    let active = if reactivate { true } else { spec.active };
    let sub = editing.update(&values(&spec, active)).await?;
    tracing::info!(id = %sub.id, "webhook updated through the API");
    ctx.state.changed.notify_one();
    Ok(Json(view(&sub)))
}

pub async fn delete(
    State(ctx): State<Ctx>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path_id(id)?;
    let mut client = ctx.outbox().await?;
    let editing = subscriptions::edit(&mut client, &ctx.state.schema, &id)
        .await?
        .ok_or_else(|| no_webhook(&id))?;
    if editing.current.source == SubscriptionSource::Config {
        return Err(config_owned(&id));
    }
    let removed = editing.delete().await?;
    tracing::info!(id = %id, deliveries = removed, "webhook deleted through the API");
    ctx.state.changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
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

/// What the outbox stores for `spec`, with `active` decided by the caller.
fn values(spec: &Spec, active: bool) -> Values<'_> {
    Values {
        table: &spec.table,
        events: &spec.events,
        url: &spec.url,
        secret: &spec.secret,
        active,
        filter: spec.filter.as_ref(),
        select: spec.select.as_deref(),
        format: spec.format,
        signature: spec.signature,
        previous_secret: spec.previous_secret.as_deref(),
        previous_secret_expires_at: spec.previous_secret_expires_at,
    }
}

/// Overlays the body on `base` (PATCH) or on the defaults (create) and checks each value.
fn apply(f: &WebhookFields, base: Option<&StoredSubscription>) -> Result<Spec, ApiError> {
    // Required fields were checked by `create`; PATCH always has a base.
    let need = |name: &str| ApiError::bad(name, format!("missing required field {name}"));
    let table = match (&f.table, base) {
        (Some(t), _) => t.clone(),
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
        (Some(s), _) => s.clone(),
        (None, Some(b)) => b.secret.expose().to_string(),
        (None, None) => return Err(need("secret")),
    };
    let filter = match (&f.filter, base) {
        (Some(Some(v)), _) => Some(body::filter(v)?),
        (Some(None), _) | (None, None) => None,
        (None, Some(b)) => b.filter.clone(),
    };
    let select = match (&f.select, base) {
        (Some(Some(v)), _) => Some(body::select(v)?),
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
        (Some(p), _) => p.clone(),
        (None, Some(b)) => b.previous_secret.as_ref().map(|s| s.expose().to_string()),
        (None, None) => None,
    };
    let previous_secret_expires_at = match (&f.previous_secret_expires_at, base) {
        (Some(Some(t)), _) => Some(body::parse_time("previous_secret_expires_at", t)?),
        (Some(None), _) | (None, None) => None,
        (None, Some(b)) => b.previous_secret_expires_at,
    };
    Ok(Spec {
        table_name: body::table(&table)?,
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

/// Every check of `spec`: values first (cheap), then the source database's catalog.
async fn validate(ctx: &Ctx, spec: &Spec) -> Result<(), ApiError> {
    let schema = unquote(&ctx.state.schema.0);
    body::check_spec(spec, &ctx.state.delivery, &schema)?;
    let client = ctx.source().await?;
    let source_err = |e: SourceError| match e {
        // describe_tables and ensure_replica_identity say what is wrong and what to run.
        SourceError::Config(m) => Ok(ApiError::invalid("table", m)),
        e => Err(e),
    };
    let mut infos = match describe_tables(&client, std::slice::from_ref(&spec.table_name)).await {
        Ok(i) => i,
        Err(e) => return Err(on_source_error(ctx, source_err(e)).await),
    };
    for info in &infos {
        if let Err(e) = check_columns(&spec.table_name, spec, &info.columns) {
            return Err(ApiError::invalid(e.used_in, e.to_string()));
        }
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

/// The filter and select of `spec` name only columns of the table (until the API speaks
/// the model's Subscription).
fn check_columns(
    table: &crate::model::TableName,
    spec: &Spec,
    columns: &[String],
) -> Result<(), UnknownColumn> {
    let sub = crate::model::Subscription {
        id: "(this webhook)".into(),
        origin: crate::model::Origin::Api,
        table: table.clone(),
        events: spec.events.clone(),
        url: String::new(),
        secret: crate::model::Secret::new(""),
        active: spec.active,
        filter: spec.filter.clone(),
        select: spec.select.clone(),
        format: spec.format,
        signature: spec.signature,
        previous_secret: None,
        previous_secret_expires_at: None,
    };
    crate::route::check_columns(&sub, columns)
}
