//! HTTP (temporary stub).
use std::time::{Duration, Instant};
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);
#[derive(Clone)]
pub struct HttpSender {
    client: reqwest::Client,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Timeout,
    Connect,
    Dns,
    Reset,
    Refused,
    Redirect,
    Status,
    Body,
    Other,
}
impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
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
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub http_status: Option<u16>,
    pub error_kind: Option<ErrorKind>,
    pub error: Option<String>,
    pub response_body: String,
    pub retry_after: Option<Duration>,
    pub duration: Duration,
}
impl AttemptOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self.http_status, Some(200..=299))
    }
}
impl HttpSender {
    pub fn new(c: &crate::config::DeliveryConfig) -> Result<HttpSender, HttpError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(c.timeout.0)
            .connect_timeout(c.connect_timeout.0)
            .build()
            .map_err(|e| HttpError(e.to_string()))?;
        Ok(HttpSender { client })
    }
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: bytes::Bytes,
    ) -> AttemptOutcome {
        let t = Instant::now();
        let mut r = self.client.post(url).body(body);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        match r.send().await {
            Ok(resp) => {
                let s = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .map(Duration::from_secs);
                let b = resp.text().await.unwrap_or_default();
                let ok = (200..300).contains(&s);
                AttemptOutcome {
                    http_status: Some(s),
                    error_kind: (!ok).then_some(ErrorKind::Status),
                    error: (!ok).then(|| format!("HTTP {s}")),
                    response_body: b.chars().take(1024).collect(),
                    retry_after,
                    duration: t.elapsed(),
                }
            }
            Err(e) => AttemptOutcome {
                http_status: None,
                error_kind: Some(if e.is_timeout() {
                    ErrorKind::Timeout
                } else {
                    ErrorKind::Connect
                }),
                error: Some(e.to_string()),
                response_body: String::new(),
                retry_after: None,
                duration: t.elapsed(),
            },
        }
    }
}
