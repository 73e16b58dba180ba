//! The one backoff for every retry loop that waits on a database or the network to come back
//! (ingest reconnects, the first outbox connection, delivery pumps).
//!
//! Guarantees: delays double from `initial` up to `max` and never beyond; each is jittered by
//! up to ±20 % so instances that lost the same server do not reconnect in lockstep; a wait ends
//! at once when its cancellation token fires; [`Backoff::reset`] after a success starts over.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// The delay before the next try (jittered), doubling the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let factor = rand::thread_rng().gen_range(0.8..=1.2);
        base.mul_f64(factor).min(self.max)
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Sleeps `delay`; false when `cancel` fired first (the caller should stop).
pub async fn sleep_or_cancel(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut bases = Vec::new();
        for _ in 0..6 {
            let d = b.next_delay();
            bases.push(d);
        }
        let within = |d: Duration, base: u64| {
            d >= Duration::from_millis(base * 8 / 10) && d <= Duration::from_millis(base * 12 / 10)
        };
        assert!(within(bases[0], 100), "{bases:?}");
        assert!(within(bases[1], 200), "{bases:?}");
        assert!(within(bases[2], 400), "{bases:?}");
        assert!(within(bases[3], 800), "{bases:?}");
        assert!(bases[4] <= Duration::from_secs(1) && bases[4] >= Duration::from_millis(800));
        assert!(bases[5] <= Duration::from_secs(1));
        b.reset();
        assert!(within(b.next_delay(), 100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_when_cancelled() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(!sleep_or_cancel(Duration::from_secs(60), &cancel).await);
        let live = CancellationToken::new();
        assert!(sleep_or_cancel(Duration::from_millis(5), &live).await);
    }
}
