//! The management API (axum): the Archie endpoints under `/api/rest/_webhooks`, dead-letter
//! replay, test sends, and the unauthenticated operational endpoints `/healthz`, `/readyz`,
//! `/metrics`. `openapi.yaml` at the repository root describes every route.
//!
//! Guarantees:
//! - every `/api/rest/_webhooks…` route is authenticated (`auth`) before its handler runs;
//! - no response ever contains a subscription secret (`secret`, `previous_secret`): responses
//!   are built from explicit views that do not have those fields;
//! - bad input never panics and never yields a 5xx: errors are JSON `{"error", "field"}` with
//!   400/401/403/404/409/413/422; 503 means a database is unreachable; 500 is a bug;
//! - the `subscriptions` table is the only state. After every create, update or delete the API
//!   calls `changed.notify_one()`; `walhook run` then reloads routing and the publication from
//!   the table. The API itself never alters the source database (no DDL): it only reads the
//!   catalog to validate tables and columns, and the slot's lag for `/metrics`;
//! - the API never touches the WAL or the slot (a slot recovery is asked of ingest).
//!
//! The same paths are also served under `/gw` (Archie's gateway prefix), so the seed's curl
//! example works with only the host changed.

mod auth;
pub mod backfills;
pub mod body;

pub mod common;
pub mod deliveries;
mod error;
mod ops;
pub mod ping;
mod slot;
pub(crate) mod webhooks;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::config::{DeliveryConfig, Secret};
use crate::metrics::Metrics;
use crate::outbox::Schema;

/// Everything the API needs; built by `walhook run`.
pub struct ApiState {
    pub project_id: String,
    pub environment: String,
    /// The management token (`[api] token`).
    pub token: Secret,
    pub schema: Schema,
    /// The outbox database.
    pub outbox: deadpool_postgres::Pool,
    /// The source database: table/column validation and slot lag.
    pub source: crate::pg::tls::PgConfig,
    pub slot: String,
    /// The publication walhook manages, for checking that a new subscription's table can join it.
    pub publication: String,
    pub manage_replica_identity: bool,
    /// URL rules (allow_http, private networks) and the HTTP client settings of test sends.
    pub delivery: DeliveryConfig,
    pub metrics: Arc<Metrics>,
    /// Set by ingest while the slot streams.
    pub streaming: Arc<AtomicBool>,
    /// Notified after every create/update/delete/reactivation of a subscription.
    pub changed: Arc<Notify>,
    /// Answers wait until routing includes a stored subscription change.
    pub routing: Arc<crate::ingest::reload::RoutingSync>,
    /// Tells this process's delivery pumps about replays (they probe an open breaker at once).
    pub handoff: Arc<crate::outbox::handoff::Handoff>,
    /// Bumped after a backfill is created or cancelled, so this process's runners look again.
    pub backfills: Arc<tokio::sync::watch::Sender<u64>>,
    /// The replication slot's health; recovery requests go to ingest through it.
    pub slot_control: Arc<crate::ingest::slot::SlotControl>,
}

/// Longest an answer waits for routing to include a stored subscription change.
const ROUTING_WAIT: Duration = Duration::from_secs(5);

impl ApiState {
    /// After a subscription change committed: routing picks it up before the caller is
    /// answered, so a row committed after the answer is routed by the new version (without this
    /// wait, changes committed in the ~2 s before a busy reload finished were never sent to a
    /// new subscription). Bounded: a reload that fails or lags is logged, and the answer goes.
    pub async fn subscriptions_changed(&self) {
        let ticket = self.routing.ticket();
        self.changed.notify_one();
        if !self.routing.wait(ticket, ROUTING_WAIT).await {
            tracing::warn!(
                waited_s = ROUTING_WAIT.as_secs(),
                "routing has not picked up the subscription change yet; changes committed before it does are not routed to it"
            );
        }
    }
}

/// Longest a request may take, test sends (bounded by `[delivery] timeout`) included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a database connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The router's state: the public [`ApiState`] plus a lazily connected, shared source client,
/// so validation and scrapes do not open a connection to the app's database every time.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub state: Arc<ApiState>,
    source: Arc<Mutex<Option<Arc<tokio_postgres::Client>>>>,
}

impl Ctx {
    pub fn new(state: Arc<ApiState>) -> Ctx {
        Ctx {
            state,
            source: Arc::new(Mutex::new(None)),
        }
    }

    /// The shared source-database client, reconnected when the previous one was closed.
    pub async fn source(&self) -> Result<Arc<tokio_postgres::Client>, ApiError> {
        let mut guard = self.source.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT,
            crate::pg::tls::connect_sql(&self.state.source),
        )
        .await
        .map_err(|_| ApiError::Unavailable("source database: connection timed out".into()))?
        .map_err(|e| ApiError::from_db("source database", &e, true))?;
        let client = Arc::new(client);
        *guard = Some(client.clone());
        Ok(client)
    }

    /// Drops the cached source client after an error, so the next request reconnects.
    pub async fn reset_source(&self) {
        *self.source.lock().await = None;
    }

    pub async fn outbox(&self) -> Result<deadpool_postgres::Object, ApiError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.state.outbox.get())
            .await
            .map_err(|_| ApiError::Unavailable("outbox: connection timed out".into()))?
            .map_err(ApiError::from)
    }
}

/// The whole HTTP surface.
pub fn router(state: Arc<ApiState>) -> Router {
    let ctx = Ctx::new(state);
    let management = Router::new()
        .route(
            "/api/rest/_webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            "/api/rest/_webhooks/{id}",
            get(webhooks::get_one)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route(
            "/api/rest/_webhooks/{id}/deliveries",
            get(deliveries::list_handler),
        )
        .route(
            "/api/rest/_webhooks/{id}/deliveries/{delivery_id}/replay",
            post(deliveries::replay_one_handler),
        )
        .route(
            "/api/rest/_webhooks/{id}/replay",
            post(deliveries::replay_dead_handler),
        )
        .route("/api/rest/_webhooks/{id}/test", post(ping::handler))
        .route("/api/rest/_webhooks/{id}/backfill", post(backfills::create))
        .route("/api/rest/_webhooks/{id}/backfills", get(backfills::list))
        .route(
            "/api/rest/_webhooks/{id}/backfills/{backfill_id}",
            get(backfills::get_one).delete(backfills::cancel),
        )
        .route("/api/rest/_slot", get(slot::get))
        .route("/api/rest/_slot/recover", post(slot::recover))
        // route_layer: unknown paths get the JSON 404, not a 401.
        .route_layer(middleware::from_fn_with_state(
            ctx.clone(),
            auth::require_auth,
        ));
    let api = Router::new()
        .merge(management)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics));
    Router::new()
        .nest("/gw", api.clone())
        .merge(api)
        .fallback(not_found)
        .layer(middleware::from_fn(with_timeout))
        .with_state(ctx)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; see openapi.yaml".into())
}

async fn with_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Unavailable("request timed out".into()).into_response(),
    }
}

/// Serves `router(state)` on `listener` until `cancel`, then finishes in-flight requests.
pub async fn serve(
    state: Arc<ApiState>,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    serve_with(router(state), listener, cancel).await
}

/// Serves `app` (the API's router, merged with the web console's by `walhook run`).
pub async fn serve_with(
    app: Router,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "management API listening");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}
