//! The live page: what a subscription receives, as it is enqueued, streamed with Server-Sent
//! Events (like `walhook tail`, but from the outbox, so it shows exactly the payloads walhook
//! will deliver, whichever instance enqueued them).
//!
//! Guarantees:
//! - a stream starts after the subscription's newest delivery and then sends every delivery of
//!   that subscription in id order, none twice (it follows the last id sent);
//! - at most [`super::MAX_LIVE`] streams at once (503 beyond); each polls the outbox every
//!   [`POLL`] with a bounded batch, and ends when its session signs out or expires, when
//!   walhook stops, or when the browser goes away;
//! - payloads are put in the page with `textContent` by the script, never as HTML.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::stream;
use maud::html;
use serde_json::json;

use super::page::{self, enc, pretty};
use super::session::Session;
use super::C;
use crate::api::ApiError;
use crate::outbox::console as q;
use crate::outbox::subscriptions::load_one;

pub const POLL: Duration = Duration::from_millis(500);
/// Deliveries read per poll.
const BATCH: i64 = 100;

pub async fn page(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let sub = async {
        let client = c.ctx.outbox().await?;
        load_one(&**client, &c.ctx.state.schema, &id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no subscription with id {id:?}")))
    }
    .await;
    let sub = match sub {
        Ok(sub) => sub,
        Err(e) => return page::error_page(&s, e),
    };
    let base = format!("/console/subscriptions/{}", enc(&sub.id));
    page::layout(
        "Live",
        Some(&s),
        html! {
            h1 { "Live: " a href=(base) { (sub.id) } }
            p { "What " code { (sub.table.display_name()) } " sends to " code { (sub.url) }
                ", as each change is enqueued. Newest at the top." }
            p #live-status role="status" aria-live="polite" data-src=(format!("{base}/live/events")) { "Connecting…" }
            noscript { p.error { "The live page needs JavaScript (Server-Sent Events)." } }
            ol #live .live {}
        },
    )
}

struct Follow {
    c: C,
    s: Session,
    id: String,
    last: i64,
    pending: std::collections::VecDeque<q::LiveRow>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

pub async fn events(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let Ok(permit) = c.live.clone().try_acquire_owned() else {
        return page::plain_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many live pages are open; close one and try again.",
        );
    };
    let last = async {
        let client = c.ctx.outbox().await?;
        load_one(&**client, &c.ctx.state.schema, &id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no subscription with id {id:?}")))?;
        Ok::<_, ApiError>(q::newest_id(&client, &c.ctx.state.schema, &id).await?)
    }
    .await;
    let last = match last {
        Ok(n) => n,
        Err(e) => return page::plain_error(e.status(), &e.to_string()),
    };
    let follow = Follow {
        c,
        s,
        id,
        last,
        pending: Default::default(),
        _permit: permit,
    };
    let ready = Event::default().event("ready").data("ok");
    let first = stream::once(async move { Ok::<_, Infallible>(ready) });
    let rest = stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(row) = f.pending.pop_front() {
                let data = json!({
                    "id": format!("del_{}", row.id),
                    "event": row.event,
                    "created": page::time(row.created_at),
                    "payload": pretty(&row.payload),
                });
                let ev = Event::default().event("delivery").data(data.to_string());
                return Some((Ok::<_, Infallible>(ev), f));
            }
            if f.c.cancel.is_cancelled() || !f.c.sessions.alive(&f.s) {
                return None;
            }
            tokio::select! {
                _ = f.c.cancel.cancelled() => return None,
                _ = tokio::time::sleep(POLL) => {}
            }
            let rows = async {
                let client = f.c.ctx.outbox().await.ok()?;
                q::after(&client, &f.c.ctx.state.schema, &f.id, f.last, BATCH)
                    .await
                    .ok()
            }
            .await;
            if let Some(rows) = rows {
                if let Some(r) = rows.last() {
                    f.last = r.id;
                }
                f.pending.extend(rows);
            }
        }
    });
    Sse::new(stream::StreamExt::chain(first, rest))
        .keep_alive(KeepAlive::default())
        .into_response()
}
