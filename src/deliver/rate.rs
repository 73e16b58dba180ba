//! The per-subscription rate limit (`rate_limit = "50/s"`): a token bucket (GCRA, from the
//! `governor` crate) holding a quarter of a second's worth of requests (at least one): requests
//! are spaced evenly, a pump that woke late catches up within that small credit instead of
//! losing the time for good, and over any window of T seconds at most rate × T + that credit go
//! out.
//!
//! Guarantees:
//! - [`Gate::try_acquire`] never blocks: it takes a token or says how long to wait, so a pump
//!   keeps recording results while it waits, and a wait consumes no attempt (nothing is sent,
//!   the deliveries stay pending in the outbox);
//! - a changed limit takes effect at the next request (a new bucket); removing it lifts it;
//! - the time a request waited is reported once, when it is let through, for the metrics.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::model::RateLimit;

/// The limiter of one subscription, following its current `rate_limit`.
#[derive(Default)]
pub struct Gate {
    bucket: Option<(RateLimit, DefaultDirectRateLimiter)>,
    /// When the request now waiting was first held back.
    waiting_since: Option<Instant>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("limit", &self.bucket.as_ref().map(|(l, _)| l))
            .field("waiting_since", &self.waiting_since)
            .finish()
    }
}

/// What [`Gate::try_acquire`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// Send now; `waited` is how long this request was held back, if it was.
    Go { waited: Option<Duration> },
    /// Look again after this long.
    Wait(Duration),
}

/// A quarter of a second's worth of requests, at least one: enough to absorb a pump's late
/// wake-up on a loaded machine, small enough that no receiver sees a real burst.
fn burst(limit: RateLimit) -> NonZeroU32 {
    let quarter = (limit.per_second() / 4.0).floor() as u32;
    NonZeroU32::new(quarter).unwrap_or(NonZeroU32::MIN)
}

fn bucket(limit: RateLimit) -> DefaultDirectRateLimiter {
    let quota = Quota::with_period(limit.period())
        .expect("a rate limit's period is positive")
        .allow_burst(burst(limit));
    RateLimiter::direct(quota)
}

impl Gate {
    /// Takes a token for one request under `limit` (None: no limit).
    pub fn try_acquire(&mut self, limit: Option<RateLimit>, now: Instant) -> Acquire {
        let Some(limit) = limit else {
            self.bucket = None;
            return self.go(now);
        };
        if self.bucket.as_ref().map(|(l, _)| *l) != Some(limit) {
            self.bucket = Some((limit, bucket(limit)));
        }
        let (_, limiter) = self.bucket.as_ref().expect("set above");
        match limiter.check() {
            Ok(()) => self.go(now),
            Err(not_until) => {
                self.waiting_since.get_or_insert(now);
                // A zero wait would spin; the clock's resolution makes it possible.
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Acquire::Wait(wait.max(Duration::from_micros(100)))
            }
        }
    }

    /// Waits for a token (for callers that may block).
    pub async fn acquire(&mut self, limit: Option<RateLimit>) -> Option<Duration> {
        loop {
            match self.try_acquire(limit, Instant::now()) {
                Acquire::Go { waited } => return waited,
                Acquire::Wait(d) => tokio::time::sleep(d).await,
            }
        }
    }

    fn go(&mut self, now: Instant) -> Acquire {
        Acquire::Go {
            waited: self
                .waiting_since
                .take()
                .map(|t| now.saturating_duration_since(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Option<RateLimit> {
        Some(RateLimit::parse(s).unwrap())
    }

    #[test]
    fn no_limit_always_goes() {
        let mut g = Gate::default();
        for _ in 0..1000 {
            assert_eq!(
                g.try_acquire(None, Instant::now()),
                Acquire::Go { waited: None }
            );
        }
    }

    #[test]
    fn spacing_and_reported_wait() {
        let mut g = Gate::default();
        let t0 = Instant::now();
        assert_eq!(g.try_acquire(rate("4/s"), t0), Acquire::Go { waited: None });
        let Acquire::Wait(d) = g.try_acquire(rate("4/s"), t0) else {
            panic!("a second request at once must wait");
        };
        assert!(
            d > Duration::from_millis(200) && d <= Duration::from_millis(250),
            "{d:?}"
        );
        // Asking again while waiting does not restart the wait.
        assert!(matches!(g.try_acquire(rate("4/s"), t0), Acquire::Wait(_)));
        std::thread::sleep(d);
        let later = t0 + Duration::from_millis(250);
        match g.try_acquire(rate("4/s"), later) {
            Acquire::Go { waited } => assert_eq!(waited, Some(Duration::from_millis(250))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn changing_the_limit_takes_effect() {
        let mut g = Gate::default();
        let now = Instant::now();
        assert!(matches!(
            g.try_acquire(rate("1/h"), now),
            Acquire::Go { .. }
        ));
        let Acquire::Wait(d) = g.try_acquire(rate("1/h"), now) else {
            panic!()
        };
        assert!(d > Duration::from_secs(3500), "{d:?}");
        // Raised: a fresh bucket.
        assert!(matches!(
            g.try_acquire(rate("1000/s"), now),
            Acquire::Go { .. }
        ));
        // Removed: no limit.
        assert!(matches!(g.try_acquire(None, now), Acquire::Go { .. }));
    }

    #[test]
    fn the_credit_is_a_quarter_of_a_second() {
        assert_eq!(burst(rate("20/s").unwrap()).get(), 5);
        assert_eq!(burst(rate("1000/s").unwrap()).get(), 250);
        assert_eq!(burst(rate("7/s").unwrap()).get(), 1);
        assert_eq!(burst(rate("200/m").unwrap()).get(), 1);
        // A full bucket: 5 at once at 20/s, then the sixth waits.
        let mut g = Gate::default();
        let now = Instant::now();
        for _ in 0..5 {
            assert!(matches!(
                g.try_acquire(rate("20/s"), now),
                Acquire::Go { .. }
            ));
        }
        assert!(matches!(g.try_acquire(rate("20/s"), now), Acquire::Wait(_)));
    }

    #[tokio::test]
    async fn acquire_holds_the_rate() {
        let mut g = Gate::default();
        let start = Instant::now();
        for _ in 0..45 {
            g.acquire(rate("100/s")).await;
        }
        // 45 requests at 100/s with a credit of 25: 25 at once, then 20 spaced 10 ms.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(195) && took < Duration::from_millis(400),
            "{took:?}"
        );
    }
}
