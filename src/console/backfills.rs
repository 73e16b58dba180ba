//! Backfills of a subscription in the console: the list (state, rows done of estimated, rate,
//! `where`, times, error), a form that starts one, and cancel.
//!
//! Guarantees:
//! - starting and cancelling go through the API's own functions
//!   ([`crate::api::backfills::start`], [`crate::api::backfills::cancel_by_id`]), so the checks
//!   are the API's (primary key, one boolean `where` the planner accepts, ranges) and a refused
//!   form stores nothing; the refusal is shown next to its field with the API's status;
//! - both are POSTs, and so carry the session's CSRF token (checked by
//!   [`super::session::require_session`]);
//! - a backfill is only ever looked up within the subscription of the URL.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup};

use super::page::{self, csrf, enc, when, Form};
use super::session::Session;
use super::C;
use crate::api::backfills::{self as api, DEFAULT_CHUNK, MAX_CHUNK, MAX_PAUSE_MS};
use crate::api::ApiError;
use crate::outbox::backfills::{list as list_backfills, Backfill};
use crate::outbox::subscriptions::{load_one, Stored};

/// Backfills shown, newest first (as the API lists them).
const SHOWN: i64 = 100;

/// What the start form holds (as typed, so a refused form shows it again).
#[derive(Default)]
struct Values {
    where_sql: String,
    chunk_size: String,
    pause_ms: String,
}

async fn load(c: &C, id: &str) -> Result<Stored, ApiError> {
    let client = c.ctx.outbox().await?;
    load_one(&**client, &c.ctx.state.schema, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no subscription with id {id:?}")))
}

pub async fn list(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let v = Values {
        chunk_size: DEFAULT_CHUNK.to_string(),
        pause_ms: "0".into(),
        ..Values::default()
    };
    render(&c, &s, &id, &v, None).await
}

async fn render(c: &C, s: &Session, id: &str, v: &Values, err: Option<ApiError>) -> Response {
    let status = err.as_ref().map(ApiError::status).unwrap_or(StatusCode::OK);
    let r = async {
        let sub = load(c, id).await?;
        let client = c.ctx.outbox().await?;
        let rows = list_backfills(&client, &c.ctx.state.schema, id, SHOWN).await?;
        Ok::<_, ApiError>(body(s, &sub, &rows, v, err.as_ref()))
    }
    .await;
    match r {
        Ok(m) => {
            let mut resp = page::layout("Backfills", Some(s), m);
            *resp.status_mut() = status;
            resp
        }
        Err(e) => page::error_page(s, e),
    }
}

fn field_error(err: Option<&ApiError>, name: &str) -> Markup {
    match err {
        Some(
            e @ (ApiError::BadRequest { field: Some(f), .. }
            | ApiError::Unprocessable { field: Some(f), .. }),
        ) if f == name => {
            html! { p.error id=(format!("{name}-error")) role="alert" { (e.to_string()) } }
        }
        _ => html! {},
    }
}

/// "1,234 of ~5,000 (25 %)".
fn progress(b: &Backfill) -> String {
    match b.rows_estimated.filter(|e| *e > 0) {
        Some(e) => format!(
            "{} of ~{} ({} %)",
            b.rows_done,
            e,
            (b.rows_done * 100 / e).min(100)
        ),
        None => b.rows_done.to_string(),
    }
}

fn body(
    s: &Session,
    sub: &Stored,
    rows: &[Backfill],
    v: &Values,
    err: Option<&ApiError>,
) -> Markup {
    let base = format!("/console/subscriptions/{}", enc(&sub.id));
    let general = err.filter(|e| {
        !matches!(e, ApiError::BadRequest { field: Some(f), .. }
            | ApiError::Unprocessable { field: Some(f), .. }
            if ["where", "chunk_size", "pause_ms"].contains(&f.as_str()))
    });
    html! {
        h1 { "Backfills of " a href=(base) { (sub.id) } }
        p { "The rows already in " code { (sub.table.display_name()) } " sent to " code { (sub.url) }
            " as READ events, in primary-key order, consistent with the live stream." }
        div.scroll { table #backfills {
            caption.sr { "Backfills, newest first" }
            thead { tr {
                th scope="col" { "Backfill" } th scope="col" { "State" } th scope="col" { "Rows" }
                th scope="col" { "Rate" } th scope="col" { "Where" } th scope="col" { "Started" }
                th scope="col" { "Finished" } th scope="col" { "Error" } th scope="col" { span.sr { "Actions" } }
            } }
            tbody { @for b in rows {
                @let bid = api::format_id(b.id);
                tr id=(bid) {
                    td { (bid) }
                    td { span class=(format!("badge bf-{}", b.state)) { (b.state) } }
                    td.rows { (progress(b)) }
                    td { (format!("{:.0}", api::rate(b))) " rows/s" }
                    td { @if let Some(w) = &b.where_sql { code { (w) } } @else { span.muted { "every row" } } }
                    td { (when(Some(b.started_at))) }
                    td { (when(b.finished_at)) }
                    td.err { (b.error.as_deref().unwrap_or("")) }
                    td { @if b.state == "running" {
                        form method="post" action=(format!("{base}/backfills/{bid}/cancel")) {
                            (csrf(s)) button.bad type="submit" { "Cancel" }
                        }
                    } }
                }
            } }
        } }
        @if rows.is_empty() { p.muted { "No backfill yet." } }
        p.help { "Progress is as of this page's load; " a href=(format!("{base}/backfills")) { "reload" } " to follow it." }
        h2 { "Start a backfill" }
        @if let Some(e) = general { p.error #form-error role="alert" { (e.to_string()) } }
        form.backfill method="post" action=(format!("{base}/backfills")) {
            (csrf(s))
            label for="where" { "Where (optional)" }
            input #where type="text" name="where" value=(v.where_sql)
                placeholder="updated_at >= '2026-01-01'" aria-describedby="where-help";
            p.help #where-help { "One boolean SQL expression on the table's columns; empty sends every row." }
            (field_error(err, "where"))
            label for="chunk_size" { "Rows per chunk" }
            input #chunk_size type="number" name="chunk_size" min="1" max=(MAX_CHUNK) value=(v.chunk_size);
            (field_error(err, "chunk_size"))
            label for="pause_ms" { "Pause between chunks (ms)" }
            input #pause_ms type="number" name="pause_ms" min="0" max=(MAX_PAUSE_MS) value=(v.pause_ms);
            (field_error(err, "pause_ms"))
            button type="submit" { "Start backfill" }
        }
    }
}

/// A whole number of the form, or 400 naming the field.
fn number(field: &str, text: &str, default: i32) -> Result<i32, ApiError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(default);
    }
    t.parse()
        .map_err(|_| ApiError::bad(field, format!("{field} must be a whole number")))
}

pub async fn start(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Extension(f): Extension<Form>,
    Path(id): Path<String>,
) -> Response {
    let v = Values {
        where_sql: f.get("where").unwrap_or("").to_string(),
        chunk_size: f.get("chunk_size").unwrap_or("").to_string(),
        pause_ms: f.get("pause_ms").unwrap_or("").to_string(),
    };
    let result = async {
        let chunk = number("chunk_size", &v.chunk_size, DEFAULT_CHUNK)?;
        let pause = number("pause_ms", &v.pause_ms, 0)?;
        let where_sql = Some(v.where_sql.trim()).filter(|w| !w.is_empty());
        api::start(&c.ctx, &id, where_sql, chunk, pause).await
    }
    .await;
    match result {
        Ok(b) => {
            tracing::info!(webhook = %id, backfill = b.id, "backfill started from the console");
            Redirect::to(&format!("/console/subscriptions/{}/backfills", enc(&id))).into_response()
        }
        Err(e) if e.status().is_client_error() && e.status() != StatusCode::NOT_FOUND => {
            render(&c, &s, &id, &v, Some(e)).await
        }
        Err(e) => page::error_page(&s, e),
    }
}

pub async fn cancel(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Path((id, bid)): Path<(String, String)>,
) -> Response {
    match api::cancel_by_id(&c.ctx, &id, &bid).await {
        Ok(_) => {
            Redirect::to(&format!("/console/subscriptions/{}/backfills", enc(&id))).into_response()
        }
        Err(e) => page::error_page(&s, e),
    }
}
