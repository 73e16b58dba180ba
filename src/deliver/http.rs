//! One HTTP attempt: POST a signed body, classify what happened.
//!
//! Guarantees:
//! - nothing is sent to a URL the [`EgressPolicy`] refuses: IP literals are checked before the
//!   request, names after resolution by the client's resolver (see `egress`); a refusal is
//!   [`ErrorKind::Refused`] and no connection is made;
//! - redirects are never followed: a 3xx is a failure ([`ErrorKind::Redirect`]), so a receiver
//!   cannot bounce us into a private network; no proxy from the environment is used either;
//! - every attempt ends within `[delivery] timeout` (connect, TLS, request and response body
//!   together) and is classified into one [`ErrorKind`]; nothing here panics on what a receiver
//!   does;
//! - at most 64 KiB of a response body is read and its first 1 KiB kept; a longer body is not an
//!   error (the connection is simply not reused);
//! - `Retry-After` is honoured in both forms (delay-seconds and HTTP-date);
//! - error texts name the host (and port), never the path, query or userinfo: webhook URLs
//!   (Slack, Discord) carry their token in the path.
//!
//! TLS is rustls with the ring provider and the webpki root store plus the certificates of
//! `[delivery] ca_file` (receivers behind an internal CA), built here so that no process-wide
//! crypto provider or OS trust store is involved. A certificate that is not trusted or does not
//! name the receiver's host fails the attempt as [`ErrorKind::Tls`]; nothing is sent.
//! Connections are HTTP/1.1 with keep-alive and an idle pool per host: deliveries to one
//! endpoint reuse warm connections, and HTTP/1.1 keeps one slow response from stalling others on
//! a shared h2 connection. At most `max_requests_per_host` requests to one receiver are in flight
//! ([`super::host_limit`]), so a fan-out to thousands of subscriptions of one receiver goes
//! through a bounded set of connections instead of opening one per request.

use crate::model::BadValue;
use std::borrow::Cow;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::redirect::Policy;

use super::egress::{host_label, EgressError, EgressPolicy};
use super::host_limit::HostLimits;
use super::sign::USER_AGENT;

/// URLs kept parsed at most (more distinct URLs than this only cost a parse each again).
const TARGETS_MAX: usize = 4096;

/// A URL the egress policy accepted, and its origin for [`HostLimits`].
struct Target {
    url: reqwest::Url,
    origin: String,
}

/// Response bytes read at most; beyond this the response is dropped unread.
const READ_CAP: usize = 64 * 1024;
/// Response bytes kept for the delivery log.
const KEEP: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot set up TLS for webhook delivery: {0}")]
    Tls(String),
    #[error("cannot build the HTTP client for webhook delivery: {0}")]
    Client(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No complete response within the timeout (connect timeout included).
    Timeout,
    /// The TCP connection could not be established.
    Connect,
    /// The TLS handshake failed: the receiver's certificate is not trusted (unknown CA,
    /// expired) or does not name its host, or no common protocol; nothing was sent.
    Tls,
    /// The host name did not resolve.
    Dns,
    /// The connection was reset or closed before a complete response.
    Reset,
    /// The egress policy refused the URL or every address it resolved to; nothing was sent.
    Refused,
    /// A 3xx answer; its `Location` is never followed.
    Redirect,
    /// Any other non-2xx answer.
    Status,
    /// Reading the response body failed.
    Body,
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Dns => "dns",
            ErrorKind::Reset => "reset",
            ErrorKind::Refused => "refused",
            ErrorKind::Redirect => "redirect",
            ErrorKind::Status => "status",
            ErrorKind::Body => "body",
            ErrorKind::Other => "other",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub http_status: Option<u16>,
    pub error_kind: Option<ErrorKind>,
    pub error: Option<String>,
    /// The first 1 KiB of the response body, lossy UTF-8.
    pub response_body: String,
    pub retry_after: Option<Duration>,
    pub duration: Duration,
}

impl AttemptOutcome {
    /// A 2xx answer whose body could be read. A body that fails mid-way after a 2xx counts as a
    /// failure: redelivering is safe (receivers deduplicate by event id), losing an event is not.
    pub fn is_success(&self) -> bool {
        matches!(self.http_status, Some(200..=299)) && self.error_kind.is_none()
    }

    fn failed(start: Instant, kind: ErrorKind, error: String) -> AttemptOutcome {
        AttemptOutcome {
            http_status: None,
            error_kind: Some(kind),
            error: Some(error),
            response_body: String::new(),
            retry_after: None,
            duration: start.elapsed(),
        }
    }
}

#[derive(Clone)]
pub struct HttpSender {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
    /// `max_requests_per_host`: shared by every clone of this sender.
    limits: Arc<HostLimits>,
    /// URLs the policy accepted, parsed once: parsing and checking every request's URL cost
    /// ~2.5% of walhook's CPU. Bounded: emptied when it reaches [`TARGETS_MAX`] entries.
    targets: Arc<Mutex<HashMap<String, Arc<Target>>>>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for HttpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSender")
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

fn tls_config(c: &crate::config::DeliveryConfig) -> Result<rustls::ClientConfig, HttpError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // In addition to the built-in roots: an internal CA does not make public receivers
    // untrusted. The file was checked at config load; read again here so that a file replaced
    // since then is an error at start, not a silently different trust store.
    for cert in c.ca_certs().map_err(|e| HttpError::Tls(e.0))? {
        roots
            .add(cert)
            .map_err(|e| HttpError::Tls(format!("delivery.ca_file: {e}")))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Matches http1_only below: a server must not pick h2 for a client that will speak 1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl HttpSender {
    pub fn new(c: &crate::config::DeliveryConfig) -> Result<HttpSender, HttpError> {
        let policy = EgressPolicy::from_config(c);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(c)?)
            .http1_only()
            .redirect(Policy::none())
            .no_proxy()
            .referer(false)
            .user_agent(USER_AGENT)
            .connect_timeout(c.connect_timeout.0)
            .timeout(c.timeout.0)
            .dns_resolver(policy.resolver())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(usize::MAX)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| HttpError::Client(error_chain(&e.without_url())))?;
        Ok(HttpSender {
            client,
            policy: Arc::new(policy),
            limits: HostLimits::new(c.max_requests_per_host),
            targets: Arc::default(),
            timeout: c.timeout.0,
            connect_timeout: c.connect_timeout.0,
        })
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// `url` checked against the policy, from [`Self::targets`] when it was accepted before. A
    /// refusal is not kept: it is checked again (and explained) every time.
    fn target(&self, url: &str) -> Result<Arc<Target>, EgressError> {
        let lock = || self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = lock().get(url) {
            return Ok(t.clone());
        }
        let parsed = self.policy.check_url(url)?;
        let t = Arc::new(Target {
            origin: HostLimits::origin(&parsed),
            url: parsed,
        });
        let mut targets = lock();
        if targets.len() >= TARGETS_MAX {
            targets.clear();
        }
        targets.insert(url.to_string(), t.clone());
        Ok(t)
    }

    /// POSTs `body` to `url` with `headers`; never fails, the outcome says what happened.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(Cow<'static, str>, String)],
        body: Bytes,
    ) -> AttemptOutcome {
        let start = Instant::now();
        let target = match self.target(url) {
            Ok(t) => t,
            Err(e) => {
                let kind = match e {
                    EgressError::InvalidUrl(_) | EgressError::NoHost => ErrorKind::Other,
                    _ => ErrorKind::Refused,
                };
                return AttemptOutcome::failed(start, kind, e.to_string());
            }
        };
        // Held until the response is read (or given up); the wait for it is not part of the
        // attempt's duration or timeout: the receiver has not been asked anything yet.
        let _slot = self.limits.acquire(target.origin.clone()).await;
        let start = Instant::now();
        let map = match header_map(headers) {
            Ok(m) => m,
            Err(e) => return AttemptOutcome::failed(start, ErrorKind::Other, e.0),
        };

        let resp = match self
            .client
            .post(target.url.clone())
            .headers(map)
            .body(body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let (kind, msg) = self.classify(&e, url);
                return AttemptOutcome::failed(start, kind, msg);
            }
        };

        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let (response_body, body_err) = read_capped(resp).await;

        let (error_kind, error) = if let Some(e) = body_err {
            let (kind, msg) = self.classify(&e, url);
            let kind = if kind == ErrorKind::Timeout {
                kind
            } else {
                ErrorKind::Body
            };
            (
                Some(kind),
                Some(format!("reading the response body: {msg}")),
            )
        } else if status.is_success() {
            (None, None)
        } else {
            let kind = if status.is_redirection() {
                ErrorKind::Redirect
            } else {
                ErrorKind::Status
            };
            let mut msg = format!("{} answered HTTP {}", host_of(url), status.as_u16());
            if let Some(reason) = status.canonical_reason() {
                msg.push(' ');
                msg.push_str(reason);
            }
            if kind == ErrorKind::Redirect {
                msg.push_str("; redirects are not followed");
            }
            (Some(kind), Some(msg))
        };
        AttemptOutcome {
            http_status: Some(status.as_u16()),
            error_kind,
            error,
            response_body,
            retry_after,
            duration: start.elapsed(),
        }
    }

    fn classify(&self, e: &reqwest::Error, url: &str) -> (ErrorKind, String) {
        let host = host_of(url);
        let mut source: Option<&(dyn StdError + 'static)> = e.source();
        while let Some(err) = source {
            if let Some(eg) = err.downcast_ref::<EgressError>() {
                let kind = if eg.is_dns() {
                    ErrorKind::Dns
                } else {
                    ErrorKind::Refused
                };
                return (kind, eg.to_string());
            }
            source = err.source();
        }
        // The connect timeout also reports is_timeout; say which deadline passed.
        if e.is_timeout() {
            let msg = if e.is_connect() {
                format!(
                    "could not connect to {host} within {:.1}s",
                    self.connect_timeout.as_secs_f64()
                )
            } else {
                format!(
                    "no complete response from {host} within {:.1}s",
                    self.timeout.as_secs_f64()
                )
            };
            return (ErrorKind::Timeout, msg);
        }
        let detail = error_chain(e).replace(url, &host);
        let kind = if is_tls(e) {
            ErrorKind::Tls
        } else if is_reset(e) {
            ErrorKind::Reset
        } else if e.is_connect() {
            ErrorKind::Connect
        } else if e.is_body() || e.is_decode() {
            ErrorKind::Body
        } else {
            ErrorKind::Other
        };
        let verb = match kind {
            ErrorKind::Connect => "connecting to",
            ErrorKind::Tls => "TLS handshake with",
            ErrorKind::Reset => "connection reset by",
            _ => "request to",
        };
        let hint = match kind {
            ErrorKind::Tls if detail.contains("UnknownIssuer") => {
                " (the receiver's certificate is not signed by a trusted CA; for an internal CA \
                 set [delivery] ca_file)"
            }
            ErrorKind::Tls if detail.contains("not valid for name") => {
                " (the receiver's certificate does not name this host)"
            }
            _ => "",
        };
        (kind, format!("{verb} {host}: {detail}{hint}"))
    }
}

/// `host[:port]` for messages; parsed again only on the failure path, to keep the
/// success path free of it.
pub(super) fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| host_label(&u))
        .unwrap_or_else(|| "the endpoint".to_string())
}

/// Whether a rustls error (certificate, handshake) is in the chain. `io::Error::source` skips
/// the error it wraps (hyper-rustls wraps tokio-rustls's io::Error in another), so wrapped
/// errors are looked at through `get_ref`.
fn is_tls(e: &reqwest::Error) -> bool {
    fn wraps_rustls(err: &(dyn StdError + 'static)) -> bool {
        err.is::<rustls::Error>()
            || err
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| wraps_rustls(inner))
    }
    let mut source: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(err) = source {
        if wraps_rustls(err) {
            return true;
        }
        source = err.source();
    }
    false
}

/// A reset, a broken pipe, or a connection closed before the response was complete.
fn is_reset(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof
            ) {
                return true;
            }
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            // Closed or cancelled: the pooled connection died under the request (the peer
            // reset it while we were still writing).
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// The messages below reqwest's own (whose text would include the full URL), deduplicated.
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(err) = source {
        let msg = err.to_string();
        // hyper-util's "client error (Connect)" wrapper adds nothing the kind does not say.
        if !msg.starts_with("client error (") && !parts.iter().any(|p| p == &msg) {
            parts.push(msg);
        }
        source = err.source();
    }
    if parts.is_empty() {
        // reqwest's message without the URL part.
        let mut s = e.to_string();
        if let Some(i) = s.find(" for url (") {
            s.truncate(i);
        }
        return s;
    }
    parts.join(": ")
}

/// Header names as `HeaderName`s; the ones walhook sends are built without allocating.
fn header_name(name: &str) -> Option<HeaderName> {
    Some(match name {
        "Content-Type" => CONTENT_TYPE,
        "User-Agent" => reqwest::header::USER_AGENT,
        "X-Archie-Event" => HeaderName::from_static("x-archie-event"),
        "X-Archie-Delivery" => HeaderName::from_static("x-archie-delivery"),
        "X-Archie-Signature" => HeaderName::from_static("x-archie-signature"),
        "X-Webhook-Signature" => HeaderName::from_static("x-webhook-signature"),
        "webhook-id" => HeaderName::from_static("webhook-id"),
        "webhook-timestamp" => HeaderName::from_static("webhook-timestamp"),
        "webhook-signature" => HeaderName::from_static("webhook-signature"),
        "X-Walhook-Delivery-Id" => HeaderName::from_static("x-walhook-delivery-id"),
        "X-Walhook-Sequence" => HeaderName::from_static("x-walhook-sequence"),
        other => return HeaderName::from_bytes(other.as_bytes()).ok(),
    })
}

fn header_map(headers: &[(Cow<'static, str>, String)]) -> Result<HeaderMap, BadValue> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let n = header_name(name).ok_or_else(|| format!("invalid header name {name:?}"))?;
        // The value is not echoed: it may be a signature or a subscription's token.
        let v = HeaderValue::from_str(value)
            .map_err(|_| format!("header {name}: the value is not a valid header value"))?;
        map.append(n, v);
    }
    Ok(map)
}

/// Reads at most `READ_CAP` bytes, keeping the first `KEEP`.
async fn read_capped(mut resp: reqwest::Response) -> (String, Option<reqwest::Error>) {
    let mut kept: Vec<u8> = Vec::new();
    let mut total = 0usize;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if kept.len() < KEEP {
                    let take = (KEEP - kept.len()).min(chunk.len());
                    kept.extend_from_slice(&chunk[..take]);
                }
                total += chunk.len();
                if total >= READ_CAP {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => return (lossy_prefix(kept), Some(e)),
        }
    }
    (lossy_prefix(kept), None)
}

/// UTF-8 text of a body prefix; a character cut by the 1 KiB limit is dropped, not replaced.
fn lossy_prefix(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let mut bytes = e.into_bytes();
            if let Err(u) = std::str::from_utf8(&bytes) {
                if u.error_len().is_none() {
                    bytes.truncate(u.valid_up_to());
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }
}

/// `Retry-After: <seconds>` or `Retry-After: <HTTP-date>` (a past date means now).
pub fn parse_retry_after(v: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().ok().map(Duration::from_secs);
    }
    let when = httpdate::parse_http_date(s).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let p = |s: &str| parse_retry_after(&HeaderValue::from_str(s).unwrap(), now);
        assert_eq!(p("7"), Some(Duration::from_secs(7)));
        assert_eq!(p(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(p("0"), Some(Duration::ZERO));
        assert_eq!(
            p("Sun, 06 Nov 1994 08:50:37 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            p("Sunday, 06-Nov-94 08:49:47 GMT"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(p("Sun Nov  6 08:49:40 1994"), Some(Duration::from_secs(3)));
        assert_eq!(p("Sat, 05 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(p("-5"), None);
        assert_eq!(p("1.5"), None);
        assert_eq!(p("soon"), None);
        assert_eq!(p("99999999999999999999999"), None);
        assert_eq!(p(""), None);
    }

    #[test]
    fn body_prefix_drops_a_cut_character() {
        let mut v = "a".repeat(1023).into_bytes();
        v.push(0xC3); // first byte of "é"
        assert_eq!(lossy_prefix(v), "a".repeat(1023));
        assert_eq!(lossy_prefix(vec![b'a', 0xFF, b'b']), "a\u{FFFD}b");
    }

    #[test]
    fn known_header_names() {
        for n in [
            "Content-Type",
            "User-Agent",
            "X-Archie-Event",
            "X-Archie-Delivery",
            "X-Archie-Signature",
            "X-Webhook-Signature",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "X-Walhook-Delivery-Id",
            "X-Walhook-Sequence",
            "X-Other",
        ] {
            assert_eq!(header_name(n).unwrap().as_str(), n.to_ascii_lowercase());
        }
        assert!(header_name("bad name").is_none());
        let e = header_map(&[("X-Archie-Event".into(), "a\nb".into())]).unwrap_err();
        assert!(!e.contains("a\nb"));
    }

    #[test]
    fn error_kind_strings() {
        let all = [
            (ErrorKind::Timeout, "timeout"),
            (ErrorKind::Connect, "connect"),
            (ErrorKind::Tls, "tls"),
            (ErrorKind::Dns, "dns"),
            (ErrorKind::Reset, "reset"),
            (ErrorKind::Refused, "refused"),
            (ErrorKind::Redirect, "redirect"),
            (ErrorKind::Status, "status"),
            (ErrorKind::Body, "body"),
            (ErrorKind::Other, "other"),
        ];
        for (k, s) in all {
            assert_eq!(k.as_str(), s);
        }
    }

    #[tokio::test]
    async fn refused_and_invalid_urls_send_nothing() {
        let sender = HttpSender::new(&crate::config::DeliveryConfig::default()).unwrap();
        let o = sender
            .post("http://u:hunter2@127.0.0.1:9/tok", &[], Bytes::new())
            .await;
        assert_eq!(o.error_kind, Some(ErrorKind::Refused));
        assert_eq!(o.http_status, None);
        let msg = o.error.clone().unwrap();
        assert!(!msg.contains("hunter2") && !msg.contains("tok"), "{msg}");
        assert!(!o.is_success());
        let o = sender.post("::not a url", &[], Bytes::new()).await;
        assert_eq!(o.error_kind, Some(ErrorKind::Other));
    }
}
