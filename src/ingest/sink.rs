//! The ingest sink: the source's row changes are routed and their payloads streamed into the
//! outbox ([`crate::outbox::enqueue`]) inside an outbox transaction that also advances the
//! checkpoint.
//!
//! Two halves, so decoding and writing overlap: the front ([`OutboxSink`], in the source task)
//! skips and routes; the writer task COPYs rows and commits. Consecutive source transactions
//! that are already queued are committed together (group commit).
//!
//! Guarantees:
//! - exactly once (ARCHITECTURE.md invariant 1): a source transaction whose commit LSN is at or below
//!   the checkpoint is skipped; otherwise its rows and the checkpoint commit in one outbox
//!   transaction that only ever ends at a source commit boundary, so a crash anywhere leaves
//!   whole source transactions or nothing;
//! - bounded memory: the channel between the halves is bounded and rows go out through COPY as
//!   they arrive, so a transaction of any size is never held in memory;
//! - the durable position (what the slot may confirm) is published by the writer only after its
//!   COMMIT; `idle` is true only when every handed-over commit is durable;
//! - routing changes (SIGHUP) take effect between transactions, never inside one;
//! - backfills ([`super::backfill`]): the keys changed between a chunk's watermarks are recorded
//!   here, and at the high watermark the chunk's other rows and its progress are written into
//!   the same outbox transaction as the watermark's source transaction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tracing::{debug, info};

use super::IngestError;
use crate::model::{Lsn, RowChange};
use crate::outbox::enqueue::Enqueuer;
use crate::outbox::handoff::Handoff;
use crate::outbox::queue::Claimed;
use crate::outbox::{OutboxError, Schema};
use crate::route::{Routed, Router};
use crate::source::stream::Sink;

/// What the front hands to the writer.
enum Item {
    Row(Routed, Lsn),
    /// A change's trace span, ended when its group commits (telemetry on only).
    Span(crate::telemetry::ChangeSpan),
    /// A backfill row: stored as event `READ`.
    Read(Routed, Lsn),
    /// A slot recovery's marker: stored as event `RESYNC`.
    Resync(Routed, Lsn),
    /// A backfill chunk's progress, stored with the open group; `done` hears when it is.
    Progress(
        crate::outbox::backfills::Progress,
        tokio::sync::oneshot::Sender<super::watermarks::Outcome>,
    ),
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
    },
}

const CHANNEL: usize = 8192;
/// Change spans kept per group commit, at most.
const MAX_SPANS: usize = 10_000;

/// A commit time in Postgres's microseconds since 2000-01-01 as a system time.
fn pg_time(micros: i64) -> std::time::SystemTime {
    const PG_EPOCH: std::time::Duration = std::time::Duration::from_secs(946_684_800);
    let since_unix = PG_EPOCH.as_micros() as i64 + micros;
    std::time::UNIX_EPOCH + std::time::Duration::from_micros(since_unix.max(0) as u64)
}
/// A group commit ends at the first source commit after this many rows.
const GROUP_ROWS: u64 = 50_000;

/// Bytes of one group commit kept for the handoff to delivery (payloads, keys, ids and a fixed
/// overhead per row), at most; rows beyond it are not kept and their pumps read them from the
/// outbox.
const HANDOFF_BYTES: usize = 16 << 20;
/// Rows of one subscription after which a group ends at the next source commit while pumps
/// listen: a quarter of a handoff slot, so that a slot holds several groups.
const HANDOFF_GROUP_ROWS: usize = crate::outbox::handoff::SLOT_ROWS / 4;
/// What a kept row costs besides its strings (the struct, allocator headers).
const HANDOFF_ROW_OVERHEAD: usize = 128;

/// Who hears about progress: this process's delivery pumps (handed each commit's rows) and
/// metrics.
#[derive(Default, Clone)]
pub struct Hooks {
    pub handoff: Option<Arc<Handoff>>,
    pub metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    /// Where backfill runners hand over their chunks.
    pub backfill: Option<Arc<super::watermarks::Exchange>>,
    /// The slot's health shown to the API (`walhook run`); without it a broken slot stops
    /// ingest with an error.
    pub slot: Option<super::slot_recover::Context>,
    /// Traces: a `walhook.change` span per stored change.
    pub telemetry: crate::telemetry::Telemetry,
    /// The background tasks' shared connections (the slot fence uses them); without them
    /// ingest makes its own.
    pub background: Option<crate::pg::Background>,
}

pub struct OutboxSink {
    watermarks: Option<super::watermarks::Watermarks>,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    telemetry: crate::telemetry::Telemetry,
    router: Router,
    reload: watch::Receiver<Router>,
    checkpoint: Lsn,
    skipping: bool,
    commit_lsn: Lsn,
    commit_ts: i64,
    buf: Vec<Routed>,
    tx: Option<mpsc::Sender<Item>>,
    writer: Option<JoinHandle<Result<(), IngestError>>>,
    durable: watch::Receiver<Lsn>,
    handed_over: Lsn,
}

impl OutboxSink {
    /// `checkpoint` is the stored checkpoint; `confirmed` what the slot already confirmed.
    pub fn new(
        client: Client,
        schema: Schema,
        slot: &str,
        mut reload: watch::Receiver<Router>,
        checkpoint: Lsn,
        confirmed: Lsn,
        hooks: Hooks,
    ) -> Self {
        let router = reload.borrow_and_update().clone();
        let (tx, rx) = mpsc::channel(CHANNEL);
        let start = confirmed.max(checkpoint);
        let (durable_tx, durable) = watch::channel(start);
        let writer = Writer {
            out: Enqueuer::new(client, schema, slot),
            rx,
            durable: durable_tx,
            rows_in_group: 0,
            rows_since_commit: 0,
            last_commit: None,
            total_rows: 0,
            last_log: Instant::now(),
            rows_at_last_log: 0,
            checkpoint,
            hooks: hooks.clone(),
            kept: HashMap::new(),
            kept_bytes: 0,
            kept_most: 0,
            dropped: HashSet::new(),
            backfill_done: Vec::new(),
            spans: Vec::new(),
        };
        OutboxSink {
            watermarks: hooks
                .backfill
                .clone()
                .map(super::watermarks::Watermarks::new),
            telemetry: hooks.telemetry.clone(),
            metrics: hooks.metrics,
            router,
            reload,
            checkpoint,
            skipping: false,
            commit_lsn: Lsn::ZERO,
            commit_ts: 0,
            buf: Vec::new(),
            tx: Some(tx),
            writer: Some(tokio::spawn(writer.run())),
            durable,
            handed_over: start,
        }
    }

    async fn send(&mut self, item: Item) -> Result<(), IngestError> {
        let sent = match &self.tx {
            Some(tx) => tx.send(item).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer stopped: its own error says why.
        Err(self.join_writer().await.err().unwrap_or_else(|| {
            IngestError::Outbox(OutboxError::Connect {
                message: "outbox writer stopped".into(),
                retryable: true,
            })
        }))
    }

    /// A slot recovery's marker message: one `RESYNC` delivery per active subscription, stored
    /// with the message's source transaction (so before any backfill row the recovery starts).
    async fn resync(&mut self, content: &[u8]) -> Result<(), IngestError> {
        let Some((recovery, detail)) = std::str::from_utf8(content)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .and_then(|v| Some((v.get("recovery")?.as_i64()?, v.to_string())))
        else {
            tracing::warn!("ignoring a malformed slot recovery message");
            return Ok(());
        };
        let id = crate::outbox::slot::marker_event_id(recovery);
        let lsn = self.commit_lsn;
        for r in self.router.resync_markers(&id, self.commit_ts, &detail) {
            self.send(Item::Resync(r, lsn)).await?;
        }
        info!(
            recovery,
            "RESYNC markers stored for every active subscription"
        );
        Ok(())
    }

    async fn join_writer(&mut self) -> Result<(), IngestError> {
        self.tx = None;
        match self.writer.take() {
            Some(h) => h.await.unwrap_or_else(|e| {
                Err(OutboxError::Connect {
                    message: format!("outbox writer panicked: {e}"),
                    retryable: true,
                }
                .into())
            }),
            None => Ok(()),
        }
    }
}

impl Sink for OutboxSink {
    type Error = IngestError;

    async fn begin(&mut self, final_lsn: Lsn, commit_ts: i64) -> Result<(), IngestError> {
        self.commit_ts = commit_ts;
        if self.reload.has_changed().unwrap_or(false) {
            self.router = self.reload.borrow_and_update().clone();
            info!(
                tables = self.router.tables().len(),
                "subscriptions reloaded"
            );
        }
        self.skipping = final_lsn <= self.checkpoint;
        if let Some(w) = &mut self.watermarks {
            w.begin();
        }
        if self.skipping {
            debug!(commit_lsn = %final_lsn, checkpoint = %self.checkpoint, "skipping transaction already in the outbox");
        }
        self.commit_lsn = final_lsn;
        Ok(())
    }

    async fn change(&mut self, change: RowChange) -> Result<(), IngestError> {
        if self.skipping {
            return Ok(());
        }
        if let Some(m) = &self.metrics {
            m.add_changes(1);
        }
        if let Some(w) = &mut self.watermarks {
            w.observe(&change);
        }
        self.buf.clear();
        self.router.route(&change, &mut self.buf);
        let lsn = self.commit_lsn;
        if self.telemetry.is_on() && !self.buf.is_empty() {
            let span = crate::telemetry::ChangeSpan {
                event_id: self.buf[0].event_id.clone(),
                table: change.shape.table.to_string(),
                event: change.kind.as_str(),
                commit: pg_time(change.commit_ts),
                commit_lsn: lsn.to_string(),
                deliveries: self.buf.len(),
            };
            self.send(Item::Span(span)).await?;
        }
        // Taken out so `send` can borrow self; put back to keep its capacity.
        let mut rows = std::mem::take(&mut self.buf);
        for r in rows.drain(..) {
            self.send(Item::Row(r, lsn)).await?;
        }
        self.buf = rows;
        Ok(())
    }

    async fn message(&mut self, prefix: &str, content: &[u8]) -> Result<(), IngestError> {
        if self.skipping {
            return Ok(());
        }
        if prefix == crate::outbox::slot::RESYNC_PREFIX {
            return self.resync(content).await;
        }
        let Some(ready) = self
            .watermarks
            .as_mut()
            .and_then(|w| w.message(prefix, content))
        else {
            return Ok(());
        };
        // A backfill chunk, stored at its high watermark's place in the stream.
        let lsn = self.commit_lsn;
        for r in ready.rows {
            self.send(Item::Read(r, lsn)).await?;
        }
        self.send(Item::Progress(ready.progress, ready.done)).await
    }

    async fn commit(&mut self, commit_lsn: Lsn, end_lsn: Lsn) -> Result<Lsn, IngestError> {
        if self.skipping {
            // Already stored; nothing is in flight for it.
            return Ok(self.durable());
        }
        self.handed_over = self.handed_over.max(end_lsn);
        self.send(Item::Commit {
            commit_lsn,
            end_lsn,
        })
        .await?;
        Ok(self.durable())
    }

    async fn check(&mut self) -> Result<(), IngestError> {
        if self.writer.as_ref().is_some_and(|w| w.is_finished()) {
            // The writer only ends early with an error (the outbox connection is gone).
            return Err(self.join_writer().await.err().unwrap_or_else(|| {
                IngestError::Outbox(OutboxError::Connect {
                    message: "outbox writer stopped".into(),
                    retryable: true,
                })
            }));
        }
        Ok(())
    }

    fn durable(&self) -> Lsn {
        *self.durable.borrow()
    }

    fn idle(&self) -> bool {
        self.durable() >= self.handed_over
    }

    async fn close(&mut self) -> Result<Lsn, IngestError> {
        self.join_writer().await?;
        Ok(self.durable())
    }
}

struct Writer {
    out: Enqueuer,
    rx: mpsc::Receiver<Item>,
    durable: watch::Sender<Lsn>,
    rows_in_group: u64,
    rows_since_commit: u64,
    last_commit: Option<(Lsn, Lsn)>,
    total_rows: u64,
    last_log: Instant,
    rows_at_last_log: u64,
    checkpoint: Lsn,
    hooks: Hooks,
    /// The open group's rows, per subscription, for the handoff after its commit.
    kept: HashMap<Arc<str>, Vec<Claimed>>,
    kept_bytes: usize,
    /// The most rows kept for one subscription in the open group.
    kept_most: usize,
    /// Subscriptions whose rows of the open group were not kept.
    dropped: HashSet<Arc<str>>,
    /// Backfill runners waiting for the open group's commit.
    backfill_done: Vec<tokio::sync::oneshot::Sender<super::watermarks::Outcome>>,
    /// Spans of this group's changes, ended when it commits.
    spans: Vec<crate::telemetry::ChangeSpan>,
}

impl Writer {
    async fn run(mut self) -> Result<(), IngestError> {
        // A connection lost while nothing arrives is noticed by this tick, not at the next row.
        let mut health = tokio::time::interval(std::time::Duration::from_millis(500));
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let item = tokio::select! {
                item = self.rx.recv() => item,
                _ = health.tick() => {
                    if self.out.is_closed() {
                        return Err(IngestError::Outbox(OutboxError::Connect {
                            message: "the outbox connection was closed".into(),
                            retryable: true,
                        }));
                    }
                    continue;
                }
            };
            let Some(item) = item else { break };
            match item {
                Item::Span(span) => {
                    // Bounded: a huge group traces its first changes only.
                    if self.spans.len() < MAX_SPANS {
                        self.spans.push(span);
                    }
                }
                Item::Row(r, lsn) => {
                    let written = self.out.write(&r, lsn).await?;
                    let event = r.event.as_str();
                    self.keep(r, event, written);
                    self.rows_in_group += 1;
                    self.rows_since_commit += 1;
                }
                Item::Read(r, lsn) => {
                    let written = self.out.write_as(&r, "READ", lsn).await?;
                    self.keep(r, "READ", written);
                    self.rows_in_group += 1;
                    self.rows_since_commit += 1;
                }
                Item::Resync(r, lsn) => {
                    let written = self.out.write_as(&r, "RESYNC", lsn).await?;
                    self.keep(r, "RESYNC", written);
                    self.rows_in_group += 1;
                    self.rows_since_commit += 1;
                }
                Item::Progress(p, done) => {
                    self.out.note_progress(p).await?;
                    self.backfill_done.push(done);
                }
                Item::Commit {
                    commit_lsn,
                    end_lsn,
                } => {
                    self.last_commit = Some((commit_lsn, end_lsn));
                    self.rows_since_commit = 0;
                    if !self.out.is_open() {
                        // Nothing stored and nothing open: replaying it would store nothing.
                        self.durable.send_if_modified(|d| bump(d, end_lsn));
                    } else if self.rx.is_empty()
                        || self.rows_in_group >= GROUP_ROWS
                        || self.handoff_group_full()
                    {
                        self.flush().await?;
                    }
                }
            }
        }
        // The front is gone (shutdown): finish the open write if it ends at a source commit.
        if self.out.is_open() && self.rows_since_commit == 0 && self.last_commit.is_some() {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), IngestError> {
        let Some((commit_lsn, end_lsn)) = self.last_commit else {
            return Ok(());
        };
        if !self.out.commit(commit_lsn).await? {
            return Ok(());
        }
        self.checkpoint = commit_lsn;
        self.durable.send_if_modified(|d| bump(d, end_lsn));
        for done in self.backfill_done.drain(..) {
            let _ = done.send(super::watermarks::Outcome::Stored);
        }
        let stored = std::time::SystemTime::now();
        for span in self.spans.drain(..) {
            self.hooks.telemetry.change_stored(&span, stored);
        }
        self.total_rows += self.rows_in_group;
        if let Some(m) = &self.hooks.metrics {
            m.add_enqueued(self.rows_in_group);
        }
        if let Some(h) = &self.hooks.handoff {
            // May wait for a pump that keeps up but has no room yet (see outbox::handoff).
            let waited = h.publish(std::mem::take(&mut self.kept)).await;
            if let Some(m) = &self.hooks.metrics {
                m.ingest_paced(waited);
            }
            h.dirty(self.dropped.iter().map(|s| &**s));
        }
        self.kept_bytes = 0;
        self.kept_most = 0;
        self.dropped.clear();
        debug!(commit_lsn = %commit_lsn, rows = self.rows_in_group, "stored");
        self.rows_in_group = 0;
        self.log_progress();
        Ok(())
    }

    /// The group holds as many rows of one subscription as its pump should be handed at once
    /// (rows are kept only while pumps listen): it ends at this source commit, so that a slot
    /// takes it whole, and a pump catching up sees ingest wait before it is far behind.
    fn handoff_group_full(&self) -> bool {
        self.kept_most >= HANDOFF_GROUP_ROWS
    }

    /// Keeps a stored row for the handoff, within [`HANDOFF_BYTES`] per group.
    fn keep(&mut self, r: Routed, event: &str, written: crate::outbox::enqueue::Written) {
        let Some(h) = &self.hooks.handoff else {
            return;
        };
        if !h.is_listening() {
            return;
        }
        let cost = r.body.len() + r.key.len() + r.event_id.len() + HANDOFF_ROW_OVERHEAD;
        if self.kept_bytes + cost > HANDOFF_BYTES {
            self.kept.remove(&r.subscription);
            self.dropped.insert(r.subscription);
            return;
        }
        if self.dropped.contains(&r.subscription) {
            return;
        }
        self.kept_bytes += cost;
        let kept = self
            .kept
            .entry(r.subscription)
            .or_insert_with(|| h.group_vec());
        self.kept_most = self.kept_most.max(kept.len() + 1);
        kept.push(Claimed {
            id: written.id,
            event_id: r.event_id,
            event: event.to_string(),
            ordering_key: r.key,
            payload: r.body,
            attempts: 0,
            sequence: Some(written.sequence),
            fresh: true,
        });
    }

    fn log_progress(&mut self) {
        let elapsed = self.last_log.elapsed();
        if elapsed.as_secs() >= 10 {
            let rows = self.total_rows - self.rows_at_last_log;
            info!(
                rows,
                per_sec = (rows as f64 / elapsed.as_secs_f64()) as u64,
                total = self.total_rows,
                checkpoint = %self.checkpoint,
                "ingest progress"
            );
            self.last_log = Instant::now();
            self.rows_at_last_log = self.total_rows;
        }
    }
}

/// Moves a position forward only.
fn bump(d: &mut Lsn, to: Lsn) -> bool {
    if to > *d {
        *d = to;
        true
    } else {
        false
    }
}
