//! Console sessions: sign-in with the management token, the session cookie, CSRF tokens, and the
//! middleware that guards every other console URL.
//!
//! Guarantees:
//! - the token is compared in constant time (both sides hashed with SHA-256 first, so neither
//!   its content nor its length leaks through timing) and never logged or echoed;
//! - the session cookie is `HttpOnly; SameSite=Strict; Path=/console`, `Secure` when the request
//!   came over TLS (`X-Forwarded-Proto: https` from the proxy in front); sessions expire after
//!   [`SESSION_TTL`] and the store holds at most [`MAX_SESSIONS`] (the oldest goes first);
//! - sessions are looked up by the SHA-256 of their id, so a lookup's timing says nothing about
//!   how much of a guessed id was right;
//! - without a valid session every guarded URL answers 303 to the sign-in page, whatever the
//!   method; with one, a POST whose form lacks the session's CSRF token is refused with 403
//!   before any handler runs. The sign-in form itself carries a double-submit token (a cookie
//!   and a hidden field that must match).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::page::{self, Form};
use super::C;

pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
pub const MAX_SESSIONS: usize = 1000;
/// Largest console form accepted (a subscription's filter is the biggest field).
pub const MAX_FORM: usize = 256 * 1024;
const SESSION_COOKIE: &str = "walhook_session";
const PRESIGN_COOKIE: &str = "walhook_signin";

/// The signed-in session of a request, put in its extensions by [`require_session`].
#[derive(Clone, Debug)]
pub struct Session {
    key: [u8; 32],
    pub csrf: String,
}

struct Entry {
    csrf: String,
    created: Instant,
}

/// In-memory, bounded session store.
pub struct Store {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    ttl: Duration,
}

impl Store {
    pub fn new(ttl: Duration) -> Store {
        Store {
            entries: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// A new session: (cookie value, CSRF token).
    pub fn create(&self) -> (String, String) {
        let id = random_token();
        let csrf = random_token();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = self.ttl;
        entries.retain(|_, e| e.created.elapsed() < ttl);
        if entries.len() >= MAX_SESSIONS {
            if let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.created)
                .map(|(k, _)| *k)
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            key_of(&id),
            Entry {
                csrf: csrf.clone(),
                created: Instant::now(),
            },
        );
        (id, csrf)
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let key = key_of(id);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&key) {
            Some(e) if e.created.elapsed() < self.ttl => Some(Session {
                key,
                csrf: e.csrf.clone(),
            }),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Whether the session is still signed in (the live stream asks between events).
    pub fn alive(&self, s: &Session) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&s.key)
            .is_some_and(|e| e.created.elapsed() < self.ttl)
    }

    fn remove(&self, s: &Session) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(&s.key);
    }
}

fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Constant-time equality of two secrets of any length.
pub fn same_secret(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes())
        .ct_eq(&Sha256::digest(b.as_bytes()))
        .into()
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Behind a TLS-terminating proxy the cookie must be `Secure`.
fn secure(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn set_cookie(headers: &HeaderMap, name: &str, value: &str, max_age: u64) -> String {
    format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure(headers) { "; Secure" } else { "" }
    )
}

fn to_sign_in() -> Response {
    Redirect::to("/console/sign-in").into_response()
}

/// Guards every console URL but the sign-in page and the assets (see module doc).
pub async fn require_session(State(c): State<C>, req: Request, next: Next) -> Response {
    let Some(session) = cookie(req.headers(), SESSION_COOKIE).and_then(|id| c.sessions.get(id))
    else {
        return to_sign_in();
    };
    let (mut parts, body) = req.into_parts();
    if parts.method == Method::POST {
        let Ok(bytes) = to_bytes(body, MAX_FORM).await else {
            return page::plain_error(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.");
        };
        let form = Form::parse(&bytes);
        if !form
            .get("csrf")
            .is_some_and(|t| same_secret(t, &session.csrf))
        {
            return page::plain_error(
                StatusCode::FORBIDDEN,
                "The form's CSRF token is missing or wrong. Reload the page and try again.",
            );
        }
        parts.extensions.insert(form);
        parts.extensions.insert(session);
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    }
    parts.extensions.insert(session);
    next.run(Request::from_parts(parts, body)).await
}

fn sign_in_page(headers: &HeaderMap, status: StatusCode, error: Option<&str>) -> Response {
    let presign = random_token();
    let body = html! {
        section.signin {
            h1 { "Sign in to walhook" }
            form method="post" action="/console/sign-in" {
                input type="hidden" name="csrf" value=(presign);
                label for="token" { "Management token" }
                input #token type="password" name="token" autocomplete="current-password"
                    required autofocus aria-describedby="token-help";
                p #token-help .help { "The " code { "[api] token" } " of walhook's config.toml." }
                @if let Some(e) = error {
                    p.error role="alert" { (e) }
                }
                button type="submit" { "Sign in" }
            }
        }
    };
    let mut resp = page::layout("Sign in", None, body);
    *resp.status_mut() = status;
    if let Ok(v) = set_cookie(headers, PRESIGN_COOKIE, &presign, 3600).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

pub async fn sign_in_form(State(c): State<C>, headers: HeaderMap) -> Response {
    if cookie(&headers, SESSION_COOKIE)
        .and_then(|id| c.sessions.get(id))
        .is_some()
    {
        return Redirect::to("/console").into_response();
    }
    sign_in_page(&headers, StatusCode::OK, None)
}

pub async fn sign_in(State(c): State<C>, headers: HeaderMap, body: Body) -> Response {
    let Ok(bytes) = to_bytes(body, MAX_FORM).await else {
        return page::plain_error(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.");
    };
    let form = Form::parse(&bytes);
    let double_submit = match (form.get("csrf"), cookie(&headers, PRESIGN_COOKIE)) {
        (Some(f), Some(k)) => same_secret(f, k),
        _ => false,
    };
    if !double_submit {
        return page::plain_error(
            StatusCode::FORBIDDEN,
            "The sign-in form's CSRF token is missing or wrong. Reload the page and try again.",
        );
    }
    let token = form.get("token").unwrap_or_default();
    if token.is_empty() || !same_secret(token, c.ctx.state.token.expose()) {
        tracing::warn!("console: sign-in with a wrong token");
        return sign_in_page(
            &headers,
            StatusCode::UNAUTHORIZED,
            Some("Wrong token. Use the [api] token of walhook's config.toml."),
        );
    }
    let (id, _) = c.sessions.create();
    tracing::info!("console: signed in");
    let mut resp = Redirect::to("/console").into_response();
    let ttl = c.ttl.as_secs();
    for v in [
        set_cookie(&headers, SESSION_COOKIE, &id, ttl),
        set_cookie(&headers, PRESIGN_COOKIE, "", 0),
    ] {
        if let Ok(v) = v.parse() {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

pub async fn sign_out(
    State(c): State<C>,
    headers: HeaderMap,
    axum::Extension(s): axum::Extension<Session>,
) -> Response {
    c.sessions.remove(&s);
    let mut resp = to_sign_in();
    if let Ok(v) = set_cookie(&headers, SESSION_COOKIE, "", 0).parse() {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_are_bounded() {
        let store = Store::new(Duration::from_millis(50));
        let (id, csrf) = store.create();
        assert_eq!(store.get(&id).unwrap().csrf, csrf);
        assert!(store.get("nope").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(store.get(&id).is_none());
        let store = Store::new(SESSION_TTL);
        let first = store.create().0;
        for _ in 0..MAX_SESSIONS {
            store.create();
        }
        assert!(store.get(&first).is_none(), "the oldest session went first");
        assert!(store.entries.lock().unwrap().len() <= MAX_SESSIONS);
    }

    #[test]
    fn cookies_and_secrets() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; walhook_session=abc".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert!(!set_cookie(&h, "x", "y", 1).contains("Secure"));
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        let c = set_cookie(&h, "x", "y", 1);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(same_secret("t", "t") && !same_secret("t", "tt"));
    }
}
