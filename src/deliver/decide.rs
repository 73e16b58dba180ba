//! What a finished attempt means, decided the moment it finishes: the retry policy's verdict
//! (delivered, retry later, dead letter, 410 Gone), the breaker's count, metrics and log lines,
//! and the row to write for it.
//!
//! Guarantees:
//! - the breaker counts each request as its answer arrives, before the pump starts another send,
//!   so a failing endpoint gets no more requests than `breaker_failures` before it opens, whether
//!   or not earlier results are still being written;
//! - each attempt yields exactly one [`Recorded`], kept in order until the recorder takes them.

use std::time::Instant;

use tracing::{debug, warn};

use super::attempt::{clean_text, commit_latency, report_breaker, Done};
use super::http::ErrorKind;
use super::policy::{AttemptResult, Breaker, Decision, RetryPolicy};
use crate::metrics::{Attempt, Metrics, Outcome};
use crate::outbox::queue::{NewStatus, Recorded};

/// Decided results waiting to be written.
#[derive(Default)]
pub(super) struct Decided {
    pub batch: Vec<Recorded>,
    /// Failed attempts among them: the outbox does not show them failed yet.
    pub failed: usize,
    /// A receiver answered 410 Gone: the subscription is to be deactivated once written.
    pub gone: bool,
}

impl Decided {
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Decides `done` and keeps its result.
    pub fn add(
        &mut self,
        done: &Done,
        retry: &RetryPolicy,
        breaker: &mut Breaker,
        metrics: &Metrics,
        sub_id: &str,
    ) {
        self.failed += usize::from(!done.outcome.is_success());
        let o = &done.outcome;
        let attempts_made = done.claimed.attempts as u32 + 1;
        let decision = retry.decide(
            attempts_made,
            AttemptResult {
                success: o.is_success(),
                http_status: o.http_status,
                retry_after: o.retry_after,
            },
            done.jitter,
        );
        if done.head && breaker.record(o.is_success(), Instant::now()) {
            let reason = match (o.http_status, &o.error) {
                (_, Some(e)) => Some(e.clone()),
                (Some(s), None) => Some(format!("HTTP {s}")),
                (None, None) => None,
            };
            report_breaker(breaker, metrics, sub_id, reason.filter(|_| !o.is_success()));
            warn!(subscription = %sub_id, state = ?breaker.state(), "circuit breaker changed state");
        }
        let (status, finished) = match decision {
            Decision::Delivered => {
                if let Some(lat) = commit_latency(&done.claimed.payload) {
                    metrics.delivered_latency(lat);
                }
                (NewStatus::Delivered, Some(Outcome::Delivered))
            }
            Decision::Retry { after } => {
                debug!(subscription = %sub_id, delivery = done.claimed.id, event_id = %done.claimed.event_id, attempt = attempts_made, retry_in_ms = after.as_millis() as u64, error = o.error.as_deref().unwrap_or(""), "delivery attempt failed; retrying");
                (NewStatus::Failed { retry_in: after }, None)
            }
            Decision::Dead => {
                warn!(subscription = %sub_id, delivery = done.claimed.id, event_id = %done.claimed.event_id, attempts = attempts_made, http_status = o.http_status, error = o.error.as_deref().unwrap_or(""), "delivery dead-lettered after its last attempt");
                (NewStatus::Dead, Some(Outcome::Dead))
            }
            Decision::Gone => {
                self.gone = true;
                (NewStatus::Dead, Some(Outcome::Dead))
            }
        };
        metrics.attempt(
            sub_id,
            if o.is_success() {
                Attempt::Success
            } else {
                Attempt::Failure
            },
        );
        if let Some(outcome) = finished {
            metrics.finished(sub_id, outcome);
        }
        self.batch.push(Recorded {
            id: done.claimed.id,
            status,
            attempted_at: done.attempted_at,
            duration_ms: o.duration.as_millis().min(i32::MAX as u128) as i32,
            http_status: o.http_status.map(i32::from),
            error_kind: o.error_kind.map(ErrorKind::as_str),
            error: o.error.as_deref().map(clean_text),
            response_body: clean_text(&o.response_body),
            first_attempt: done.claimed.attempts == 0,
        });
    }
}
