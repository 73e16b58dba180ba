//! What happens after an attempt: the retry schedule and the per-subscription circuit breaker.
//!
//! Guarantees:
//! - pure: no I/O and no clock of its own (time and randomness are passed in), so every branch
//!   is unit-tested;
//! - retries never silently stop: an attempt ends as delivered, retried at a definite time, or
//!   dead-lettered; after the last scheduled attempt the delivery is dead;
//! - `Retry-After` on 429/503 is honoured but kept within [scheduled, 2 × scheduled], so a
//!   receiver can slow us down without stalling the queue forever;
//! - a breaker that is open sends nothing and consumes no attempts; after the cooldown exactly
//!   one probe goes out, and its result closes or re-opens the breaker.

use std::time::{Duration, Instant};

use crate::metrics::BreakerState;

/// Plus or minus this fraction of each scheduled delay.
pub const JITTER: f64 = 0.2;

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Delivered,
    Retry {
        after: Duration,
    },
    Dead,
    /// 410 Gone: dead-letter this delivery and deactivate the subscription.
    Gone,
}

/// What the policy needs to know about an attempt.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttemptResult {
    pub success: bool,
    pub http_status: Option<u16>,
    pub retry_after: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// `schedule[i]` is the delay before attempt `i + 1`; its length is the number of attempts.
    schedule: Vec<Duration>,
}

impl RetryPolicy {
    pub fn new(schedule: Vec<Duration>) -> RetryPolicy {
        assert!(!schedule.is_empty(), "validated by config");
        RetryPolicy { schedule }
    }

    pub fn max_attempts(&self) -> u32 {
        self.schedule.len() as u32
    }

    /// `attempts_made` counts the attempt just finished; `jitter` is uniform in [-1, 1].
    pub fn decide(&self, attempts_made: u32, result: AttemptResult, jitter: f64) -> Decision {
        if result.success {
            return Decision::Delivered;
        }
        if result.http_status == Some(410) {
            return Decision::Gone;
        }
        let Some(base) = self.schedule.get(attempts_made as usize) else {
            return Decision::Dead;
        };
        let scheduled = base.mul_f64(1.0 + JITTER * jitter.clamp(-1.0, 1.0));
        let after = match (result.http_status, result.retry_after) {
            (Some(429 | 503), Some(asked)) => asked.clamp(scheduled, scheduled * 2),
            _ => scheduled,
        };
        Decision::Retry { after }
    }
}

/// Whether a subscription may send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: send as much as capacity allows.
    Open,
    /// Half-open: send exactly one probe.
    Probe,
    /// Open breaker or a probe already out: send nothing until then (or until the probe ends).
    Wait(Option<Instant>),
}

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    consecutive_failures: u32,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_out: bool },
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            consecutive_failures: 0,
            state: State::Closed,
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to send; a [`Permit::Probe`] must be followed by [`Breaker::probe_sent`].
    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.state {
            State::Closed => Permit::Open,
            State::Open { until } if now < until => Permit::Wait(Some(until)),
            State::Open { .. } => {
                self.state = State::HalfOpen { probe_out: false };
                Permit::Probe
            }
            State::HalfOpen { probe_out: false } => Permit::Probe,
            State::HalfOpen { probe_out: true } => Permit::Wait(None),
        }
    }

    pub fn probe_sent(&mut self) {
        if let State::HalfOpen { .. } = self.state {
            self.state = State::HalfOpen { probe_out: true };
        }
    }

    /// The receiver's URL or secret changed: an open breaker tries the fix at once (one probe)
    /// instead of waiting out its cooldown. Returns true when the state changed.
    pub fn probe_now(&mut self) -> bool {
        if let State::Open { .. } = self.state {
            self.state = State::HalfOpen { probe_out: false };
            return true;
        }
        false
    }

    /// A probe that was claimed but not sent (nothing was due): let the next one go.
    pub fn probe_unused(&mut self) {
        if let State::HalfOpen { .. } = self.state {
            self.state = State::HalfOpen { probe_out: false };
        }
    }

    /// Records an attempt's outcome; returns true when the state changed.
    pub fn record(&mut self, success: bool, now: Instant) -> bool {
        let before = self.state();
        if success {
            self.consecutive_failures = 0;
            self.state = State::Closed;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            let reopen = matches!(self.state, State::HalfOpen { .. });
            if reopen || self.consecutive_failures >= self.threshold {
                self.state = State::Open {
                    until: now + self.cooldown,
                };
            }
        }
        before != self.state()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fix_lets_an_open_breaker_probe_at_once() {
        let now = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(600));
        assert!(!b.probe_now(), "a closed breaker has nothing to probe");
        b.record(false, now);
        assert!(matches!(b.permit(now), Permit::Wait(Some(_))));
        assert!(b.probe_now());
        assert!(matches!(b.permit(now), Permit::Probe));
        b.probe_sent();
        b.record(true, now);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn archie() -> RetryPolicy {
        RetryPolicy::new(vec![secs(0), secs(1), secs(5), secs(30), secs(300)])
    }

    fn failed(status: Option<u16>) -> AttemptResult {
        AttemptResult {
            success: false,
            http_status: status,
            retry_after: None,
        }
    }

    #[test]
    fn follows_the_schedule_then_dead_letters() {
        let p = archie();
        let got: Vec<Decision> = (1..=5)
            .map(|n| p.decide(n, failed(Some(500)), 0.0))
            .collect();
        assert_eq!(
            got,
            vec![
                Decision::Retry { after: secs(1) },
                Decision::Retry { after: secs(5) },
                Decision::Retry { after: secs(30) },
                Decision::Retry { after: secs(300) },
                Decision::Dead,
            ]
        );
        assert_eq!(p.max_attempts(), 5);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let p = archie();
        assert_eq!(
            p.decide(3, failed(None), 1.0),
            Decision::Retry { after: secs(36) }
        );
        assert_eq!(
            p.decide(3, failed(None), -1.0),
            Decision::Retry { after: secs(24) }
        );
        assert_eq!(
            p.decide(3, failed(None), 7.0),
            Decision::Retry { after: secs(36) }
        );
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let p = archie();
        let with = |status, asked| AttemptResult {
            success: false,
            http_status: Some(status),
            retry_after: Some(secs(asked)),
        };
        // Scheduled 30s: 45s is honoured, 10s is raised to 30s, 600s capped at 60s.
        assert_eq!(
            p.decide(3, with(429, 45), 0.0),
            Decision::Retry { after: secs(45) }
        );
        assert_eq!(
            p.decide(3, with(503, 10), 0.0),
            Decision::Retry { after: secs(30) }
        );
        assert_eq!(
            p.decide(3, with(429, 600), 0.0),
            Decision::Retry { after: secs(60) }
        );
        // Only 429 and 503 carry a meaningful Retry-After.
        assert_eq!(
            p.decide(3, with(500, 45), 0.0),
            Decision::Retry { after: secs(30) }
        );
    }

    #[test]
    fn success_and_gone() {
        let p = archie();
        let ok = AttemptResult {
            success: true,
            http_status: Some(204),
            retry_after: None,
        };
        assert_eq!(p.decide(5, ok, 0.0), Decision::Delivered);
        assert_eq!(p.decide(1, failed(Some(410)), 0.0), Decision::Gone);
    }

    #[test]
    fn breaker_opens_after_threshold_and_probes_after_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(5, secs(120));
        for i in 0..4 {
            assert!(!b.record(false, t0), "failure {i} must not open");
            assert_eq!(b.permit(t0), Permit::Open);
        }
        assert!(b.record(false, t0));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.permit(t0 + secs(119)), Permit::Wait(Some(t0 + secs(120))));
        assert_eq!(b.permit(t0 + secs(120)), Permit::Probe);
        b.probe_sent();
        assert_eq!(b.permit(t0 + secs(121)), Permit::Wait(None));
        // A failed probe re-opens for a full cooldown.
        assert!(b.record(false, t0 + secs(121)));
        assert_eq!(b.permit(t0 + secs(200)), Permit::Wait(Some(t0 + secs(241))));
        assert_eq!(b.permit(t0 + secs(241)), Permit::Probe);
        b.probe_sent();
        assert!(b.record(true, t0 + secs(242)));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.permit(t0 + secs(242)), Permit::Open);
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, secs(60));
        b.record(false, t0);
        b.record(false, t0);
        b.record(true, t0);
        b.record(false, t0);
        b.record(false, t0);
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(false, t0);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn an_unused_probe_lets_the_next_one_go() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, secs(1));
        b.record(false, t0);
        assert_eq!(b.permit(t0 + secs(1)), Permit::Probe);
        b.probe_sent();
        b.probe_unused();
        assert_eq!(b.permit(t0 + secs(1)), Permit::Probe);
    }
}
