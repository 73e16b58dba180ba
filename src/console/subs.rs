//! Subscriptions in the console: the list with search, the create and edit forms, pause,
//! resume, delete and "send test".
//!
//! Guarantees:
//! - every change goes through the API's own functions ([`webhooks::create_from`],
//!   [`webhooks::update_from`], [`webhooks::delete_by_id`]), so a form is validated exactly as
//!   a JSON body is, and the API's message is shown next to the field it names;
//! - config.toml subscriptions are shown read-only, saying why (the file is their source of
//!   truth; a change here would be undone at the next start or SIGHUP);
//! - the secret is never put in a page: the edit form's secret field is empty and leaving it
//!   empty keeps the stored secret.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::{html, Markup};
use serde_json::Value;

use super::page::{self, csrf, enc, Form};
use super::session::Session;
use super::C;
use crate::api::body::WebhookFields;
use crate::api::{ping, webhooks, ApiError};
use crate::model::Origin;
use crate::outbox::gauges;
use crate::outbox::subscriptions::{load_all, load_one, Stored};

/// Rows per page of the list.
pub const PAGE: usize = 100;

type Q = Query<HashMap<String, String>>;

pub async fn list(State(c): State<C>, Extension(s): Extension<Session>, Query(q): Q) -> Response {
    match render_list(&c, &s, &q).await {
        Ok(m) => page::layout("Subscriptions", Some(&s), m),
        Err(e) => page::error_page(&s, e),
    }
}

async fn render_list(c: &C, s: &Session, q: &HashMap<String, String>) -> Result<Markup, ApiError> {
    let client = c.ctx.outbox().await?;
    let schema = &c.ctx.state.schema;
    let subs = load_all(&client, schema).await?;
    let counts: HashMap<String, gauges::QueueCounts> = gauges::queue_counts(&client, schema)
        .await?
        .into_iter()
        .map(|q| (q.subscription.clone(), q))
        .collect();
    let search = q
        .get("q")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_default();
    let found: Vec<&Stored> = subs
        .iter()
        .filter(|s| {
            search.is_empty()
                || [s.id.as_str(), &s.table.display_name(), &s.url]
                    .iter()
                    .any(|f| f.to_lowercase().contains(&search))
        })
        .collect();
    let pages = found.len().div_ceil(PAGE).max(1);
    let n = q
        .get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    let shown = &found[(n - 1) * PAGE..(n * PAGE).min(found.len())];
    let link = |p: usize| format!("/console/subscriptions?q={}&page={p}", enc(&search));
    let _ = s;
    Ok(html! {
        h1 { "Subscriptions" }
        div.bar {
            form.search method="get" action="/console/subscriptions" role="search" {
                label for="q" { "Search" }
                input #q type="search" name="q" value=(search) placeholder="id, table or URL";
                button type="submit" { "Search" }
            }
            a.button href="/console/subscriptions/new" { "New subscription" }
        }
        p.help { (found.len()) " of " (subs.len()) " subscriptions" @if pages > 1 { ", page " (n) " of " (pages) } "." }
        div.scroll { table {
            caption.sr { "Subscriptions" }
            thead { tr {
                th scope="col" { "Id" } th scope="col" { "Table" } th scope="col" { "Events" }
                th scope="col" { "URL" } th scope="col" { "State" } th scope="col" { "Source" }
                th scope="col" { "Pending" } th scope="col" { "Dead" } th scope="col" { "Open" }
            } }
            tbody { @for sub in shown {
                @let q = counts.get(&sub.id);
                @let (pending, dead) = q.map_or((0, 0), |q| (q.pending, q.dead));
                @let id = enc(&sub.id);
                tr {
                    td { a href=(format!("/console/subscriptions/{id}")) { (sub.id) } }
                    td { (sub.table.display_name()) }
                    td { (sub.events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(" ")) }
                    td.url { (sub.url) }
                    td { (state(sub)) }
                    td { (sub.origin.as_str()) }
                    td {
                        (pending)
                        @if let Some(q) = q.filter(|q| q.pending > 0) {
                            " " span.muted title="age of the oldest pending delivery" { "(oldest " (page::age(q.oldest_pending_seconds)) ")" }
                        }
                    }
                    td { (dead) }
                    td.links {
                        a href=(format!("/console/subscriptions/{id}/deliveries")) { "Deliveries" } " "
                        a href=(format!("/console/subscriptions/{id}/live")) { "Live" } " "
                        a href=(format!("/console/subscriptions/{id}/backfills")) { "Backfills" }
                    }
                }
            } }
        } }
        @if pages > 1 {
            nav.pager aria-label="Pages" {
                @if n > 1 { a href=(link(n - 1)) { "← Previous" } }
                @if n < pages { a href=(link(n + 1)) { "Next →" } }
            }
        }
    })
}

fn state(s: &Stored) -> Markup {
    match (&s.deactivated_reason, s.active) {
        (Some(r), false) => html! { span.badge.bad title=(r) { "deactivated" } },
        (_, true) => html! { span.badge.ok { "active" } },
        (_, false) => html! { span.badge.warn { "paused" } },
    }
}

/// The values a form shows: from the stored subscription or from what was just submitted.
#[derive(Default)]
struct Values {
    table: String,
    events: Vec<String>,
    url: String,
    filter: String,
    select: String,
    format: String,
    signature: String,
    active: bool,
}

impl Values {
    fn of(s: &Stored) -> Values {
        Values {
            table: s.table.display_name(),
            events: s.events.iter().map(|e| e.as_str().to_string()).collect(),
            url: s.url.clone(),
            filter: s
                .filter
                .as_ref()
                .and_then(|f| serde_json::to_string_pretty(&f.to_json()).ok())
                .unwrap_or_default(),
            select: s.select.as_ref().map(|v| v.join(", ")).unwrap_or_default(),
            format: s.format.as_str().into(),
            signature: s.signature.as_str().into(),
            active: s.active,
        }
    }

    fn from_form(f: &Form) -> Values {
        let get = |k: &str| f.get(k).unwrap_or_default().to_string();
        Values {
            table: get("table"),
            events: f.all("events"),
            url: get("url"),
            filter: get("filter"),
            select: get("select"),
            format: get("format"),
            signature: get("signature"),
            active: f.get("active").is_some(),
        }
    }
}

/// The form's fields as the API's body fields; a filter that is not a JSON object is an error
/// on `filter`.
fn fields(f: &Form, creating: bool) -> Result<WebhookFields, ApiError> {
    let text = |k: &str| {
        f.get(k)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let filter = match text("filter") {
        None => Some(None),
        Some(t) => match serde_json::from_str::<Value>(&t) {
            Ok(v @ Value::Object(_)) => Some(Some(v)),
            _ => {
                return Err(ApiError::invalid(
                    "filter",
                    "filter: expected a JSON object like {\"status\": \"paid\"}",
                ))
            }
        },
    };
    let select = Some(text("select").map(|s| {
        s.split(',')
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    }));
    Ok(WebhookFields {
        table: text("table"),
        events: Some(f.all("events")),
        url: text("url"),
        // Editing: an empty secret field keeps the stored secret.
        secret: f
            .get("secret")
            .filter(|s| creating || !s.is_empty())
            .map(str::to_string),
        active: Some(f.get("active").is_some()),
        filter,
        select,
        format: text("format"),
        signature: text("signature"),
        ..WebhookFields::default()
    })
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

const FIELDS: [&str; 8] = [
    "table",
    "events",
    "url",
    "secret",
    "filter",
    "select",
    "format",
    "signature",
];

fn form(s: &Session, action: &str, v: &Values, creating: bool, err: Option<&ApiError>) -> Markup {
    let general = err.filter(|e| {
        !matches!(e, ApiError::BadRequest { field: Some(f), .. }
            | ApiError::Unprocessable { field: Some(f), .. } if FIELDS.contains(&f.as_str()))
    });
    let described = |name: &str| {
        let e = matches!(err, Some(ApiError::BadRequest { field: Some(f), .. }
            | ApiError::Unprocessable { field: Some(f), .. }) if f == name);
        e.then(|| format!("{name}-error"))
    };
    html! {
        @if let Some(e) = general { p.error role="alert" { (e.to_string()) } }
        form.sub method="post" action=(action) novalidate {
            (csrf(s))
            label for="table" { "Table" }
            input #table name="table" value=(v.table) placeholder="public.orders" required aria-describedby=[described("table")] aria-invalid=[described("table").map(|_| "true")];
            (field_error(err, "table"))
            fieldset aria-describedby=[described("events")] {
                legend { "Events" }
                @for e in ["INSERT", "UPDATE", "DELETE"] {
                    label.check { input type="checkbox" name="events" value=(e) checked[v.events.iter().any(|x| x == e)]; (e) }
                }
            }
            (field_error(err, "events"))
            label for="url" { "URL" }
            input #url name="url" type="url" value=(v.url) placeholder="https://example.com/hooks" required aria-describedby=[described("url")] aria-invalid=[described("url").map(|_| "true")];
            (field_error(err, "url"))
            label for="secret" { "Signing secret" }
            input #secret name="secret" type="password" autocomplete="new-password" aria-describedby=[described("secret").or(Some("secret-help".into()))];
            @if !creating { p #secret-help .help { "Leave empty to keep the current secret. It is never shown." } }
            @else { p #secret-help .help { "Receivers verify signatures with it. It is never shown again." } }
            (field_error(err, "secret"))
            label for="filter" { "Filter (JSON, optional)" }
            textarea #filter name="filter" rows="3" placeholder="{\"status\": \"paid\"}" aria-describedby=[described("filter")] aria-invalid=[described("filter").map(|_| "true")] { (v.filter) }
            (field_error(err, "filter"))
            label for="select" { "Columns (comma-separated, optional)" }
            input #select name="select" value=(v.select) aria-describedby=[described("select")] aria-invalid=[described("select").map(|_| "true")];
            (field_error(err, "select"))
            label for="format" { "Format" }
            select #format name="format" {
                @for f in ["json", "slack", "discord"] { option value=(f) selected[v.format == f] { (f) } }
            }
            (field_error(err, "format"))
            label for="signature" { "Signature" }
            select #signature name="signature" {
                @for f in ["archie", "standard"] { option value=(f) selected[v.signature == f] { (f) } }
            }
            (field_error(err, "signature"))
            label.check { input type="checkbox" name="active" value="true" checked[v.active]; "Active" }
            button type="submit" { @if creating { "Create subscription" } @else { "Save changes" } }
        }
    }
}

fn form_page(s: &Session, title: &str, body: Markup, status: StatusCode) -> Response {
    let mut r = page::layout(title, Some(s), html! { h1 { (title) } (body) });
    *r.status_mut() = status;
    r
}

pub async fn new_form(Extension(s): Extension<Session>) -> Response {
    let v = Values {
        events: vec!["INSERT".into(), "UPDATE".into(), "DELETE".into()],
        format: "json".into(),
        signature: "archie".into(),
        active: true,
        ..Values::default()
    };
    let f = form(&s, "/console/subscriptions", &v, true, None);
    form_page(&s, "New subscription", f, StatusCode::OK)
}

pub async fn create(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Extension(f): Extension<Form>,
) -> Response {
    let result = match fields(&f, true) {
        Ok(fields) => webhooks::create_from(&c.ctx, &fields).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(sub) => {
            Redirect::to(&format!("/console/subscriptions/{}", enc(&sub.id))).into_response()
        }
        Err(e) if e.status().is_client_error() => {
            let status = e.status();
            let body = form(
                &s,
                "/console/subscriptions",
                &Values::from_form(&f),
                true,
                Some(&e),
            );
            form_page(&s, "New subscription", body, status)
        }
        Err(e) => page::error_page(&s, e),
    }
}

async fn load(c: &C, id: &str) -> Result<Stored, ApiError> {
    let client = c.ctx.outbox().await?;
    load_one(&**client, &c.ctx.state.schema, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no subscription with id {id:?}")))
}

fn details(s: &Session, sub: &Stored, edit: Markup) -> Markup {
    let id = enc(&sub.id);
    html! {
        p { "Id " code { (sub.id) } " · " (state(sub)) " · source " (sub.origin.as_str())
            @if let Some(r) = &sub.deactivated_reason { " · " span.error { (r) } } }
        nav.actions aria-label="Subscription" {
            a href=(format!("/console/subscriptions/{id}/deliveries")) { "Deliveries" }
            a href=(format!("/console/subscriptions/{id}/live")) { "Live" }
            a href=(format!("/console/subscriptions/{id}/backfills")) { "Backfills" }
            form method="post" action=(format!("/console/subscriptions/{id}/test")) {
                (csrf(s)) button type="submit" { "Send test" }
            }
            @if sub.origin == Origin::Api {
                @if sub.active {
                    form method="post" action=(format!("/console/subscriptions/{id}/pause")) { (csrf(s)) button type="submit" { "Pause" } }
                } @else {
                    form method="post" action=(format!("/console/subscriptions/{id}/resume")) { (csrf(s)) button type="submit" { "Resume" } }
                }
            }
        }
        (edit)
        @if sub.origin == Origin::Api {
            details.danger {
                summary { "Delete…" }
                p { "Deletes the subscription and all its deliveries, dead letters included. This cannot be undone." }
                form method="post" action=(format!("/console/subscriptions/{id}/delete")) {
                    (csrf(s)) button.bad type="submit" { "Delete " (sub.id) }
                }
            }
        }
    }
}

fn read_only(sub: &Stored) -> Markup {
    let v = Values::of(sub);
    html! {
        p.note role="note" { "This subscription comes from config.toml, so it is read-only here: "
            "the file is its source of truth and walhook would undo a change at the next start or "
            "reload. Edit config.toml and send SIGHUP." }
        dl.fields {
            dt { "Table" } dd { (v.table) }
            dt { "Events" } dd { (v.events.join(" ")) }
            dt { "URL" } dd { (v.url) }
            dt { "Filter" } dd { pre { (if v.filter.is_empty() { "—" } else { &v.filter }) } }
            dt { "Columns" } dd { (if v.select.is_empty() { "all" } else { &v.select }) }
            dt { "Format" } dd { (v.format) }
            dt { "Signature" } dd { (v.signature) }
        }
    }
}

pub async fn edit_form(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    match load(&c, &id).await {
        Ok(sub) => {
            let edit = if sub.origin == Origin::Config {
                read_only(&sub)
            } else {
                let action = format!("/console/subscriptions/{}", enc(&sub.id));
                form(&s, &action, &Values::of(&sub), false, None)
            };
            form_page(
                &s,
                &format!("Subscription {}", sub.table.display_name()),
                details(&s, &sub, edit),
                StatusCode::OK,
            )
        }
        Err(e) => page::error_page(&s, e),
    }
}

pub async fn update(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Extension(f): Extension<Form>,
    Path(id): Path<String>,
) -> Response {
    let result = match fields(&f, false) {
        Ok(fields) => webhooks::update_from(&c.ctx, &id, &fields).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(sub) => {
            Redirect::to(&format!("/console/subscriptions/{}", enc(&sub.id))).into_response()
        }
        Err(e) if e.status().is_client_error() && e.status() != StatusCode::NOT_FOUND => {
            let status = e.status();
            let sub = match load(&c, &id).await {
                Ok(sub) => sub,
                Err(e) => return page::error_page(&s, e),
            };
            let action = format!("/console/subscriptions/{}", enc(&id));
            let edit = form(&s, &action, &Values::from_form(&f), false, Some(&e));
            form_page(
                &s,
                &format!("Subscription {}", sub.table.display_name()),
                details(&s, &sub, edit),
                status,
            )
        }
        Err(e) => page::error_page(&s, e),
    }
}

async fn set_active(c: &C, s: &Session, id: &str, active: bool) -> Response {
    let fields = WebhookFields {
        active: Some(active),
        ..WebhookFields::default()
    };
    match webhooks::update_from(&c.ctx, id, &fields).await {
        Ok(sub) => {
            Redirect::to(&format!("/console/subscriptions/{}", enc(&sub.id))).into_response()
        }
        Err(e) => page::error_page(s, e),
    }
}

pub async fn pause(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    set_active(&c, &s, &id, false).await
}

pub async fn resume(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    set_active(&c, &s, &id, true).await
}

pub async fn delete(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    match webhooks::delete_by_id(&c.ctx, &id).await {
        Ok(()) => Redirect::to("/console/subscriptions").into_response(),
        Err(e) => page::error_page(&s, e),
    }
}

pub async fn test(
    State(c): State<C>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let sub = match load(&c, &id).await {
        Ok(sub) => sub,
        Err(e) => return page::error_page(&s, e),
    };
    let st = &c.ctx.state;
    let r = match ping::send(&sub, &st.project_id, &st.environment, &st.delivery).await {
        Ok(r) => r,
        Err(e) => {
            return page::error_page(
                &s,
                ApiError::Unprocessable {
                    message: e.to_string(),
                    field: None,
                },
            )
        }
    };
    let ok = r.http_status.is_some_and(|c| (200..300).contains(&c));
    let back = format!("/console/subscriptions/{}", enc(&sub.id));
    page::layout(
        "Test send",
        Some(&s),
        html! {
            h1 { "Test send" }
            p { "A signed PING to " code { (sub.url) } ", as a real delivery of " a href=(back) { (sub.id) } " would be sent." }
            dl.fields #test-result {
                dt { "Status" } dd { @if ok { span.badge.ok { (r.http_status.unwrap_or_default()) } }
                    @else { span.badge.bad { (r.http_status.map(|c| c.to_string()).unwrap_or_else(|| "no answer".into())) } } }
                dt { "Time" } dd { (r.duration_ms) " ms" }
                @if let Some(e) = &r.error { dt { "Error" } dd.error { (e) } }
                dt { "Response body" } dd { pre { (r.response_body) } }
            }
        },
    )
}
