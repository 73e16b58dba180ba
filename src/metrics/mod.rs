//! Process metrics for the API's `/metrics`, kept in a `prometheus-client` registry.
//!
//! Guarantees:
//! - one [`Metrics`] value is created by `walhook run` and handed (as `Arc`) to ingest, delivery
//!   and the API; it owns its [`Registry`], there is no global one;
//! - every name says what it counts: `walhook_delivery_attempts_total` counts HTTP attempts by
//!   result, `walhook_deliveries_total` counts deliveries that finished (delivered or dead), once
//!   per time they finish (a replayed delivery that succeeds counts again);
//! - per-subscription series disappear with their subscription ([`Metrics::forget_subscription`]);
//! - figures the databases know better (outbox pending and dead letters per subscription, the
//!   slot's lag and retained WAL) and whether the stream is up are not stored here: the scraper
//!   reads them and a collector reports exactly that reading ([`DbGauges`]), so every scrape shows
//!   fresh numbers and leaves out what could not be read;
//! - the exposition is Prometheus text 0.0.4 by default, OpenMetrics when the scraper asks
//!   ([`Format`]); every sample comes after its family's `# HELP` and `# TYPE` (a labelled family
//!   with no series yet, e.g. attempts before the first attempt, is left out entirely).
//!
//! This module imports nothing from the rest of walhook: callers pass plain labels and numbers.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds (seconds) of the commit → delivered latency histogram.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// Upper bounds of the events-per-batched-request histogram.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

fn batch_histogram() -> Histogram {
    Histogram::new(BATCH_BUCKETS)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// What the API shows of a subscription's breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerDetail {
    pub state: BreakerState,
    /// Why it is not closed: the failure that opened it, or what made it probe.
    pub reason: Option<String>,
    /// When an open breaker lets the next request (the probe) through.
    pub next_attempt: Option<std::time::SystemTime>,
}

/// How one HTTP attempt ended: `result` of `walhook_delivery_attempts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Attempt {
    /// A 2xx answer.
    Success,
    /// Anything else: an error status, a timeout, a refused or broken connection.
    Failure,
}

/// How a delivery finished: `outcome` of `walhook_deliveries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Delivered,
    /// Dead-lettered: out of attempts, or the receiver answered 410 Gone.
    Dead,
}

impl Attempt {
    const ALL: [Attempt; 2] = [Attempt::Success, Attempt::Failure];

    pub fn as_str(self) -> &'static str {
        match self {
            Attempt::Success => "success",
            Attempt::Failure => "failure",
        }
    }
}

impl Outcome {
    const ALL: [Outcome; 2] = [Outcome::Delivered, Outcome::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Dead => "dead",
        }
    }
}

// By hand rather than derived: the derive writes the variant name as is ("Success").
impl EncodeLabelValue for Attempt {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    slot: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotStateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackfillLabels {
    backfill: String,
    subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    subscription: String,
    result: Attempt,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    subscription: String,
    outcome: Outcome,
}

/// Figures read from the databases at scrape time; `None` or empty when they could not be read.
#[derive(Debug, Default, Clone)]
pub struct DbGauges {
    /// Unfinished deliveries (pending or failed) per subscription.
    pub pending: Vec<(String, i64)>,
    /// Dead letters per subscription.
    pub dead: Vec<(String, i64)>,
    /// Seconds since each subscription's oldest unfinished delivery was enqueued (0: none).
    pub oldest_pending_seconds: Vec<(String, f64)>,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn` of the slot: WAL not yet confirmed.
    pub slot_lag_bytes: Option<i64>,
    /// `pg_current_wal_lsn() - restart_lsn` of the slot: WAL the server keeps for it.
    pub slot_retained_bytes: Option<i64>,
    /// Whether the replication stream is up.
    pub streaming: bool,
}

/// The exposition format of a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4, read by every scraper.
    Prometheus,
    /// OpenMetrics 1.0 text (adds `# UNIT` and `# EOF`), for scrapers that ask for it.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header offers it, like the Go client's handler.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    changes_decoded: Counter,
    deliveries_enqueued: Counter,
    ingest_paced_seconds: Counter<f64, AtomicU64>,
    /// Reads of due deliveries from the outbox by the pumps (rows taken from memory are not).
    outbox_claims: Counter,
    attempts: Family<AttemptLabels, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
    breaker: Family<SubscriptionLabels, Gauge>,
    /// 1 for each subscription left out of routing (its table or columns are gone).
    left_out: Family<SubscriptionLabels, Gauge>,
    /// Why each of those is left out.
    left_out_reasons: Mutex<Vec<(String, String)>>,
    rate_waits: Family<SubscriptionLabels, Counter>,
    rate_wait_seconds: Family<SubscriptionLabels, Counter<f64, AtomicU64>>,
    batch_size: Family<SubscriptionLabels, Histogram, fn() -> Histogram>,
    latency: Histogram,
    backfill_done: Family<BackfillLabels, Gauge>,
    backfill_estimated: Family<BackfillLabels, Gauge>,
    /// Each running backfill's labels, to remove its series when it ends.
    backfills: Mutex<HashMap<i64, BackfillLabels>>,
    /// 1 for the slot's current health (`ok`, `lost`, `missing`, `moved`, …), 0 for the others.
    slot_state: Family<SlotStateLabels, Gauge>,
    /// The slot's retained WAL as a fraction of `max_slot_wal_keep_size`; no series until known.
    slot_retained_fraction: Family<SlotLabels, Gauge<f64, AtomicU64>>,
    db: Arc<DbCollector>,
    /// Deliveries finished (any outcome), for the console's rate chart.
    finished_total: AtomicU64,
    /// The last breaker state reported per subscription, for the console's overview.
    breakers: Mutex<HashMap<String, BreakerDetail>>,
    /// One render at a time: the collector reports the reading of the render that holds this.
    rendering: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("walhook");
        let changes_decoded = Counter::default();
        registry.register(
            "changes_decoded",
            "Row changes decoded from the replication slot",
            changes_decoded.clone(),
        );
        let deliveries_enqueued = Counter::default();
        registry.register(
            "deliveries_enqueued",
            "Deliveries written to the outbox",
            deliveries_enqueued.clone(),
        );
        let ingest_paced_seconds = Counter::<f64, AtomicU64>::default();
        registry.register(
            "ingest_paced_seconds",
            "Seconds ingest waited for room in the handoff of a delivery pump that keeps up",
            ingest_paced_seconds.clone(),
        );
        let outbox_claims = Counter::default();
        registry.register(
            "outbox_claims",
            "Reads of due deliveries from the outbox by delivery pumps (not those handed over in memory)",
            outbox_claims.clone(),
        );
        let attempts = Family::default();
        registry.register(
            "delivery_attempts",
            "HTTP delivery attempts by subscription and result (success: a 2xx answer)",
            attempts.clone(),
        );
        let deliveries = Family::default();
        registry.register(
            "deliveries",
            "Deliveries finished, by subscription and outcome (delivered or dead-lettered)",
            deliveries.clone(),
        );
        let breaker = Family::default();
        registry.register(
            "breaker_state",
            "Circuit breaker per subscription (0 closed, 1 open, 2 half-open)",
            breaker.clone(),
        );
        let left_out = Family::default();
        registry.register(
            "subscription_left_out",
            "1 for a subscription left out of routing until it is fixed or deleted (its table or a column it names is gone)",
            left_out.clone(),
        );
        let rate_waits = Family::default();
        registry.register(
            "rate_limit_waits",
            "Requests held back by the subscription's rate_limit before they were sent",
            rate_waits.clone(),
        );
        let rate_wait_seconds = Family::default();
        registry.register_with_unit(
            "rate_limit_wait",
            "Time requests spent held back by the subscription's rate_limit",
            Unit::Seconds,
            rate_wait_seconds.clone(),
        );
        let batch_size: Family<_, _, fn() -> Histogram> =
            Family::new_with_constructor(batch_histogram);
        registry.register(
            "delivery_batch_size",
            "Events per request of subscriptions that batch (option batch), by subscription",
            batch_size.clone(),
        );
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "delivery_latency",
            "Time from source commit to the receiver's 2xx",
            Unit::Seconds,
            latency.clone(),
        );
        let backfill_done = Family::default();
        registry.register(
            "backfill_rows_done",
            "Rows a running backfill has read and stored so far",
            backfill_done.clone(),
        );
        let backfill_estimated = Family::default();
        registry.register(
            "backfill_rows_estimated",
            "The planner's estimate of the rows a running backfill reads",
            backfill_estimated.clone(),
        );
        let slot_state = Family::default();
        registry.register(
            "slot_state",
            "1 for the replication slot's current state (ok; lost, missing or moved: changes after the checkpoint are missing and `walhook slot recover` is needed), 0 for the others",
            slot_state.clone(),
        );
        let slot_retained_fraction = Family::<SlotLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "slot_wal_retained_fraction",
            "The slot's retained WAL as a fraction of max_slot_wal_keep_size (absent when there is no cap)",
            slot_retained_fraction.clone(),
        );
        let db = Arc::new(DbCollector::default());
        registry.register_collector(Box::new(db.clone()));
        Metrics {
            registry,
            changes_decoded,
            deliveries_enqueued,
            ingest_paced_seconds,
            outbox_claims,
            attempts,
            deliveries,
            breaker,
            left_out,
            left_out_reasons: Mutex::new(Vec::new()),
            rate_waits,
            rate_wait_seconds,
            batch_size,
            latency,
            backfill_done,
            backfill_estimated,
            backfills: Mutex::new(HashMap::new()),
            slot_state,
            slot_retained_fraction,
            db,
            finished_total: AtomicU64::new(0),
            breakers: Mutex::new(HashMap::new()),
            rendering: Mutex::new(()),
        }
    }

    pub fn add_changes(&self, n: u64) {
        self.changes_decoded.inc_by(n);
    }

    pub fn add_enqueued(&self, n: u64) {
        self.deliveries_enqueued.inc_by(n);
    }

    /// Ingest waited this long for a pump to take handed-over rows.
    pub fn ingest_paced(&self, waited: std::time::Duration) {
        if !waited.is_zero() {
            self.ingest_paced_seconds.inc_by(waited.as_secs_f64());
        }
    }

    /// One HTTP attempt ended.
    pub fn attempt(&self, subscription: &str, result: Attempt) {
        self.attempts
            .get_or_create(&AttemptLabels {
                subscription: subscription.to_string(),
                result,
            })
            .inc();
    }

    /// A delivery finished (its status became `delivered` or `dead`).
    pub fn finished(&self, subscription: &str, outcome: Outcome) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                subscription: subscription.to_string(),
                outcome,
            })
            .inc();
        self.finished_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn breaker(&self, subscription: &str, state: BreakerState) {
        self.breaker_with(subscription, state, None, None);
    }

    /// A subscription's breaker: its state, why it left `closed` (the failure that opened it),
    /// and when it lets the next request through.
    pub fn breaker_with(
        &self,
        subscription: &str,
        state: BreakerState,
        reason: Option<String>,
        next_attempt: Option<std::time::SystemTime>,
    ) {
        let reason = if state == BreakerState::Closed {
            None
        } else {
            reason
        };
        self.breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                subscription.to_string(),
                BreakerDetail {
                    state,
                    reason,
                    next_attempt,
                },
            );
        self.breaker
            .get_or_create(&SubscriptionLabels {
                subscription: subscription.to_string(),
            })
            .set(state as i64);
    }

    /// The subscriptions routing leaves out, with why (replaces the previous reading).
    pub fn set_left_out(&self, subs: Vec<(String, String)>) {
        let mut reasons = self
            .left_out_reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (id, _) in reasons.iter() {
            self.left_out.remove(&SubscriptionLabels {
                subscription: id.clone(),
            });
        }
        for (id, _) in &subs {
            self.left_out
                .get_or_create(&SubscriptionLabels {
                    subscription: id.clone(),
                })
                .set(1);
        }
        *reasons = subs;
    }

    /// The subscriptions routing leaves out, with why.
    pub fn left_out(&self) -> Vec<(String, String)> {
        self.left_out_reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A request was held back by the subscription's rate limit for `waited`.
    pub fn rate_limited(&self, subscription: &str, waited: Duration) {
        let labels = SubscriptionLabels {
            subscription: subscription.to_string(),
        };
        self.rate_waits.get_or_create(&labels).inc();
        self.rate_wait_seconds
            .get_or_create(&labels)
            .inc_by(waited.as_secs_f64());
    }

    /// A batched request of `events` events was sent.
    pub fn batch_sent(&self, subscription: &str, events: usize) {
        self.batch_size
            .get_or_create(&SubscriptionLabels {
                subscription: subscription.to_string(),
            })
            .observe(events as f64);
    }

    /// Time from the source commit to the receiver's 2xx.
    pub fn delivered_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }

    /// A running backfill's progress.
    pub fn backfill_progress(
        &self,
        id: i64,
        subscription: &str,
        done: i64,
        estimated: Option<i64>,
    ) {
        let labels = BackfillLabels {
            backfill: format!("bf_{id}"),
            subscription: subscription.to_string(),
        };
        self.backfill_done.get_or_create(&labels).set(done);
        if let Some(e) = estimated {
            self.backfill_estimated.get_or_create(&labels).set(e);
        }
        self.backfills
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, labels);
    }

    /// The slot's state: `current` is 1, every other of `all` 0.
    pub fn set_slot_state<const N: usize>(&self, current: &str, all: [&str; N]) {
        for s in all {
            self.slot_state
                .get_or_create(&SlotStateLabels {
                    state: s.to_string(),
                })
                .set(i64::from(s == current));
        }
    }

    pub fn set_slot_retained_fraction(&self, slot: &str, fraction: f64) {
        self.slot_retained_fraction
            .get_or_create(&SlotLabels {
                slot: slot.to_string(),
            })
            .set(fraction);
    }

    /// Removes a backfill's series once it stopped running in this process.
    pub fn forget_backfill(&self, id: i64) {
        let labels = self
            .backfills
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(l) = labels {
            self.backfill_done.remove(&l);
            self.backfill_estimated.remove(&l);
        }
    }

    /// Removes every series of a subscription that no longer exists, so that dashboards do not
    /// show it forever and a re-created subscription of the same id starts from zero.
    pub fn forget_subscription(&self, subscription: &str) {
        let subscription = subscription.to_string();
        for result in Attempt::ALL {
            self.attempts.remove(&AttemptLabels {
                subscription: subscription.clone(),
                result,
            });
        }
        for outcome in Outcome::ALL {
            self.deliveries.remove(&DeliveryLabels {
                subscription: subscription.clone(),
                outcome,
            });
        }
        self.breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&subscription);
        let labels = SubscriptionLabels { subscription };
        self.rate_waits.remove(&labels);
        self.rate_wait_seconds.remove(&labels);
        self.batch_size.remove(&labels);
        self.breaker.remove(&labels);
    }

    /// Row changes decoded since start.
    pub fn changes_total(&self) -> u64 {
        self.changes_decoded.get()
    }

    /// Deliveries written to the outbox since start.
    pub fn outbox_claim(&self) {
        self.outbox_claims.inc();
    }

    pub fn outbox_claims_total(&self) -> u64 {
        self.outbox_claims.get()
    }

    pub fn enqueued_total(&self) -> u64 {
        self.deliveries_enqueued.get()
    }

    /// Deliveries finished (delivered or dead) since start.
    pub fn finished_total(&self) -> u64 {
        self.finished_total.load(Ordering::Relaxed)
    }

    /// The breaker state last reported for `subscription`; None before its first report.
    pub fn breaker_state(&self, subscription: &str) -> Option<BreakerState> {
        self.breaker_detail(subscription).map(|d| d.state)
    }

    /// The last breaker report of `subscription`'s pump in this process.
    pub fn breaker_detail(&self, subscription: &str) -> Option<BreakerDetail> {
        self.breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(subscription)
            .cloned()
    }

    /// The Prometheus text exposition, with `db` as the database figures.
    pub fn render(&self, db: &DbGauges) -> String {
        self.render_as(db, Format::Prometheus)
    }

    pub fn render_as(&self, db: &DbGauges, format: Format) -> String {
        let _one = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        *self.db.reading.lock().unwrap_or_else(|e| e.into_inner()) = db.clone();
        let mut out = String::new();
        let written = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
        };
        // Writing to a String does not fail; an error would come from an encoder bug.
        if let Err(e) = written {
            tracing::error!(error = %e, "metrics: encoding failed; the scrape is incomplete");
        }
        out
    }
}

/// Reports the database figures of the scrape in progress.
#[derive(Debug, Default)]
struct DbCollector {
    reading: Mutex<DbGauges>,
}

impl Collector for DbCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let db = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        for (name, help, rows) in [
            (
                "outbox_pending",
                "Unfinished deliveries (pending or failed) in the outbox.",
                &db.pending,
            ),
            (
                "dead_letters",
                "Dead-lettered deliveries in the outbox.",
                &db.dead,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (sub, n) in rows {
                family
                    .encode_family(&[("subscription", sub.as_str())])?
                    .encode_gauge(n)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "outbox_oldest_pending",
            "Age of the oldest unfinished delivery (pending or failed), since it was enqueued; 0 when there is none.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (sub, age) in &db.oldest_pending_seconds {
            family
                .encode_family(&[("subscription", sub.as_str())])?
                .encode_gauge(age)?;
        }
        for (name, help, value) in [
            (
                "slot_lag",
                "WAL written since the replication slot's confirmed position (confirmed_flush_lsn).",
                db.slot_lag_bytes,
            ),
            (
                "slot_retained",
                "WAL the server keeps for the replication slot (since its restart_lsn).",
                db.slot_retained_bytes,
            ),
        ] {
            // The family is described even when the figure is unknown (no slot yet, a standby).
            let mut gauge =
                encoder.encode_descriptor(name, help, Some(&Unit::Bytes), MetricType::Gauge)?;
            if let Some(v) = value {
                gauge.encode_gauge(&v)?;
            }
        }
        encoder
            .encode_descriptor(
                "source_streaming",
                "Whether the replication stream is up (1) or not (0).",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&i64::from(db.streaming))
    }
}

#[cfg(test)]
mod tests;
