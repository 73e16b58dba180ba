//! The web console under `/console`, served by `walhook run` on the management API's listener:
//! server-rendered pages (maud) with a little embedded CSS and JavaScript, no Node build step,
//! nothing loaded from another origin.
//!
//! Guarantees:
//! - nothing but the sign-in page and the static assets is served without a session; every
//!   other console URL redirects to the sign-in page, and every POST needs the session's CSRF
//!   token (`session`);
//! - the console changes state only through the functions the API handlers use (create, update,
//!   delete, replay, test send in [`crate::api`] and [`crate::outbox`]), so it validates exactly
//!   as the API does and holds no SQL of its own;
//! - no page ever shows a subscription secret or the management token: subscriptions are shown
//!   field by field, without `secret`/`previous_secret`, and headers as sent carry signatures,
//!   which do not reveal the secret;
//! - every wait is bounded: database calls go through the API's timeouts, live streams are
//!   limited in number ([`MAX_LIVE`]) and end when the session ends or walhook stops.

mod backfills;
mod deliveries;
mod live;
mod overview;
mod page;
mod session;
mod subs;

use std::sync::Arc;
use std::time::Duration;

use axum::middleware;
use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiState, Ctx};

/// Most live pages streaming at once (each polls the outbox twice a second).
pub const MAX_LIVE: usize = 32;

/// The console's state.
pub struct Console {
    ctx: Ctx,
    sessions: session::Store,
    ttl: Duration,
    samples: overview::Samples,
    live: Arc<Semaphore>,
    cancel: CancellationToken,
}

/// The router's state.
#[derive(Clone)]
pub struct C(Arc<Console>);

impl std::ops::Deref for C {
    type Target = Console;
    fn deref(&self) -> &Console {
        &self.0
    }
}

/// The console's routes, to merge into the API's router. Starts the sampler of the overview's
/// charts, which stops with `cancel` (as do live streams).
pub fn router(state: Arc<ApiState>, cancel: CancellationToken) -> Router {
    let c = C(Arc::new(Console {
        ctx: Ctx::new(state),
        sessions: session::Store::new(session::SESSION_TTL),
        ttl: session::SESSION_TTL,
        samples: overview::Samples::default(),
        live: Arc::new(Semaphore::new(MAX_LIVE)),
        cancel: cancel.clone(),
    }));
    tokio::spawn(overview::sample_loop(c.clone(), cancel));
    let guarded = Router::new()
        .route("/console", get(overview::page))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/sign-out", post(session::sign_out))
        .route("/console/subscriptions", get(subs::list).post(subs::create))
        .route("/console/subscriptions/new", get(subs::new_form))
        .route(
            "/console/subscriptions/{id}",
            get(subs::edit_form).post(subs::update),
        )
        .route("/console/subscriptions/{id}/pause", post(subs::pause))
        .route("/console/subscriptions/{id}/resume", post(subs::resume))
        .route("/console/subscriptions/{id}/delete", post(subs::delete))
        .route("/console/subscriptions/{id}/test", post(subs::test))
        .route(
            "/console/subscriptions/{id}/deliveries",
            get(deliveries::list),
        )
        .route(
            "/console/subscriptions/{id}/deliveries/{delivery}",
            get(deliveries::detail),
        )
        .route(
            "/console/subscriptions/{id}/deliveries/{delivery}/replay",
            post(deliveries::replay_one),
        )
        .route(
            "/console/subscriptions/{id}/replay-dead",
            get(deliveries::confirm_replay_dead).post(deliveries::replay_dead),
        )
        .route(
            "/console/subscriptions/{id}/backfills",
            get(backfills::list).post(backfills::start),
        )
        .route(
            "/console/subscriptions/{id}/backfills/{backfill}/cancel",
            post(backfills::cancel),
        )
        .route("/console/subscriptions/{id}/live", get(live::page))
        .route("/console/subscriptions/{id}/live/events", get(live::events))
        .route("/console/{*rest}", get(not_found).post(not_found))
        .route_layer(middleware::from_fn_with_state(
            c.clone(),
            session::require_session,
        ));
    Router::new()
        .merge(guarded)
        .route(
            "/console/sign-in",
            get(session::sign_in_form).post(session::sign_in),
        )
        .route("/console/assets/console.css", get(page::css))
        .route("/console/assets/console.js", get(page::js))
        .with_state(c)
}

async fn not_found() -> axum::response::Response {
    page::plain_error(axum::http::StatusCode::NOT_FOUND, "No such console page.")
}
