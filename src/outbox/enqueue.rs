//! The outbox sink: routed payloads of each source transaction are streamed into the outbox
//! with COPY inside an outbox transaction that also advances the checkpoint.
//!
//! Two halves, so decoding and writing overlap: the front ([`OutboxSink`], in the source task)
//! skips and routes; the writer task COPYs rows and commits. Consecutive source transactions
//! that are already queued are committed together (group commit).
//!
//! Guarantees:
//! - exactly once (DESIGN.md invariant 1): a source transaction whose commit LSN is at or below
//!   the checkpoint is skipped; otherwise its rows and the checkpoint commit in one outbox
//!   transaction that only ever ends at a source commit boundary, so a crash anywhere leaves
//!   whole source transactions or nothing;
//! - bounded memory: the channel between the halves is bounded and rows go out through COPY as
//!   they arrive, so a transaction of any size is never held in memory;
//! - the durable position (what the slot may confirm) is published by the writer only after its
//!   COMMIT; `idle` is true only when every handed-over commit is durable;
//! - routing changes (SIGHUP) take effect between transactions, never inside one;
//! - each stored delivery gets its subscription's next sequence number (1, 2, …), and the last
//!   number per subscription is stored in the same outbox transaction as the rows, so numbers
//!   are assigned once, without gaps or reuse; a writer that fails is replaced by one that
//!   reloads them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Client;
use tracing::{debug, info};

use super::{OutboxError, Schema};
use crate::model::change::RowChange;
use crate::model::Lsn;
use crate::route::{Routed, Router};
use crate::source::stream::Sink;
use crate::source::SourceError;

/// The ingest pipeline's error: either side of it.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

impl IngestError {
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::Source(e) => e.is_retryable(),
            IngestError::Outbox(e) => e.is_retryable(),
        }
    }
}

impl From<tokio_postgres::Error> for IngestError {
    fn from(e: tokio_postgres::Error) -> Self {
        IngestError::Outbox(OutboxError::Sql(e))
    }
}

/// What the front hands to the writer.
enum Item {
    Row(Routed, Lsn),
    Commit { commit_lsn: Lsn, end_lsn: Lsn },
}

const CHANNEL: usize = 8192;
/// A group commit ends at the first source commit after this many rows.
const GROUP_ROWS: u64 = 50_000;

/// Who hears about progress: delivery workers (woken after each commit) and metrics.
#[derive(Default, Clone)]
pub struct Hooks {
    pub wake: Option<watch::Sender<u64>>,
    pub metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

pub struct OutboxSink {
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    router: Router,
    reload: watch::Receiver<Router>,
    checkpoint: Lsn,
    skipping: bool,
    commit_lsn: Lsn,
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
            client,
            schema,
            slot: slot.to_string(),
            rx,
            durable: durable_tx,
            copy: None,
            rows_in_group: 0,
            rows_since_commit: 0,
            last_commit: None,
            total_rows: 0,
            last_log: Instant::now(),
            rows_at_last_log: 0,
            checkpoint,
            hooks: hooks.clone(),
            sequences: None,
            sequences_dirty: HashMap::new(),
        };
        OutboxSink {
            metrics: hooks.metrics,
            router,
            reload,
            checkpoint,
            skipping: false,
            commit_lsn: Lsn::ZERO,
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

    async fn begin(&mut self, final_lsn: Lsn, _commit_ts: i64) -> Result<(), IngestError> {
        if self.reload.has_changed().unwrap_or(false) {
            self.router = self.reload.borrow_and_update().clone();
            info!(
                tables = self.router.tables().len(),
                "subscriptions reloaded"
            );
        }
        self.skipping = final_lsn <= self.checkpoint;
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
        self.buf.clear();
        self.router.route(&change, &mut self.buf);
        let lsn = self.commit_lsn;
        // Taken out so `send` can borrow self; put back to keep its capacity.
        let mut rows = std::mem::take(&mut self.buf);
        for r in rows.drain(..) {
            self.send(Item::Row(r, lsn)).await?;
        }
        self.buf = rows;
        Ok(())
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
    client: Client,
    schema: Schema,
    slot: String,
    rx: mpsc::Receiver<Item>,
    durable: watch::Sender<Lsn>,
    copy: Option<Pin<Box<BinaryCopyInWriter>>>,
    rows_in_group: u64,
    rows_since_commit: u64,
    last_commit: Option<(Lsn, Lsn)>,
    total_rows: u64,
    last_log: Instant,
    rows_at_last_log: u64,
    checkpoint: Lsn,
    hooks: Hooks,
    /// Each subscription's last sequence number, stored or in the open transaction; None until
    /// loaded by the first transaction.
    sequences: Option<HashMap<Arc<str>, i64>>,
    /// Numbers advanced by the open transaction, stored with it.
    sequences_dirty: HashMap<Arc<str>, i64>,
}

impl Writer {
    async fn run(mut self) -> Result<(), IngestError> {
        while let Some(item) = self.rx.recv().await {
            match item {
                Item::Row(r, lsn) => {
                    if self.copy.is_none() {
                        self.open().await?;
                    }
                    let next = self
                        .sequences
                        .as_mut()
                        .expect("loaded when opened")
                        .entry(r.subscription.clone())
                        .or_insert(0);
                    *next += 1;
                    let sequence = *next;
                    self.sequences_dirty
                        .insert(r.subscription.clone(), sequence);
                    let copy = self.copy.as_mut().expect("opened above");
                    let sub: &str = &r.subscription;
                    copy.as_mut()
                        .write(&[
                            &sub,
                            &r.event_id,
                            &r.event.as_str(),
                            &r.key,
                            &r.body,
                            &(lsn.0 as i64),
                            &sequence,
                        ])
                        .await?;
                    self.rows_in_group += 1;
                    self.rows_since_commit += 1;
                }
                Item::Commit {
                    commit_lsn,
                    end_lsn,
                } => {
                    self.last_commit = Some((commit_lsn, end_lsn));
                    self.rows_since_commit = 0;
                    if self.copy.is_none() {
                        // Nothing stored and nothing open: replaying it would store nothing.
                        self.durable.send_if_modified(|d| bump(d, end_lsn));
                    } else if self.rx.is_empty() || self.rows_in_group >= GROUP_ROWS {
                        self.flush().await?;
                    }
                }
            }
        }
        // The front is gone (shutdown): finish the open write if it ends at a source commit.
        if self.copy.is_some() && self.rows_since_commit == 0 && self.last_commit.is_some() {
            self.flush().await?;
        }
        Ok(())
    }

    async fn open(&mut self) -> Result<(), IngestError> {
        if self.sequences.is_none() {
            let rows = self
                .client
                .query(
                    &format!(
                        "SELECT subscription_id, last_sequence FROM {}",
                        self.schema.table("sequences")
                    ),
                    &[],
                )
                .await?;
            self.sequences = Some(
                rows.iter()
                    .map(|r| (Arc::from(r.get::<_, &str>(0)), r.get(1)))
                    .collect(),
            );
        }
        self.client.batch_execute("BEGIN").await?;
        let sink = self
            .client
            .copy_in(&format!(
                "COPY {} (subscription_id, event_id, event, ordering_key, payload, commit_lsn, sequence) FROM STDIN (FORMAT binary)",
                self.schema.table("deliveries")
            ))
            .await?;
        let types = [
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
        ];
        self.copy = Some(Box::pin(BinaryCopyInWriter::new(sink, &types)));
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), IngestError> {
        let (Some(mut copy), Some((commit_lsn, end_lsn))) = (self.copy.take(), self.last_commit)
        else {
            return Ok(());
        };
        copy.as_mut().finish().await?;
        let (subs, last): (Vec<&str>, Vec<i64>) =
            self.sequences_dirty.iter().map(|(s, n)| (&**s, *n)).unzip();
        self.client
            .execute(
                &format!(
                    "INSERT INTO {} (subscription_id, last_sequence)
                     SELECT * FROM unnest($1::text[], $2::bigint[])
                     ON CONFLICT (subscription_id) DO UPDATE SET last_sequence = EXCLUDED.last_sequence",
                    self.schema.table("sequences")
                ),
                &[&subs, &last],
            )
            .await?;
        self.sequences_dirty.clear();
        self.client
            .execute(
                &format!(
                    "INSERT INTO {} (slot, commit_lsn) VALUES ($1, $2)
                     ON CONFLICT (slot) DO UPDATE SET commit_lsn = $2, updated_at = now()",
                    self.schema.table("checkpoint")
                ),
                &[&self.slot, &(commit_lsn.0 as i64)],
            )
            .await?;
        self.client.batch_execute("COMMIT").await?;
        self.checkpoint = commit_lsn;
        self.durable.send_if_modified(|d| bump(d, end_lsn));
        self.total_rows += self.rows_in_group;
        if let Some(m) = &self.hooks.metrics {
            m.add_enqueued(self.rows_in_group);
        }
        if let Some(w) = &self.hooks.wake {
            w.send_modify(|n| *n = n.wrapping_add(1));
        }
        debug!(commit_lsn = %commit_lsn, rows = self.rows_in_group, "stored");
        self.rows_in_group = 0;
        self.log_progress();
        Ok(())
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
