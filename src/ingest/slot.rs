//! The slot's health (issue #18): whether walhook's replication slot can still deliver every
//! change after the outbox checkpoint, how close it is to being invalidated, and the fence that
//! lets a later start tell a slot moved by someone else.
//!
//! The rule ([`diagnose`]), checked at every (re)connect of ingest, by the monitor while running,
//! and by `walhook check`:
//! - `lost`: the slot exists with `wal_status = 'lost'` (PostgreSQL invalidated it because it
//!   held more than `max_slot_wal_keep_size`);
//! - `missing`: the outbox has a checkpoint for the slot but the slot does not exist (dropped);
//! - `moved`: the slot's `confirmed_flush_lsn` is past `max(checkpoint, fence)`, where the fence
//!   is the highest position walhook ever reported to the slot, recorded in the outbox BEFORE it
//!   is reported ([`crate::source::stream::Fence`]). Only a consumer moves a slot's confirmed
//!   position, so the slot was recreated, advanced or consumed by someone else;
//! - otherwise `ok`. Before this version's first start there is no fence: the slot is adopted as
//!   it is (the fence is set to its position).
//!
//! In any of the three states the changes committed after the checkpoint may be missing; the
//! daemon stays up (API, console, delivery of what is in the outbox), `/readyz` says why,
//! `walhook_slot_state` tells, and one log line says what happened, since which checkpoint and
//! what to do. Guarantees: the state shown is the last diagnosis; the retained-WAL warning is
//! logged once per crossing of the fraction, not at every check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::IngestError;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::Lsn;
use crate::outbox::slot::{self as store, CheckpointInfo};
use crate::outbox::{self, Schema};
use crate::pg::tls;
use crate::source::setup::{max_slot_wal_keep_size, slot_state, SlotState};
use crate::source::stream::Fence;

/// How often the monitor looks at the slot while walhook runs.
const MONITOR_EVERY: Duration = Duration::from_secs(10);

/// The slot's health, as shown in `/readyz`, the API, the console and the metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not looked at yet.
    Unknown,
    Ok,
    Lost,
    Missing,
    Moved,
    /// A recovery is recreating the slot.
    Recovering,
}

impl Health {
    pub const ALL: [Health; 6] = [
        Health::Unknown,
        Health::Ok,
        Health::Lost,
        Health::Missing,
        Health::Moved,
        Health::Recovering,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Ok => "ok",
            Health::Lost => "lost",
            Health::Missing => "missing",
            Health::Moved => "moved",
            Health::Recovering => "recovering",
        }
    }

    /// Changes may be missing: a recovery is needed.
    pub fn is_broken(self) -> bool {
        matches!(self, Health::Lost | Health::Missing | Health::Moved)
    }
}

/// The last diagnosis of the slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub health: Health,
    pub slot: String,
    /// What happened (empty when ok).
    pub detail: String,
    /// The checkpoint after which changes may be missing.
    pub since: Option<CheckpointInfo>,
    /// Bytes of WAL the slot holds, and the cap (`max_slot_wal_keep_size`), when known.
    pub retained_bytes: Option<i64>,
    pub cap_bytes: Option<i64>,
}

impl Report {
    fn new(slot: &str) -> Report {
        Report {
            health: Health::Unknown,
            slot: slot.to_string(),
            detail: String::new(),
            since: None,
            retained_bytes: None,
            cap_bytes: None,
        }
    }

    /// The retained WAL as a fraction of the cap.
    pub fn retained_fraction(&self) -> Option<f64> {
        match (self.retained_bytes, self.cap_bytes) {
            (Some(r), Some(c)) if c > 0 => Some(r as f64 / c as f64),
            _ => None,
        }
    }

    /// Since when changes are missing, for messages: `0/16B3748 (committed 2026-…)`.
    pub fn since_text(&self) -> String {
        match &self.since {
            None => "the start (no checkpoint)".into(),
            Some(c) => format!(
                "checkpoint {} ({} {})",
                c.lsn,
                if c.commit_time { "committed" } else { "stored" },
                c.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
        }
    }

    /// What to do about it.
    pub fn action(&self) -> &'static str {
        "run `walhook slot recover --config <file>` (or POST /api/rest/_slot/recover, or set \
         [source] on_slot_lost = \"recover\"): it recreates the slot, sends a RESYNC marker to \
         every subscription and backfills every subscribed table; rows deleted in the gap \
         cannot be replayed"
    }

    /// The one line that says it all (for the log, `/readyz`, `walhook check`).
    pub fn message(&self) -> String {
        match self.health {
            Health::Ok => format!("slot {} is healthy", self.slot),
            Health::Unknown => format!("slot {} has not been checked yet", self.slot),
            Health::Recovering => format!("slot {} is being recovered", self.slot),
            _ => format!(
                "replication slot {} is {}: {}; changes committed after {} are missing; {}",
                self.slot,
                self.health.as_str(),
                self.detail,
                self.since_text(),
                self.action()
            ),
        }
    }

    /// The API's and the console's view.
    pub fn view(&self) -> Value {
        json!({
            "slot": self.slot,
            "state": self.health.as_str(),
            "ready": self.health == Health::Ok,
            "detail": (!self.detail.is_empty()).then_some(&self.detail),
            "message": self.message(),
            "missingSince": self.since.as_ref().map(|c| json!({
                "lsn": c.lsn.to_string(),
                "time": c.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "timeIs": if c.commit_time { "commit" } else { "stored" },
            })),
            "action": self.health.is_broken().then(|| self.action()),
            "retainedWalBytes": self.retained_bytes,
            "maxSlotWalKeepSizeBytes": self.cap_bytes,
            "retainedFraction": self.retained_fraction(),
        })
    }
}

/// Shared by ingest (which diagnoses and recovers), the API and the console.
pub struct SlotControl {
    report: Mutex<Report>,
    /// Set by the API's recover call; ingest takes it.
    recover_requested: AtomicBool,
    wake: Notify,
    /// The retained WAL was above the warning fraction at the last check.
    warned: AtomicBool,
}

impl SlotControl {
    pub fn new(slot: &str) -> Arc<SlotControl> {
        Arc::new(SlotControl {
            report: Mutex::new(Report::new(slot)),
            recover_requested: AtomicBool::new(false),
            wake: Notify::new(),
            warned: AtomicBool::new(false),
        })
    }

    pub fn report(&self) -> Report {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stores a diagnosis; the metric follows.
    pub fn set(&self, report: Report, metrics: &Metrics) {
        metrics.set_slot_state(report.health.as_str(), Health::ALL.map(Health::as_str));
        if let Some(f) = report.retained_fraction() {
            metrics.set_slot_retained_fraction(&report.slot, f);
        }
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = report;
    }

    fn set_health(&self, health: Health, metrics: &Metrics) {
        let mut r = self.report();
        r.health = health;
        if health == Health::Ok {
            r.detail.clear();
            r.since = None;
        }
        self.set(r, metrics);
    }

    /// Asks ingest to recover; false when the slot is not in a state that needs it.
    pub fn request_recovery(&self) -> bool {
        if !self.report().health.is_broken() {
            return false;
        }
        self.recover_requested.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        true
    }

    fn take_request(&self) -> bool {
        self.recover_requested.swap(false, Ordering::SeqCst)
    }
}

/// What [`diagnose`] found.
pub struct Diagnosis {
    pub report: Report,
    pub state: Option<SlotState>,
    pub checkpoint: Option<Lsn>,
    pub fence: Option<Lsn>,
}

/// Looks at the slot and the outbox (read-only): see the module doc for the rule.
pub async fn diagnose(
    source: &Client,
    outbox_client: &Client,
    schema: &Schema,
    slot: &str,
) -> Result<Diagnosis, IngestError> {
    let state = slot_state(source, slot).await?;
    let checkpoint = outbox::load_checkpoint(outbox_client, schema, slot).await?;
    let fence = store::fence(outbox_client, schema, slot).await?;
    let mut report = Report::new(slot);
    report.cap_bytes = max_slot_wal_keep_size(source).await?;
    report.retained_bytes = state.as_ref().and_then(|s| s.retained_bytes);
    let (health, detail) = match (&state, checkpoint) {
        (Some(s), _) if s.is_lost() => (
            Health::Lost,
            "PostgreSQL invalidated it (wal_status = lost) because it held more WAL than \
             max_slot_wal_keep_size allows"
                .to_string(),
        ),
        (None, Some(_)) => (
            Health::Missing,
            "it does not exist although the outbox has a checkpoint for it (it was dropped)"
                .to_string(),
        ),
        (Some(s), _) => match (fence, s.confirmed_flush) {
            (Some(f), Some(c)) if c > f.max(checkpoint.unwrap_or(Lsn::ZERO)) => (
                Health::Moved,
                format!(
                    "its confirmed position {c} is past the last position walhook reported ({}), \
                     so it was recreated or advanced by someone else",
                    f.max(checkpoint.unwrap_or(Lsn::ZERO))
                ),
            ),
            _ => (Health::Ok, String::new()),
        },
        (None, None) => (Health::Ok, String::new()),
    };
    report.health = health;
    report.detail = detail;
    if health.is_broken() {
        report.since = store::checkpoint_info(outbox_client, schema, slot).await?;
    }
    Ok(Diagnosis {
        report,
        state,
        checkpoint,
        fence,
    })
}

/// Logs the one line for a broken slot (error level: changes are missing).
pub fn log_broken(report: &Report) {
    error!(
        slot = %report.slot,
        state = report.health.as_str(),
        missing_since_lsn = %report.since.as_ref().map_or("-".to_string(), |c| c.lsn.to_string()),
        "{}",
        report.message()
    );
}

/// The retained-WAL warning: logged when the fraction is first passed (and again after it went
/// back under), the metric always follows.
pub fn check_retained(control: &SlotControl, report: &Report, warn_fraction: f64) {
    let Some(f) = report.retained_fraction() else {
        return;
    };
    if f >= warn_fraction {
        if !control.warned.swap(true, Ordering::Relaxed) {
            warn!(
                slot = %report.slot,
                retained_bytes = report.retained_bytes.unwrap_or(0),
                max_slot_wal_keep_size_bytes = report.cap_bytes.unwrap_or(0),
                fraction = format!("{f:.2}"),
                "slot {} retains {:.0}% of max_slot_wal_keep_size: PostgreSQL invalidates it at \
                 100% and the changes after walhook's checkpoint are then lost; make sure walhook \
                 keeps up (is it running? a long transaction open?) or raise the cap",
                report.slot,
                f * 100.0
            );
        }
    } else {
        control.warned.store(false, Ordering::Relaxed);
    }
}

/// While walhook runs: re-diagnoses the slot every `MONITOR_EVERY` for the retained-WAL
/// warning and the state shown (ingest itself reacts to a broken slot when its stream fails).
pub async fn monitor_loop(
    config: Config,
    background: crate::pg::Background,
    control: Arc<SlotControl>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let schema = Schema::new(config.outbox.schema.as_str());
    let slot = config.source.slot.to_string();
    loop {
        let work = async {
            let s = background.source().await.ok()?;
            let o = background.outbox().await.ok()?;
            match diagnose(&s, &o, &schema, &slot).await {
                Ok(d) => Some(d.report),
                Err(e) => {
                    // Before the first migration the tables may not exist yet.
                    tracing::debug!(error = %e, "slot monitor: diagnosis failed");
                    None
                }
            }
        };
        let found = tokio::select! {
            _ = cancel.cancelled() => return,
            r = work => r,
        };
        if let Some(report) = found {
            check_retained(&control, &report, config.source.slot_wal_warn_fraction);
            let current = control.report().health;
            // Ingest owns the transitions out of a broken or recovering state; the monitor
            // reports a slot that broke while streaming, and the retained WAL.
            if report.health.is_broken() && !current.is_broken() && current != Health::Recovering {
                log_broken(&report);
                control.set(report, &metrics);
            } else if report.health == current {
                control.set(report, &metrics);
            } else if let Some(f) = report.retained_fraction() {
                metrics.set_slot_retained_fraction(&report.slot, f);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(MONITOR_EVERY) => {}
        }
    }
}

/// Records wanted fence positions in the outbox, then allows them (at most about once a
/// second), until `cancel`.
pub async fn fence_loop(
    config: Config,
    background: crate::pg::Background,
    fence: Arc<Fence>,
    cancel: CancellationToken,
) {
    let schema = Schema::new(config.outbox.schema.as_str());
    let slot = config.source.slot.to_string();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = fence.more_wanted() => {}
        }
        let wanted = fence.wanted();
        let raised = async {
            let c = background.outbox().await?;
            store::raise_fence(&c, &schema, &slot, wanted).await
        };
        match raised.await {
            Ok(()) => fence.allow(wanted),
            Err(e) => {
                warn!(error = %e, "recording the slot fence failed; the slot's position waits");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = fence.urgent() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Ingest's side of a broken slot: reports it, then waits until the slot is healthy again
/// (recovered by `walhook slot recover`, from another process), until the API asks for a
/// recovery, or (with `on_slot_lost = "recover"`) recovers at once. Returns when ingest may
/// connect again; None when cancelled.
pub async fn wait_broken(
    config: &Config,
    report: Report,
    ctx: &super::slot_recover::Context,
    cancel: &CancellationToken,
) -> Option<()> {
    let control = &ctx.control;
    // Said once: the monitor may have said it already.
    if control.report().health != report.health {
        log_broken(&report);
    }
    control.set(report, &ctx.metrics);
    let auto = config.source.on_slot_lost == crate::config::OnSlotLost::Recover;
    loop {
        if auto || control.take_request() {
            control.set_health(Health::Recovering, &ctx.metrics);
            match super::slot_recover::recreate(config).await {
                Ok(r) => {
                    let (config, ctx2) = (config.clone(), ctx.clone());
                    tokio::spawn(async move {
                        if let Err(e) =
                            super::slot_recover::finish(&config, &r, Some(&ctx2), None).await
                        {
                            error!(error = %e, "slot recovery: starting the backfills failed");
                        }
                    });
                    control.set_health(Health::Ok, &ctx.metrics);
                    return Some(());
                }
                Err(e) => {
                    error!(error = %e, "slot recovery failed; walhook stays up, not ready");
                    let mut r = control.report();
                    r.health = Health::Lost.max_broken(r.health);
                    control.set(r, &ctx.metrics);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = control.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        // Recovered from elsewhere (the CLI)? Then ingest connects again and diagnoses.
        if let Some(h) = quick_health(config).await {
            if h == Health::Ok {
                return Some(());
            }
        }
        if auto {
            // Retried with a pause, not in a tight loop.
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
    }
}

impl Health {
    /// After a failed recovery: the broken state it was in before (lost when unknown).
    fn max_broken(self, previous: Health) -> Health {
        if previous.is_broken() {
            previous
        } else {
            self
        }
    }
}

/// A fresh diagnosis, None when a database does not answer.
async fn quick_health(config: &Config) -> Option<Health> {
    let s = tls::connect_sql(&config.pg_config()).await.ok()?;
    let o = outbox::connect(config).await.ok()?;
    let schema = Schema::new(config.outbox.schema.as_str());
    diagnose(&s, &o, &schema, config.source.slot.as_str())
        .await
        .ok()
        .map(|d| d.report.health)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broken(health: Health) -> Report {
        Report {
            health,
            slot: "walhook".into(),
            detail: "it does not exist".into(),
            since: Some(CheckpointInfo {
                lsn: Lsn(0x3A1B2C8),
                time: chrono::DateTime::parse_from_rfc3339("2026-12-01T13:38:37.162Z")
                    .unwrap()
                    .into(),
                commit_time: true,
            }),
            retained_bytes: Some(48 << 20),
            cap_bytes: Some(64 << 20),
        }
    }

    #[test]
    fn the_message_says_what_since_when_and_what_to_do() {
        let m = broken(Health::Missing).message();
        assert!(
            m.starts_with(
                "replication slot walhook is missing: it does not exist; changes committed after \
                 checkpoint 0/3A1B2C8 (committed 2026-12-01T13:38:37.162Z) are missing; run \
                 `walhook slot recover"
            ),
            "{m}"
        );
        assert!(
            m.contains("rows deleted in the gap cannot be replayed"),
            "{m}"
        );
        let v = broken(Health::Lost).view();
        assert_eq!(v["state"], "lost");
        assert_eq!(v["ready"], false);
        assert_eq!(v["missingSince"]["lsn"], "0/3A1B2C8");
        assert_eq!(v["retainedFraction"], 0.75);
        assert!(Health::Moved.is_broken() && !Health::Recovering.is_broken());
    }

    #[test]
    fn the_warning_is_logged_once_per_crossing() {
        let control = SlotControl::new("walhook");
        let mut r = broken(Health::Ok);
        check_retained(&control, &r, 0.7);
        assert!(control.warned.load(Ordering::Relaxed));
        r.retained_bytes = Some(1 << 20);
        check_retained(&control, &r, 0.7);
        assert!(
            !control.warned.load(Ordering::Relaxed),
            "back under: armed again"
        );
    }
}
