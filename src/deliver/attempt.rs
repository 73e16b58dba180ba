//! One attempt's side helpers for the pump: sending a claimed row (or a batch of rows), reporting
//! the breaker, and what is logged or stored of an attempt (never a URL's path or credentials; no
//! NUL bytes). A panic while building or sending a request is that attempt's failure (retried on
//! the schedule), never a row held forever.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use futures_util::FutureExt;
use rand::Rng;
use tracing::error;

use super::batching;

use super::http::{AttemptOutcome, ErrorKind, HttpSender};
use super::policy::{Breaker, Permit};
use super::request;
use crate::metrics::Metrics;
use crate::outbox::queue::Claimed;
use crate::outbox::subscriptions::Stored;
use crate::telemetry::{AttemptSpan, Telemetry};

/// A finished attempt of one row, waiting to be recorded.
pub(super) struct Done {
    pub claimed: Claimed,
    pub outcome: AttemptOutcome,
    pub attempted_at: chrono::DateTime<Utc>,
    /// The retry schedule's jitter: one draw per request, so a failed batch's rows come due
    /// together and are claimed (and sent) together again.
    pub jitter: f64,
    /// The request's first row: the breaker counts requests, not rows.
    pub head: bool,
}

fn jitter() -> f64 {
    rand::thread_rng().gen_range(-1.0..=1.0)
}

/// The task of one single-row request.
pub(super) async fn attempt_one(
    sender: HttpSender,
    sub: Arc<Stored>,
    claimed: Claimed,
    telemetry: Telemetry,
) -> Vec<Done> {
    let attempted_at = Utc::now();
    let span = telemetry.attempt(AttemptSpan {
        event_id: &claimed.event_id,
        subscription: &sub.id,
        url: &sub.url,
        delivery_id: claimed.id,
        attempt: claimed.attempts as u32 + 1,
        events: 1,
    });
    let traceparent = span.traceparent();
    let outcome = AssertUnwindSafe(send(&sender, &sub, &claimed, attempted_at, traceparent))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            error!(subscription = %sub.id, event_id = %claimed.event_id, "building or sending a request panicked; the attempt counts as failed");
            panicked()
        });
    span.end(
        outcome.http_status,
        outcome.error_kind.map(ErrorKind::as_str),
    );
    vec![Done {
        claimed,
        outcome,
        attempted_at,
        jitter: jitter(),
        head: true,
    }]
}

/// The task of one batched request ([`batching::send`]): every row gets an outcome.
pub(super) async fn attempt_batch(
    sender: HttpSender,
    sub: Arc<Stored>,
    rows: Vec<Claimed>,
    telemetry: Telemetry,
) -> Vec<Done> {
    let attempted_at = Utc::now();
    let jitter = jitter();
    let span = rows.first().map(|first| {
        telemetry.attempt(AttemptSpan {
            event_id: &first.event_id,
            subscription: &sub.id,
            url: &sub.url,
            delivery_id: first.id,
            attempt: first.attempts as u32 + 1,
            events: rows.len(),
        })
    });
    let traceparent = span.as_ref().and_then(|s| s.traceparent());
    let outcomes = AssertUnwindSafe(batching::send(&sender, &sub, &rows, attempted_at, traceparent))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            error!(subscription = %sub.id, events = rows.len(), "building or sending a batch panicked; the attempt counts as failed");
            vec![panicked(); rows.len()]
        });
    if let (Some(span), Some(o)) = (span, outcomes.first()) {
        span.end(o.http_status, o.error_kind.map(ErrorKind::as_str));
    }
    rows.into_iter()
        .zip(outcomes)
        .enumerate()
        .map(|(i, (claimed, outcome))| Done {
            claimed,
            outcome,
            attempted_at,
            jitter,
            head: i == 0,
        })
        .collect()
}

/// A request that panicked while being built or sent: a failed attempt.
fn panicked() -> AttemptOutcome {
    AttemptOutcome {
        http_status: None,
        error_kind: Some(ErrorKind::Other),
        error: Some("internal error while sending (see walhook's log)".into()),
        response_body: String::new(),
        retry_after: None,
        duration: Duration::ZERO,
    }
}

/// One HTTP attempt: body in the subscription's format, headers signed with its secret.
async fn send(
    sender: &HttpSender,
    sub: &Stored,
    c: &Claimed,
    now: chrono::DateTime<Utc>,
    traceparent: Option<String>,
) -> AttemptOutcome {
    let failed = |kind: ErrorKind, error: String| AttemptOutcome {
        http_status: None,
        error_kind: Some(kind),
        error: Some(error),
        response_body: String::new(),
        retry_after: None,
        duration: Duration::ZERO,
    };
    let event = request::Event {
        payload: &c.payload,
        ordering_key: &c.ordering_key,
        event_id: &c.event_id,
        event: &c.event,
        sequence: c.sequence,
    };
    let (mut headers, body) = match request::build(sub, &event, now) {
        Ok(r) => r,
        Err(e) => return failed(ErrorKind::Other, e),
    };
    if let Some(tp) = traceparent {
        headers.push(("traceparent".into(), tp));
    }
    sender.post(&sub.url, &headers, Bytes::from(body)).await
}

/// Publishes `breaker`'s state, why it is not closed, and when it next lets a request through.
pub(super) fn report_breaker(
    breaker: &mut Breaker,
    metrics: &Metrics,
    sub: &str,
    reason: Option<String>,
) {
    let state = breaker.state();
    let next = match breaker.permit(Instant::now()) {
        Permit::Wait(Some(until)) => {
            Some(std::time::SystemTime::now() + until.saturating_duration_since(Instant::now()))
        }
        _ => None,
    };
    metrics.breaker_with(sub, state, reason, next);
}

/// Postgres text cannot hold NUL; a receiver's body may.
pub(super) fn clean_text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// Source commit → now, from the payload's `timestamp` (the commit time).
pub(super) fn commit_latency(payload: &str) -> Option<Duration> {
    const KEY: &str = "\"timestamp\":\"";
    let start = payload.find(KEY)? + KEY.len();
    let end = start + payload[start..].find('"')?;
    let text = &payload[start..end];
    // The rows of a source transaction share its commit time: parse each text once.
    thread_local! {
        static LAST: std::cell::RefCell<(String, Option<chrono::DateTime<Utc>>)> =
            const { std::cell::RefCell::new((String::new(), None)) };
    }
    let ts = LAST.with_borrow_mut(|(last, parsed)| {
        if last != text {
            last.clear();
            last.push_str(text);
            *parsed = chrono::DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.with_timezone(&Utc));
        }
        *parsed
    })?;
    (Utc::now() - ts).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_comes_from_the_payload_timestamp() {
        let ts = (Utc::now() - chrono::Duration::milliseconds(1500)).to_rfc3339();
        let payload = format!("{{\"id\":\"evt_1\",\"timestamp\":\"{ts}\",\"table\":\"t\"}}");
        let lat = commit_latency(&payload).unwrap();
        assert!(lat >= Duration::from_millis(1500) && lat < Duration::from_secs(5));
        assert_eq!(commit_latency("{\"id\":1}"), None);
        assert_eq!(commit_latency("{\"timestamp\":\"nope\"}"), None);
    }

    #[test]
    fn nul_bytes_are_replaced() {
        assert_eq!(clean_text("a\0b"), "a\u{FFFD}b");
    }
}
