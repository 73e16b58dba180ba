//! The overview page: is the slot streaming, how far behind is it, how fast do changes come in
//! and deliveries go out, what is pending or dead, and the health of each subscription; with
//! charts of the last hour drawn as inline SVG from an in-memory ring buffer.
//!
//! Guarantees: the ring buffer holds at most [`CAPACITY`] samples (one hour at one sample every
//! [`PERIOD`]); a sample whose database reading fails keeps the counters and leaves the lag
//! unknown rather than inventing a value; the per-subscription table shows at most [`TOP`] rows
//! (the ones needing attention first), so the page stays small with thousands of subscriptions.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};
use tokio_util::sync::CancellationToken;

use super::page::{self, enc, when};
use super::session::Session;
use super::C;
use crate::api::ApiError;
use crate::metrics::BreakerState;
use crate::outbox::{console as q, gauges};

pub const PERIOD: Duration = Duration::from_secs(5);
pub const CAPACITY: usize = 720;
/// Rows of the per-subscription table.
pub const TOP: usize = 50;
/// Longest wait for a database reading on this page or in a sample.
const DB_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: chrono::DateTime<chrono::Utc>,
    pub changes: u64,
    pub finished: u64,
    pub lag_bytes: Option<i64>,
}

#[derive(Default)]
pub struct Samples(Mutex<VecDeque<Sample>>);

impl Samples {
    pub fn push(&self, s: Sample) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == CAPACITY {
            q.pop_front();
        }
        q.push_back(s);
    }

    pub fn all(&self) -> Vec<Sample> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

/// Per second between consecutive samples: (changes/s, deliveries/s).
fn rates(s: &[Sample]) -> Vec<(f64, f64)> {
    s.windows(2)
        .map(|w| {
            let dt = (w[1].at - w[0].at).num_milliseconds().max(1) as f64 / 1000.0;
            (
                w[1].changes.saturating_sub(w[0].changes) as f64 / dt,
                w[1].finished.saturating_sub(w[0].finished) as f64 / dt,
            )
        })
        .collect()
}

pub async fn sample_loop(c: C, cancel: CancellationToken) {
    loop {
        let lag = tokio::time::timeout(DB_WAIT, slot_lag(&c))
            .await
            .ok()
            .flatten();
        let m = &c.ctx.state.metrics;
        c.samples.push(Sample {
            at: chrono::Utc::now(),
            changes: m.changes_total(),
            finished: m.finished_total(),
            lag_bytes: lag,
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

async fn slot_lag(c: &C) -> Option<i64> {
    let client = c.ctx.source().await.ok()?;
    match crate::pg::catalog::slot_bytes(&client, &c.ctx.state.slot).await {
        Ok(s) => s.and_then(|s| s.lag),
        Err(_) => {
            c.ctx.reset_source().await;
            None
        }
    }
}

async fn lag_seconds(c: &C) -> Option<f64> {
    let client = c.ctx.source().await.ok()?;
    crate::pg::catalog::slot_lag_seconds(&client, &c.ctx.state.slot)
        .await
        .ok()
        .flatten()
}

/// A polyline chart of `series` (each a CSS class and values) over the ring buffer's span.
fn chart(label: &str, unit: &str, series: &[(&str, &str, Vec<f64>)]) -> Markup {
    const W: f64 = 600.0;
    const H: f64 = 120.0;
    let max = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let points = |v: &[f64]| -> String {
        let n = v.len().max(2) - 1;
        v.iter()
            .enumerate()
            .map(|(i, y)| {
                format!(
                    "{:.1},{:.1}",
                    i as f64 * W / n as f64,
                    H - (y / top * (H - 4.0)) - 2.0
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    html! {
        figure.chart {
            figcaption { (label) " — last hour, max " (format!("{max:.1}")) " " (unit) }
            svg viewBox="0 0 600 120" role="img" aria-label=(format!("{label}, last hour")) preserveAspectRatio="none" {
                line.axis x1="0" y1="118" x2="600" y2="118" {}
                @for (class, _, values) in series {
                    @if values.len() >= 2 {
                        polyline class=(class) points=(points(values)) {}
                    }
                }
            }
            p.legend {
                @for (class, name, _) in series { span class=(format!("key {class}")) { (name) } " " }
            }
        }
    }
}

fn breaker(state: Option<BreakerState>) -> Markup {
    match state {
        Some(BreakerState::Open) => html! { span.badge.bad { "open" } },
        Some(BreakerState::HalfOpen) => html! { span.badge.warn { "half-open" } },
        Some(BreakerState::Closed) => html! { span.badge.ok { "closed" } },
        // No attempt by this instance yet: breakers start closed.
        None => html! { span.muted title="no attempt yet" { "closed" } },
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0} ms"))
        .unwrap_or_else(|| "—".into())
}

pub async fn page(State(c): State<C>, Extension(s): Extension<Session>) -> Response {
    match render(&c, &s).await {
        Ok(m) => page::layout("Overview", Some(&s), m),
        Err(e) => page::error_page(&s, e),
    }
}

async fn render(c: &C, s: &Session) -> Result<Markup, ApiError> {
    let _ = s;
    let client = c.ctx.outbox().await?;
    let schema = &c.ctx.state.schema;
    let (counts, health, lag_s) = tokio::join!(
        gauges::queue_counts(&client, schema),
        q::health(&client, schema),
        tokio::time::timeout(DB_WAIT, lag_seconds(c)),
    );
    let counts = counts?;
    let health: HashMap<String, q::Health> = health?
        .into_iter()
        .map(|h| (h.subscription.clone(), h))
        .collect();
    let samples = c.samples.all();
    let lag_bytes = tokio::time::timeout(DB_WAIT, slot_lag(c))
        .await
        .ok()
        .flatten();
    let lag_s = lag_s.ok().flatten();
    let streaming = c.ctx.state.streaming.load(Ordering::Relaxed);
    let r = rates(&samples);
    // The last minute's average, from the samples of the last minute.
    let recent = &r[r.len().saturating_sub(12)..];
    let avg = |f: fn(&(f64, f64)) -> f64| {
        if recent.is_empty() {
            0.0
        } else {
            recent.iter().map(f).sum::<f64>() / recent.len() as f64
        }
    };
    let pending: i64 = counts.iter().map(|q| q.pending).sum();
    let dead: i64 = counts.iter().map(|q| q.dead).sum();
    let m = &c.ctx.state.metrics;
    let mut rows: Vec<_> = counts
        .iter()
        .map(|q| {
            (
                q,
                m.breaker_state(&q.subscription),
                health.get(&q.subscription),
            )
        })
        .collect();
    // Attention first: open breakers, then dead letters, pending, recent errors.
    rows.sort_by_key(|(q, b, h)| {
        (
            std::cmp::Reverse(matches!(
                b,
                Some(BreakerState::Open | BreakerState::HalfOpen)
            )),
            std::cmp::Reverse(q.dead),
            std::cmp::Reverse(q.pending),
            std::cmp::Reverse(h.and_then(|h| h.last_error.as_ref().map(|e| e.0))),
            q.subscription.clone(),
        )
    });
    let total = rows.len();
    rows.truncate(TOP);
    let slot = c.ctx.state.slot_control.report();
    Ok(html! {
        h1 { "Overview" }
        @if slot.health.is_broken() {
            // Changes after the checkpoint are missing: said first, with what to do.
            p.error role="alert" id="slot-broken" { (slot.message()) }
        }
        dl.cards {
            div { dt { "Slot state" } dd {
                @if slot.health.is_broken() { span.badge.bad { (slot.health.as_str()) } }
                @else if slot.health == crate::ingest::slot::Health::Ok { span.badge.ok { (slot.health.as_str()) } }
                @else { span.badge.warn { (slot.health.as_str()) } }
            } }
            div { dt { "Slot" } dd { @if streaming { span.badge.ok { "streaming" } } @else { span.badge.bad { "not streaming" } } } }
            div { dt { "Slot lag" } dd { (lag_bytes.map(page::bytes).unwrap_or_else(|| "unknown".into())) } }
            div { dt { "Lag (seconds)" } dd { (lag_s.map(|v| format!("{v:.1} s")).unwrap_or_else(|| if streaming { "0 s (idle)".into() } else { "unknown".into() })) } }
            div { dt { "Ingest" } dd { (format!("{:.1}", avg(|r| r.0))) " changes/s" } }
            div { dt { "Delivery" } dd { (format!("{:.1}", avg(|r| r.1))) " deliveries/s" } }
            div { dt { "Pending" } dd { (pending) } }
            div { dt { "Dead letters" } dd { (dead) } }
        }
        div.charts {
            (chart("Throughput", "per second", &[
                ("s1", "changes/s", r.iter().map(|r| r.0).collect()),
                ("s2", "deliveries/s", r.iter().map(|r| r.1).collect()),
            ]))
            (chart("Slot lag", "bytes", &[
                ("s3", "lag bytes", samples.iter().map(|s| s.lag_bytes.unwrap_or(0) as f64).collect()),
            ]))
        }
        h2 { "Subscriptions" }
        @if total > TOP {
            p.help { "The " (TOP) " of " (total) " subscriptions that need attention first. "
                a href="/console/subscriptions" { "All subscriptions" } }
        }
        div.scroll {
            table {
                caption.sr { "Health of each subscription" }
                thead { tr {
                    th scope="col" { "Subscription" } th scope="col" { "Breaker" }
                    th scope="col" { "Pending" } th scope="col" { "Oldest pending" } th scope="col" { "Dead" }
                    th scope="col" { "Last success" } th scope="col" { "Last error" }
                    th scope="col" { "p50" } th scope="col" { "p99" }
                } }
                tbody {
                    @for (q, b, h) in &rows {
                        tr {
                            td { a href=(format!("/console/subscriptions/{}/deliveries", enc(&q.subscription))) { (q.subscription) } }
                            td { (breaker(*b)) }
                            td { (q.pending) }
                            td { @if q.pending > 0 { (page::age(q.oldest_pending_seconds)) } @else { span.muted { "—" } } }
                            td { (q.dead) }
                            td { (when(h.and_then(|h| h.last_success))) }
                            td.err { @if let Some((t, e)) = h.and_then(|h| h.last_error.as_ref()) { (when(Some(*t))) " " (e) } @else { span.muted { "—" } } }
                            td { (ms(h.and_then(|h| h.p50_ms))) }
                            td { (ms(h.and_then(|h| h.p99_ms))) }
                        }
                    }
                }
            }
        }
        p.help { "Latency: enqueue to the receiver's 2xx, over each subscription's newest deliveries of the last hour (up to 1,000). Charts sample every "
            (PERIOD.as_secs()) " s while this walhook runs." }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_and_rates_are_per_second() {
        let s = Samples::default();
        let t0 = chrono::Utc::now();
        for i in 0..(CAPACITY as u64 + 10) {
            s.push(Sample {
                at: t0 + chrono::Duration::seconds(5 * i as i64),
                changes: 10 * i,
                finished: 5 * i,
                lag_bytes: None,
            });
        }
        let all = s.all();
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].changes, 100);
        assert_eq!(rates(&all[..2]), vec![(2.0, 1.0)]);
    }
}
