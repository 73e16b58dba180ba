//! The console's page frame and the helpers every page shares: the layout (navigation, sign-out
//! form, assets), form parsing, error pages and formatting.
//!
//! Guarantees: every value is HTML-escaped by maud (no `PreEscaped` of user data anywhere);
//! every page is sent with `Cache-Control: no-store`, a Content-Security-Policy that allows only
//! the console's own script and style (no inline script, nothing from another origin) and
//! forbids framing; database errors show a generic message (details go to the log only, as in
//! the API).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use maud::{html, Markup, DOCTYPE};

use super::session::Session;
use crate::api::ApiError;

/// A parsed `application/x-www-form-urlencoded` body, in field order (checkboxes repeat).
#[derive(Clone, Debug, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn parse(bytes: &[u8]) -> Form {
        Form(
            form_urlencoded::parse(bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A whole page; `session` adds the navigation and the sign-out button.
pub fn layout(title: &str, session: Option<&Session>, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · walhook" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "walhook" }
                    @if let Some(s) = session {
                        nav aria-label="Main" {
                            a href="/console" { "Overview" }
                            a href="/console/subscriptions" { "Subscriptions" }
                        }
                        form.signout method="post" action="/console/sign-out" {
                            (csrf(s))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    };
    with_headers(Html(markup.into_string()).into_response())
}

fn with_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// The hidden CSRF field every form carries.
pub fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// A bare error page (before a session exists, or when the request itself is refused).
pub fn plain_error(status: StatusCode, message: &str) -> Response {
    let mut resp = layout(
        status.canonical_reason().unwrap_or("Error"),
        None,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.error role="alert" { (message) }
            p { a href="/console" { "Back to the console" } }
        },
    );
    *resp.status_mut() = status;
    resp
}

/// An API error as a console page, with the API's status and message.
pub fn error_page(session: &Session, e: ApiError) -> Response {
    let status = e.status();
    let mut resp = layout(
        "Error",
        Some(session),
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.error role="alert" { (e.to_string()) }
            p { a href="/console/subscriptions" { "Back to the subscriptions" } }
        },
    );
    *resp.status_mut() = status;
    resp
}

pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `<time>` with the UTC timestamp, readable and machine-readable.
pub fn when(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => html! { time datetime=(time(t)) { (t.format("%Y-%m-%d %H:%M:%S")) } },
        None => html! { span.muted { "—" } },
    }
}

/// A wait, in the largest unit that keeps it readable: `45 s`, `12 min`, `3.5 h`, `2.1 d`.
pub fn age(seconds: f64) -> String {
    let s = seconds.max(0.0);
    match s {
        s if s >= 86_400.0 => format!("{:.1} d", s / 86_400.0),
        s if s >= 3_600.0 => format!("{:.1} h", s / 3_600.0),
        s if s >= 60.0 => format!("{:.0} min", (s / 60.0).floor()),
        s => format!("{s:.0} s"),
    }
}

pub fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    match n {
        n if n >= 1024.0 * 1024.0 * 1024.0 => format!("{:.1} GiB", n / 1073741824.0),
        n if n >= 1024.0 * 1024.0 => format!("{:.1} MiB", n / 1048576.0),
        n if n >= 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n => format!("{n} B"),
    }
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    // `%20`, not `+`: the result also goes into paths, where `+` is a plus.
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// JSON pretty-printed, or the text as it is when it does not parse.
pub fn pretty(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string())
}

pub const CSS: &str = include_str!("assets/console.css");
pub const JS: &str = include_str!("assets/console.js");

pub async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

pub async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_formatting() {
        let f = Form::parse(b"events=INSERT&events=DELETE&url=http%3A%2F%2Fx&csrf=a+b");
        assert_eq!(f.all("events"), vec!["INSERT", "DELETE"]);
        assert_eq!(f.get("url"), Some("http://x"));
        assert_eq!(f.get("csrf"), Some("a b"));
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(
            [
                age(-1.0),
                age(44.6),
                age(119.0),
                age(5_400.0),
                age(190_000.0)
            ],
            ["0 s", "45 s", "1 min", "1.5 h", "2.2 d"]
        );
        assert_eq!(pretty("{\"a\":1}"), "{\n  \"a\": 1\n}");
        assert_eq!(pretty("not json"), "not json");
        assert_eq!(enc("a b/c+"), "a%20b%2Fc%2B");
    }
}
