//! Process metrics, rendered in the Prometheus text format by the API's `/metrics`.
//!
//! One [`Metrics`] value is created by `walhook run` and handed (as `Arc`) to ingest, delivery
//! and the API; there is no global registry. Counters only go up; gauges that the database knows
//! better (outbox pending, slot lag) are filled in by the scraper at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the commit → delivered latency histogram.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Delivered,
    /// Failed, will be retried.
    Retrying,
    Dead,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retrying => "retrying",
            Outcome::Dead => "dead",
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    pub changes_decoded: AtomicU64,
    pub deliveries_enqueued: AtomicU64,
    pub attempts: AtomicU64,
    per_sub: Mutex<BTreeMap<String, SubMetrics>>,
    latency: Histogram,
}

#[derive(Default, Clone)]
struct SubMetrics {
    outcomes: BTreeMap<Outcome, u64>,
    breaker: Option<BreakerState>,
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Figures read from the database at scrape time.
#[derive(Debug, Default, Clone)]
pub struct DbGauges {
    /// Unfinished deliveries (pending or failed) per subscription.
    pub pending: Vec<(String, i64)>,
    /// Dead letters per subscription.
    pub dead: Vec<(String, i64)>,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn` of the slot, when known.
    pub slot_lag_bytes: Option<i64>,
    /// Whether the replication stream is up.
    pub streaming: bool,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    pub fn add_changes(&self, n: u64) {
        self.changes_decoded.fetch_add(n, Relaxed);
    }

    pub fn add_enqueued(&self, n: u64) {
        self.deliveries_enqueued.fetch_add(n, Relaxed);
    }

    pub fn attempt(&self, subscription: &str, outcome: Outcome) {
        self.attempts.fetch_add(1, Relaxed);
        let mut m = self.per_sub.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(subscription.to_string())
            .or_default()
            .outcomes
            .entry(outcome)
            .or_default() += 1;
    }

    pub fn breaker(&self, subscription: &str, state: BreakerState) {
        let mut m = self.per_sub.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(subscription.to_string()).or_default().breaker = Some(state);
    }

    /// Time from the source commit to the receiver's 2xx.
    pub fn delivered_latency(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.latency.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency.count.fetch_add(1, Relaxed);
        self.latency
            .sum_micros
            .fetch_add(latency.as_micros() as u64, Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, db: &DbGauges) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "walhook_changes_decoded_total",
            "Row changes decoded from the replication slot.",
            self.changes_decoded.load(Relaxed),
        );
        counter(
            "walhook_deliveries_enqueued_total",
            "Deliveries written to the outbox.",
            self.deliveries_enqueued.load(Relaxed),
        );
        counter(
            "walhook_delivery_attempts_total",
            "HTTP delivery attempts made.",
            self.attempts.load(Relaxed),
        );
        let subs = self
            .per_sub
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let _ = writeln!(
            out,
            "# HELP walhook_deliveries_total Delivery attempts by subscription and outcome.\n\
             # TYPE walhook_deliveries_total counter"
        );
        for (sub, m) in &subs {
            for (outcome, n) in &m.outcomes {
                let _ = writeln!(
                    out,
                    "walhook_deliveries_total{{subscription=\"{}\",outcome=\"{}\"}} {n}",
                    escape(sub),
                    outcome.as_str()
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP walhook_breaker_state Circuit breaker per subscription (0 closed, 1 open, 2 half-open).\n\
             # TYPE walhook_breaker_state gauge"
        );
        for (sub, m) in &subs {
            if let Some(state) = m.breaker {
                let _ = writeln!(
                    out,
                    "walhook_breaker_state{{subscription=\"{}\"}} {}",
                    escape(sub),
                    state as u8
                );
            }
        }
        for (name, help, rows) in [
            (
                "walhook_outbox_pending",
                "Unfinished deliveries in the outbox.",
                &db.pending,
            ),
            (
                "walhook_dead_letters",
                "Dead-lettered deliveries in the outbox.",
                &db.dead,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (sub, n) in rows {
                let _ = writeln!(out, "{name}{{subscription=\"{}\"}} {n}", escape(sub));
            }
        }
        let _ = writeln!(
            out,
            "# HELP walhook_slot_lag_bytes WAL retained by the replication slot.\n\
             # TYPE walhook_slot_lag_bytes gauge"
        );
        if let Some(lag) = db.slot_lag_bytes {
            let _ = writeln!(out, "walhook_slot_lag_bytes {lag}");
        }
        let _ = writeln!(
            out,
            "# HELP walhook_source_streaming Whether the replication stream is up.\n\
             # TYPE walhook_source_streaming gauge\nwalhook_source_streaming {}",
            u8::from(db.streaming)
        );
        let name = "walhook_delivery_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from source commit to the receiver's 2xx.\n# TYPE {name} histogram"
        );
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                self.latency.buckets[i].load(Relaxed)
            );
        }
        let count = self.latency.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.latency.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_labels_and_histogram() {
        let m = Metrics::new();
        m.add_changes(3);
        m.attempt("orders \"a\"", Outcome::Delivered);
        m.attempt("orders \"a\"", Outcome::Delivered);
        m.breaker("orders \"a\"", BreakerState::Open);
        m.delivered_latency(Duration::from_millis(3));
        let text = m.render(&DbGauges {
            pending: vec![("orders \"a\"".into(), 7)],
            slot_lag_bytes: Some(1024),
            streaming: true,
            ..DbGauges::default()
        });
        assert!(text.contains("walhook_changes_decoded_total 3\n"));
        assert!(text.contains(
            "walhook_deliveries_total{subscription=\"orders \\\"a\\\"\",outcome=\"delivered\"} 2\n"
        ));
        assert!(text.contains("walhook_breaker_state{subscription=\"orders \\\"a\\\"\"} 1\n"));
        assert!(text.contains("walhook_outbox_pending{subscription=\"orders \\\"a\\\"\"} 7\n"));
        assert!(text.contains("walhook_delivery_latency_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("walhook_delivery_latency_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("walhook_delivery_latency_seconds_count 1\n"));
        assert!(text.contains("walhook_slot_lag_bytes 1024\n"));
    }
}
