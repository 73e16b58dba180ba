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
//! Connections are HTTP/1.1 with keep-alive and an idle pool per host ([`super::connections`]):
//! deliveries to one endpoint reuse warm connections, and HTTP/1.1 keeps one slow response from
//! stalling others on a shared h2 connection. A request that a reused connection could not even
//! start (the receiver closed it while idle) is sent once more on a new connection; one that was
//! written is never sent again here (its retry is the delivery's). At most
//! `max_requests_per_host` requests to one receiver are in flight ([`super::host_limit`]), so a
//! fan-out to thousands of subscriptions of one receiver goes through a bounded set of
//! connections instead of opening one per request.

use crate::model::BadValue;
use std::borrow::Cow;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER};
use tokio::time::{timeout_at, Instant as Deadline};

use super::connections::{ConnectError, Connections, Endpoint};
use super::egress::{host_label, EgressError, EgressPolicy};
use super::host_limit::HostLimits;
use super::sign::USER_AGENT;

/// URLs kept parsed at most (more distinct URLs than this only cost a parse each again).
const TARGETS_MAX: usize = 4096;

/// A URL the egress policy accepted: where to connect, its origin for [`HostLimits`], and the
/// request line's target and `Host` header, computed once.
struct Target {
    endpoint: Endpoint,
    uri: hyper::Uri,
    host: HeaderValue,
}

/// A kept-alive connection unused this long is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Response bytes read at most; beyond this the response is dropped unread.
const READ_CAP: usize = 64 * 1024;
/// Response bytes kept for the delivery log.
const KEEP: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot set up TLS for webhook delivery: {0}")]
    Tls(String),
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
    connections: Arc<Connections>,
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
        let connections = Connections::new(
            tokio_rustls::TlsConnector::from(Arc::new(tls_config(c)?)),
            policy.resolver(),
            c.connect_timeout.0,
            IDLE_TIMEOUT,
        );
        Ok(HttpSender {
            connections: Arc::new(connections),
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
        let endpoint = Endpoint::new(&parsed, HostLimits::origin(&parsed));
        let uri = endpoint.target.parse().map_err(|_| {
            EgressError::InvalidUrl("the path is not a valid request target".into())
        })?;
        let host = HeaderValue::from_str(&endpoint.authority)
            .map_err(|_| EgressError::InvalidUrl("the host is not a valid header value".into()))?;
        let t = Arc::new(Target {
            endpoint,
            uri,
            host,
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
        let _slot = self.limits.acquire(target.endpoint.origin.clone()).await;
        // Boxed: the exchange's state (hyper's request and response, two deadlines) is ~5 KB,
        // and thousands of attempts can wait for a slot above; only those holding one need it.
        Box::pin(self.attempt(&target, url, headers, body)).await
    }

    /// The attempt itself, once a slot at the receiver is held.
    async fn attempt(
        &self,
        target: &Target,
        url: &str,
        headers: &[(Cow<'static, str>, String)],
        body: Bytes,
    ) -> AttemptOutcome {
        let start = Instant::now();
        let deadline = Deadline::now() + self.timeout;
        let request = match request(target, headers, body) {
            Ok(r) => r,
            Err(e) => return AttemptOutcome::failed(start, ErrorKind::Other, e.0),
        };
        let (mut conn, resp) = match timeout_at(deadline, self.exchange(target, request)).await {
            Ok(Ok(done)) => done,
            Ok(Err(failure)) => {
                let (kind, msg) = self.explain(failure, url);
                return AttemptOutcome::failed(start, kind, msg);
            }
            Err(_) => return AttemptOutcome::failed(start, ErrorKind::Timeout, self.late(url)),
        };

        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let read = conn
            .parts()
            .1
            .drive(read_capped(resp.into_body(), deadline))
            .await;
        if read.complete {
            self.connections.put(&target.endpoint.origin, conn);
        }

        let (error_kind, error) = if let Some(e) = read.error {
            let (kind, msg) = match e {
                None => (ErrorKind::Timeout, self.late(url)),
                Some(e) => (ErrorKind::Body, self.explain(Failure::Send(e), url).1),
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
            response_body: read.kept,
            retry_after,
            duration: start.elapsed(),
        }
    }

    /// Sends `request` on a pooled or new connection and waits for the response head. A
    /// request that a reused connection did not start (closed while idle) goes once more on a
    /// new connection: nothing of it reached the receiver.
    async fn exchange(
        &self,
        target: &Target,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<(super::connections::Conn, hyper::Response<Incoming>), Failure> {
        let mut conn = self
            .connections
            .get(&target.endpoint)
            .await
            .map_err(Failure::Connect)?;
        let (send, io) = conn.parts();
        let resp = match io.drive(send.try_send_request(request)).await {
            Ok(r) => r,
            Err(mut e) => match e.take_message() {
                Some(request) if conn.reused => {
                    conn = self
                        .connections
                        .open(&target.endpoint)
                        .await
                        .map_err(Failure::Connect)?;
                    let (send, io) = conn.parts();
                    io.drive(send.send_request(request))
                        .await
                        .map_err(Failure::Send)?
                }
                _ => return Err(Failure::Send(e.into_error())),
            },
        };
        Ok((conn, resp))
    }

    /// The text of an attempt that passed `timeout` (before or after the response head).
    fn late(&self, url: &str) -> String {
        format!(
            "no complete response from {} within {:.1}s",
            host_of(url),
            self.timeout.as_secs_f64()
        )
    }

    /// The kind and text of a failure before a response head arrived.
    fn explain(&self, failure: Failure, url: &str) -> (ErrorKind, String) {
        let host = host_of(url);
        let (kind, detail) = match failure {
            Failure::Connect(ConnectError::Egress(eg)) => {
                let kind = if eg.is_dns() {
                    ErrorKind::Dns
                } else {
                    ErrorKind::Refused
                };
                return (kind, eg.to_string());
            }
            Failure::Connect(ConnectError::Timeout) => {
                let msg = format!(
                    "could not connect to {host} within {:.1}s",
                    self.connect_timeout.as_secs_f64()
                );
                return (ErrorKind::Timeout, msg);
            }
            Failure::Connect(e @ ConnectError::Tls(_)) => (ErrorKind::Tls, error_chain(&e)),
            Failure::Connect(e @ ConnectError::ServerName(_)) => (ErrorKind::Tls, e.to_string()),
            Failure::Connect(e) => (ErrorKind::Connect, error_chain(&e)),
            Failure::Send(e) if is_reset(&e) => (ErrorKind::Reset, error_chain(&e)),
            Failure::Send(e) => (ErrorKind::Other, error_chain(&e)),
        };
        let detail = detail.replace(url, &host);
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

/// What kept an attempt from getting a response head.
enum Failure {
    Connect(ConnectError),
    Send(hyper::Error),
}

/// The POST of `body` to `target` with `headers` (after `Host`; a `User-Agent` is added when
/// `headers` has none).
fn request(
    target: &Target,
    headers: &[(Cow<'static, str>, String)],
    body: Bytes,
) -> Result<hyper::Request<Full<Bytes>>, BadValue> {
    let mut map = header_map(headers)?;
    map.insert(HOST, target.host.clone());
    if !map.contains_key(hyper::header::USER_AGENT) {
        map.insert(
            hyper::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
    }
    let mut req = hyper::Request::new(Full::new(body));
    *req.method_mut() = hyper::Method::POST;
    *req.uri_mut() = target.uri.clone();
    *req.headers_mut() = map;
    Ok(req)
}

/// `host[:port]` for messages; parsed again only on the failure path, to keep the
/// success path free of it.
pub(super) fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| host_label(&u))
        .unwrap_or_else(|| "the endpoint".to_string())
}

/// A reset, a broken pipe, or a connection closed before the response was complete.
fn is_reset(e: &hyper::Error) -> bool {
    // Closed or cancelled: the connection died under the request (the peer reset or closed it
    // while we were still writing, or before it answered).
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        return true;
    }
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
        source = err.source();
    }
    false
}

/// `e`'s message and those of its sources, deduplicated. `io::Error::source` skips the error it
/// wraps (tokio-rustls's certificate errors), so a wrapped error is read through `get_ref`.
fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = next {
        let msg = err.to_string();
        if !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => inner.source(),
            None => err.source(),
        };
    }
    parts.join(": ")
}

/// Header names as `HeaderName`s; the ones walhook sends are built without allocating.
fn header_name(name: &str) -> Option<HeaderName> {
    Some(match name {
        "Content-Type" => CONTENT_TYPE,
        "User-Agent" => hyper::header::USER_AGENT,
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

/// What [`read_capped`] read of a response body.
struct Read {
    /// The first [`KEEP`] bytes, as text.
    kept: String,
    /// `Some(None)`: the deadline passed; `Some(Some(e))`: reading failed.
    error: Option<Option<hyper::Error>>,
    /// Read to its end: the connection can carry another request.
    complete: bool,
}

/// Reads at most `READ_CAP` bytes by `deadline`, keeping the first `KEEP`.
async fn read_capped(mut body: Incoming, deadline: Deadline) -> Read {
    let mut kept: Vec<u8> = Vec::new();
    let mut total = 0usize;
    let (error, complete) = loop {
        match timeout_at(deadline, body.frame()).await {
            Err(_) => break (Some(None), false),
            Ok(None) => break (None, true),
            Ok(Some(Err(e))) => break (Some(Some(e)), false),
            Ok(Some(Ok(frame))) => {
                let Ok(chunk) = frame.into_data() else {
                    continue; // trailers
                };
                if kept.len() < KEEP {
                    let take = (KEEP - kept.len()).min(chunk.len());
                    kept.extend_from_slice(&chunk[..take]);
                }
                total += chunk.len();
                if total >= READ_CAP {
                    // Not a failure; the rest is left unread and the connection closed.
                    break (None, body.is_end_stream());
                }
            }
        }
    };
    Read {
        kept: lossy_prefix(kept),
        error,
        complete,
    }
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

    /// Thousands of attempts can wait for a slot at one receiver (a change fanned out to
    /// 10,000 subscriptions of it); each holds its future meanwhile. Unboxed, the exchange's
    /// state made it 5.5 KB, 50 MB more at 10,000 (bench/scale.sh).
    #[test]
    fn a_waiting_attempt_is_small() {
        let sender = HttpSender::new(&crate::config::DeliveryConfig::default()).unwrap();
        let headers = vec![];
        let waiting = sender.post("https://receiver.test/hook", &headers, Bytes::new());
        let size = std::mem::size_of_val(&waiting);
        assert!(size <= 1024, "a waiting attempt takes {size} bytes");
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
