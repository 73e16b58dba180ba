//! Deliveries of a subscription in the console: the paginated list filtered by status, one
//! delivery with its payload, headers and attempts, replay of one, and replay of every dead
//! letter after a confirmation page.
//!
//! Guarantees:
//! - listing and replay use the API's statements ([`crate::outbox::deliveries`]) and its query
//!   parsing, so the rules are the API's: only finished deliveries are replayed, never one in a
//!   worker's hands;
//! - the headers shown are the ones the worker sends, recomputed with the same formatter and
//!   signer at the last attempt's time: the signature is shown, the secret never is;
//! - a delivery is only ever looked up within the subscription of the URL.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup};

use super::page::{self, csrf, enc, pretty, when};
use super::session::Session;
use super::C;
use crate::api::deliveries::{format_id, parse_id, parse_query};
use crate::api::ApiError;
use crate::deliver::request;
use crate::outbox::console as q;
use crate::outbox::deliveries::{
    list as list_deliveries, replay_dead as replay_all, replay_one as replay, ReplayOne, STATUSES,
};
use crate::outbox::subscriptions::{load_one, Stored};

/// Attempts shown per delivery (the retry schedule is far shorter).
const MAX_ATTEMPTS: i64 = 100;

async fn load(c: &C, id: &str) -> Result<Stored, ApiError> {
    let client = c.ctx.outbox().await?;
    load_one(&**client, &c.ctx.state.schema, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no subscription with id {id:?}")))
}

fn respond(s: &Session, title: &str, r: Result<Markup, ApiError>) -> Response {
    match r {
        Ok(m) => page::layout(title, Some(s), m),
        Err(e) => page::error_page(s, e),
    }
}

pub async fn list(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Query(mut params): Query<HashMap<String, String>>,
) -> Response {
    // An empty filter from the form means "all".
    params.retain(|_, v| !v.is_empty());
    respond(&s, "Deliveries", render_list(&c, &s, &id, &params).await)
}

async fn render_list(
    c: &C,
    s: &Session,
    id: &str,
    params: &HashMap<String, String>,
) -> Result<Markup, ApiError> {
    let query = parse_query(params)?;
    let sub = load(c, id).await?;
    let client = c.ctx.outbox().await?;
    let rows = list_deliveries(&client, &c.ctx.state.schema, id, &query).await?;
    let base = format!("/console/subscriptions/{}", enc(id));
    let status = query.status.clone().unwrap_or_default();
    let next = (rows.len() as i64 == query.limit)
        .then(|| rows.last())
        .flatten()
        .map(|d| {
            format!(
                "{base}/deliveries?status={}&cursor={}",
                enc(&status),
                format_id(d.id)
            )
        });
    let _ = s;
    Ok(html! {
        h1 { "Deliveries of " a href=(base) { (sub.id) } }
        p { "Table " code { (sub.table.display_name()) } " → " code { (sub.url) } }
        div.bar {
            form method="get" action=(format!("{base}/deliveries")) {
                label for="status" { "Status" }
                select #status name="status" {
                    option value="" selected[status.is_empty()] { "all" }
                    @for st in STATUSES { option value=(st) selected[status == st] { (st) } }
                }
                button type="submit" { "Filter" }
            }
            a.button href=(format!("{base}/replay-dead")) { "Replay all dead letters…" }
        }
        div.scroll { table #deliveries {
            caption.sr { "Deliveries, newest first" }
            thead { tr {
                th scope="col" { "Delivery" } th scope="col" { "Event" } th scope="col" { "Status" }
                th scope="col" { "HTTP" } th scope="col" { "Attempts" } th scope="col" { "Created" }
                th scope="col" { "Last error" }
            } }
            tbody { @for d in &rows {
                tr {
                    td { a href=(format!("{base}/deliveries/{}", format_id(d.id))) { (format_id(d.id)) } }
                    td { (d.event) }
                    td { span class=(format!("badge st-{}", d.status)) { (d.status) } }
                    td { (d.http_status.map(|h| h.to_string()).unwrap_or_default()) }
                    td { (d.attempts) }
                    td { (when(Some(d.created_at))) }
                    td.err { (d.last_error.as_deref().unwrap_or("")) }
                }
            } }
        } }
        @if rows.is_empty() { p.muted { "No deliveries." } }
        @if let Some(n) = next { nav.pager aria-label="Pages" { a href=(n) { "Older →" } } }
    })
}

pub async fn detail(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Path((id, delivery)): Path<(String, String)>,
) -> Response {
    respond(&s, "Delivery", render_detail(&c, &s, &id, &delivery).await)
}

/// The headers the worker sends for `d`, signed at `at`, built by the worker's own
/// [`request::build`]; the secret never appears, and the values of the subscription's static
/// headers (credentials, typically) are masked.
fn headers_as_sent(
    sub: &Stored,
    d: &q::DeliveryBody,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<(String, String)>, String> {
    let event = request::Event {
        payload: &d.payload,
        ordering_key: &d.ordering_key,
        event_id: &d.event_id,
        event: &d.event,
        sequence: d.sequence,
    };
    let (headers, _) = request::build(sub, &event, at)?;
    Ok(headers
        .into_iter()
        .map(|(k, v)| {
            let own = sub.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(&k));
            (k.to_string(), if own { "***".to_string() } else { v })
        })
        .collect())
}

async fn render_detail(c: &C, s: &Session, id: &str, delivery: &str) -> Result<Markup, ApiError> {
    let not_found = || ApiError::NotFound("no such delivery for this subscription".into());
    let n = parse_id(delivery).ok_or_else(not_found)?;
    let sub = load(c, id).await?;
    let client = c.ctx.outbox().await?;
    let schema = &c.ctx.state.schema;
    let d = q::delivery(&client, schema, id, n)
        .await?
        .ok_or_else(not_found)?;
    let attempts = q::attempts(&client, schema, n, MAX_ATTEMPTS).await?;
    let at = attempts
        .last()
        .map(|a| a.attempted_at)
        .unwrap_or_else(chrono::Utc::now);
    let headers = headers_as_sent(&sub, &d, at);
    let base = format!("/console/subscriptions/{}", enc(id));
    let finished = matches!(d.status.as_str(), "delivered" | "dead");
    Ok(html! {
        h1 { "Delivery " (format_id(d.id)) }
        p { a href=(format!("{base}/deliveries")) { "← Deliveries of " (sub.id) } }
        dl.fields {
            dt { "Event" } dd { (d.event) " · " code { (d.event_id) } }
            dt { "Status" } dd { span #status class=(format!("badge st-{}", d.status)) { (d.status) } }
            dt { "Sequence" } dd { (d.sequence.map(|n| n.to_string()).unwrap_or_default()) }
            dt { "Created" } dd { (when(Some(d.created_at))) }
            dt { "Finished" } dd { (when(d.finished_at)) }
            @if let Some(e) = &d.last_error { dt { "Last error" } dd.error { (e) } }
        }
        @if finished {
            form method="post" action=(format!("{base}/deliveries/{}/replay", format_id(d.id))) {
                (csrf(s)) button #replay type="submit" { "Replay this delivery" }
            }
        } @else {
            p.help { "Only delivered or dead deliveries can be replayed; this one is still queued or being attempted." }
        }
        h2 { "Payload" }
        pre.payload { (pretty(&d.payload)) }
        h2 { "Headers as sent" }
        p.help { "Signed for " @if attempts.is_empty() { "now (no attempt yet)" } @else { "the last attempt" }
            " with the subscription's current secret, which is never shown." }
        @match headers {
            Ok(h) => { table.headers { caption.sr { "Request headers" } tbody { @for (k, v) in &h { tr { th scope="row" { (k) } td { code { (v) } } } } } } }
            Err(e) => { p.error { "Cannot sign: " (e) } }
        }
        h2 { "Attempts" }
        @if attempts.is_empty() { p.muted { "No attempt yet." } }
        ol.attempts #attempts {
            @for a in &attempts {
                li {
                    (when(Some(a.attempted_at))) " · "
                    (a.duration_ms.map(|m| format!("{m} ms")).unwrap_or_default()) " · "
                    @match a.http_status {
                        Some(h) if (200..300).contains(&h) => { span.badge.ok { "HTTP " (h) } }
                        Some(h) => { span.badge.bad { "HTTP " (h) } }
                        None => { span.badge.bad { "no answer" } }
                    }
                    @if let Some(k) = &a.error_kind { " · " span.error { (k) } }
                    @if let Some(b) = a.response_body.as_deref().filter(|b| !b.is_empty()) {
                        details { summary { "Response body" } pre { (b) } }
                    }
                }
            }
        }
    })
}

pub async fn replay_one(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Path((id, delivery)): Path<(String, String)>,
) -> Response {
    let not_found = || ApiError::NotFound("no such delivery for this subscription".into());
    let result = async {
        let n = parse_id(&delivery).ok_or_else(not_found)?;
        load(&c, &id).await?;
        let client = c.ctx.outbox().await?;
        match replay(&client, &c.ctx.state.schema, &id, n).await? {
            ReplayOne::Replayed(d) => Ok(d.id),
            ReplayOne::NotFound => Err(not_found()),
            ReplayOne::Unfinished => Err(ApiError::Conflict(format!(
                "{} is not finished: only delivered or dead deliveries are replayed",
                format_id(n)
            ))),
        }
    }
    .await;
    match result {
        Ok(n) => {
            c.ctx.state.handoff.replayed(&id);
            tracing::info!(webhook = %id, delivery = %format_id(n), "delivery replayed from the console");
            Redirect::to(&format!(
                "/console/subscriptions/{}/deliveries/{}",
                enc(&id),
                format_id(n)
            ))
            .into_response()
        }
        Err(e) => page::error_page(&s, e),
    }
}

pub async fn confirm_replay_dead(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        let sub = load(&c, &id).await?;
        let client = c.ctx.outbox().await?;
        let dead = list_deliveries(&client, &c.ctx.state.schema, &id, &crate::outbox::deliveries::ListQuery {
            status: Some("dead".into()),
            limit: crate::outbox::deliveries::MAX_LIMIT,
            ..Default::default()
        }).await?.len();
        let base = format!("/console/subscriptions/{}", enc(&id));
        Ok(html! {
            h1 { "Replay all dead letters?" }
            p { "Puts " strong { @if dead as i64 == crate::outbox::deliveries::MAX_LIMIT { "at least " } (dead) } " dead deliveries of "
                code { (sub.id) } " back in the queue; they are sent again to " code { (sub.url) } "." }
            form method="post" action=(format!("{base}/replay-dead")) {
                (csrf(&s)) button #confirm type="submit" { "Replay dead letters" }
                " " a href=(format!("{base}/deliveries")) { "Cancel" }
            }
        })
    }
    .await;
    respond(&s, "Replay dead letters", r)
}

pub async fn replay_dead(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        load(&c, &id).await?;
        let client = c.ctx.outbox().await?;
        Ok::<_, ApiError>(replay_all(&client, &c.ctx.state.schema, &id, None).await?)
    }
    .await;
    match r {
        Ok(n) => {
            c.ctx.state.handoff.replayed(&id);
            tracing::info!(webhook = %id, replayed = n, "dead letters replayed from the console");
            Redirect::to(&format!("/console/subscriptions/{}/deliveries", enc(&id))).into_response()
        }
        Err(e) => page::error_page(&s, e),
    }
}
