//! Recovering a broken slot (issue #18): the slot and publication state recreated, one `RESYNC`
//! marker per active subscription written through the WAL, then one backfill per subscription
//! (its filter applied by routing, as for every backfill) so receivers converge on the current
//! rows. Used by `walhook slot recover`, the API's `POST /api/rest/_slot/recover` and
//! `[source] on_slot_lost = "recover"`.
//!
//! Guarantees:
//! - one recovery of a slot at a time (an advisory lock on the outbox), and only of a slot that
//!   [`super::slot::diagnose`] finds broken;
//! - the marker message is written after the new slot exists and before any backfill is
//!   created, so the sink stores every marker before the first backfill row (lower sequence
//!   numbers); the backfills are created once the markers are delivered (or after a bounded
//!   wait), so a receiver sees its marker before the rows;
//! - what cannot be known is said: rows deleted during the gap are not in any backfill, and a
//!   table without a primary key cannot be backfilled (it is named in the summary).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use super::slot::{diagnose, SlotControl};
use super::IngestError;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::Subscription;
use crate::outbox::backfills::{self, BackfillRefused};
use crate::outbox::slot::{self as store, Recovery};
use crate::outbox::{self, subscriptions, Schema};
use crate::pg::tls;
use crate::route::Router;
use crate::source::setup::{create_slot, drop_slot, prepare};
use crate::source::SourceError;

/// Rows per backfill chunk of a recovery.
const CHUNK: i32 = 1000;

/// The daemon's handles a recovery started inside it uses.
#[derive(Clone)]
pub struct Context {
    pub control: Arc<SlotControl>,
    pub metrics: Arc<Metrics>,
    /// Bumped after the backfills are created, so the runners start at once.
    pub backfills: Arc<watch::Sender<u64>>,
}

/// The first half done: a new slot, the marker written.
#[derive(Debug, Clone)]
pub struct Recreated {
    pub recovery: Recovery,
    /// The active subscriptions at the time: each gets a marker and a backfill.
    pub subscriptions: Vec<Subscription>,
    /// API subscriptions left out (their table or a column is gone), with why.
    pub left_out: Vec<(String, String)>,
}

/// What the second half did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub markers_stored: i64,
    pub markers_finished: i64,
    /// (subscription, backfill id)
    pub backfills: Vec<(String, i64)>,
    /// (subscription, why it is not backfilled)
    pub skipped: Vec<(String, String)>,
}

/// Why a recovery did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("{0}")]
    NotNeeded(String),
    #[error("another recovery of slot {0} is running")]
    Busy(String),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

impl From<SourceError> for RecoverError {
    fn from(e: SourceError) -> Self {
        RecoverError::Ingest(e.into())
    }
}

impl From<outbox::OutboxError> for RecoverError {
    fn from(e: outbox::OutboxError) -> Self {
        RecoverError::Ingest(e.into())
    }
}

/// Recreates the slot and the publication state, records the recovery and writes its marker
/// message. Ingest must not stream from the slot meanwhile (a broken slot streams nothing).
pub async fn recreate(config: &Config) -> Result<Recreated, RecoverError> {
    let slot = config.source.slot.as_str();
    let schema = Schema::new(config.outbox.schema.as_str());
    let mut outbox_client = outbox::connect(config).await?;
    outbox::migrate(&mut outbox_client, &schema).await?;
    if !store::lock_recovery(&outbox_client, slot).await? {
        return Err(RecoverError::Busy(slot.to_string()));
    }
    let result = recreate_locked(config, &outbox_client, &schema).await;
    let _ = store::unlock_recovery(&outbox_client, slot).await;
    result
}

async fn recreate_locked(
    config: &Config,
    outbox_client: &tokio_postgres::Client,
    schema: &Schema,
) -> Result<Recreated, RecoverError> {
    let slot = config.source.slot.as_str();
    let source = tls::connect_sql(&config.pg_config())
        .await
        .map_err(SourceError::from)?;
    let d = diagnose(&source, outbox_client, schema, slot).await?;
    if !d.report.health.is_broken() {
        return Err(RecoverError::NotNeeded(format!(
            "slot {slot} is healthy (state {}); nothing to recover",
            d.report.health.as_str()
        )));
    }
    let stored = subscriptions::load_all(outbox_client, schema).await?;
    // As at start: an API subscription whose table or column is gone is left out, named.
    let (stored, left_out) = super::reload::without_broken_api_subscriptions(&source, stored).await;
    let subs: Vec<Subscription> = stored.into_iter().map(|s| s.sub).collect();
    let router = Router::with_project(config, subs.iter().cloned());
    prepare(
        &source,
        &router.tables(),
        config.source.publication.as_str(),
        config.source.manage_replica_identity,
        true,
        |t| router.validate_table(&t.table, &t.columns, &t.unpublished_generated),
    )
    .await?;
    if d.state.is_some() {
        drop_slot(&source, slot).await?;
    }
    let start = create_slot(&source, slot).await?;
    store::reset_fence(outbox_client, schema, slot, start).await?;
    let recovery = store::start_recovery(
        outbox_client,
        schema,
        slot,
        (d.report.health.as_str(), &d.report.detail),
        d.report.since.as_ref(),
        start,
    )
    .await?;
    let message = serde_json::json!({
        "recovery": recovery.id,
        "reason": d.report.health.as_str(),
        "missing_since_lsn": d.report.since.as_ref().map(|c| c.lsn.to_string()),
        "missing_since": d.report.since.as_ref()
            .map(|c| c.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    });
    store::emit_resync(&source, &message.to_string()).await?;
    info!(
        slot,
        recovery = recovery.id,
        reason = d.report.health.as_str(),
        slot_start = %start,
        missing_since = %d.report.since_text(),
        "slot recreated; RESYNC markers written; backfills follow once the markers are delivered"
    );
    Ok(Recreated {
        recovery,
        subscriptions: subs.into_iter().filter(|s| s.active).collect(),
        left_out,
    })
}

/// Waits (at most `wait`) until the markers are delivered, then starts one backfill per
/// subscription and finishes the recovery. `ctx`: the daemon's handles, when run inside it.
pub async fn finish(
    config: &Config,
    r: &Recreated,
    ctx: Option<&Context>,
    wait: Option<Duration>,
) -> Result<Summary, RecoverError> {
    let schema = Schema::new(config.outbox.schema.as_str());
    let wait = wait.unwrap_or(Duration::from_secs(60));
    let client = outbox::connect(config).await?;
    let event_id = store::marker_event_id(r.recovery.id);
    let mut summary = Summary {
        skipped: r.left_out.clone(),
        ..Summary::default()
    };
    let deadline = Instant::now() + wait;
    while !r.subscriptions.is_empty() {
        let (stored, finished) = store::markers(&client, &schema, &event_id).await?;
        (summary.markers_stored, summary.markers_finished) = (stored, finished);
        if stored > 0 && finished == stored {
            break;
        }
        if Instant::now() >= deadline {
            warn!(
                recovery = r.recovery.id,
                stored,
                delivered = finished,
                "RESYNC markers not all delivered in time; starting the backfills anyway"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut source = tls::connect_sql(&config.pg_config())
        .await
        .map_err(SourceError::from)?;
    for sub in &r.subscriptions {
        match backfills::table_info(&source, &sub.table).await {
            Ok(_) => {}
            Err(BackfillRefused::Db(e)) => return Err(e.into()),
            Err(other) => {
                warn!(subscription = %sub.id, reason = %other, "subscription not backfilled");
                summary.skipped.push((sub.id.clone(), other.to_string()));
                continue;
            }
        }
        let estimate = backfills::check_where(&mut source, &sub.table, None)
            .await
            .ok()
            .flatten();
        let b = backfills::create(&client, &schema, &sub.id, None, CHUNK, 0, estimate).await?;
        summary.backfills.push((sub.id.clone(), b.id));
    }
    let ids: Vec<i64> = summary.backfills.iter().map(|(_, id)| *id).collect();
    store::finish_recovery(&client, &schema, r.recovery.id, &ids).await?;
    if let Some(ctx) = ctx {
        ctx.backfills.send_modify(|n| *n += 1);
    }
    info!(
        recovery = r.recovery.id,
        backfills = ids.len(),
        skipped = summary.skipped.len(),
        "slot recovery: backfills started; rows deleted during the gap cannot be replayed"
    );
    Ok(summary)
}
