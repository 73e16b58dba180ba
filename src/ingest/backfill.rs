//! Backfills: the existing rows of a subscription's table sent as `READ` deliveries, in
//! primary-key order, chunk by chunk, consistent with the live stream (the watermark method of
//! Netflix's DBLog).
//!
//! For each chunk the runner writes a low watermark through the WAL (a transactional logical
//! message), reads the chunk (one short READ ONLY statement), hands the rendered rows to the
//! [`Exchange`], and writes a high watermark. The ingest sink's
//! [`Watermarks`](super::watermarks::Watermarks) record the keys of the table that change
//! between the two watermarks; at the high watermark it drops the chunk's rows whose key changed
//! (the streamed change is newer) and stores the others, with the chunk's progress, in the
//! outbox transaction of the high watermark's source transaction. While the sink stores a
//! chunk, the runner reads and renders the next one.
//!
//! Guarantees:
//! - for every key, the last event stored reflects the row's latest committed state, and per-key
//!   order holds across backfill and stream events: a chunk row is stored at the high
//!   watermark's place in the stream, and only when no change of its key lies between the
//!   watermarks (a change before the low watermark is already in the row);
//! - exactly once per chunk into the outbox, resumable: a chunk's rows and its progress commit
//!   together (invariant 1); after a crash the backfill continues after the last stored chunk,
//!   re-reading only chunks that were not stored, whose rows keep their event ids
//!   (`evt_bf_<backfill>_<hash of key>`);
//! - a `READ` row has the shape of the table's streamed changes ([`super::read_event`]);
//! - bounded: two chunks per running backfill in memory (one the sink stores, the next one read
//!   and rendered meanwhile, whose high watermark waits for its predecessor to be stored, so
//!   chunks are stored in key order); the keys recorded in a window are capped
//!   ([`MAX_WINDOW_KEYS`](super::watermarks::MAX_WINDOW_KEYS)); a window that overflows, or that
//!   the sink did not see open (it restarted in between), makes the runner read the chunk again,
//!   never store it unchecked;
//! - a backfill runs only while this process streams from the slot (only its sink sees the
//!   watermarks); cancel (the API's DELETE) is seen between chunks and while waiting, at once.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::read_event::ReadShape;
use super::watermarks::{Chunk, Exchange, Outcome};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::EventKind;
use crate::outbox::backfills::{self, Backfill, ChunkRow, Progress, TableInfo};
use crate::outbox::{self, Schema};
use crate::pg::tls;
use crate::route::{Routed, Router};

/// Longest a runner waits for the sink to store a chunk before it reads the chunk again.
const CHUNK_WAIT: Duration = Duration::from_secs(60);
/// How often running backfills are looked for (also woken by the API).
const SCAN_EVERY: Duration = Duration::from_secs(5);
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long after its start a backfill waits for routing to include its subscription.
const ROUTING_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// Everything runners share.
pub struct Backfills {
    pub config: Config,
    pub router: watch::Receiver<Router>,
    pub exchange: Arc<Exchange>,
    pub streaming: Arc<AtomicBool>,
    /// Bumped by the API after a create or cancel.
    pub wake: watch::Receiver<u64>,
    pub metrics: Arc<Metrics>,
    /// The scan's connection, shared with the other background tasks (each running backfill
    /// has its own two while it runs).
    pub background: crate::pg::Background,
}

/// Runs every running backfill (resumed at start) until `cancel`.
pub async fn backfill_loop(b: Arc<Backfills>, cancel: CancellationToken) {
    let schema = Schema::new(b.config.outbox.schema.as_str());
    let mut wake = b.wake.clone();
    let mut runners: HashMap<i64, tokio::task::JoinHandle<()>> = HashMap::new();
    // config.toml's `backfill = true` subscriptions get their backfill once (a reload's new ones:
    // see `reload`); until that statement succeeded, it is tried again at every scan.
    let mut on_create_done = b.config.backfill_on_create().is_empty();
    loop {
        runners.retain(|_, h| !h.is_finished());
        if b.streaming.load(Ordering::Relaxed) {
            match b.background.outbox().await {
                Err(e) => warn!(error = %e, "reading running backfills failed"),
                Ok(c) => {
                    if !on_create_done {
                        match start_on_create(&c, &schema, b.config.backfill_on_create()).await {
                            Ok(()) => on_create_done = true,
                            Err(e) => {
                                warn!(error = %e, "starting the backfills of backfill = true failed")
                            }
                        }
                    }
                    match backfills::running(&c, &schema).await {
                        Ok(list) => {
                            for bf in list {
                                if runners.contains_key(&bf.id) {
                                    continue;
                                }
                                let (b2, cancel2) = (b.clone(), cancel.clone());
                                let id = bf.id;
                                runners.insert(id, tokio::spawn(run_one(b2, bf, cancel2)));
                            }
                        }
                        // Before the first migration the table may not exist yet.
                        Err(e) => warn!(error = %e, "reading running backfills failed"),
                    }
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = woken(&mut wake) => {}
            _ = tokio::time::sleep(SCAN_EVERY) => {}
        }
    }
    for (_, h) in runners {
        let _ = h.await;
    }
}

/// Starts the `backfill = true` backfill of each of `ids` that never had one, and logs those
/// started now; the runners pick them up at their next scan.
pub async fn start_on_create(
    client: &tokio_postgres::Client,
    schema: &Schema,
    ids: &[String],
) -> Result<(), outbox::OutboxError> {
    if ids.is_empty() {
        return Ok(());
    }
    let started = backfills::start_on_create(client, schema, ids).await?;
    for bf in &started {
        info!(backfill = bf.id, subscription = %bf.subscription_id, "backfill started: the subscription is new and has backfill = true");
    }
    info!(
        subscriptions = ids.len(),
        started = started.len(),
        "backfill = true: subscriptions checked"
    );
    Ok(())
}

/// A wake-up from the API; never, once the API is gone.
async fn woken(rx: &mut watch::Receiver<u64>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Why one backfill stopped short of `done`.
#[derive(Debug, thiserror::Error)]
enum RunError {
    /// Retry later (a connection, the stream).
    #[error("{0}")]
    Transient(String),
    /// The backfill failed; the message is stored.
    #[error("{0}")]
    Fatal(String),
}

impl From<outbox::OutboxError> for RunError {
    fn from(e: outbox::OutboxError) -> Self {
        if e.is_retryable() {
            RunError::Transient(e.to_string())
        } else {
            RunError::Fatal(e.to_string())
        }
    }
}

fn from_source(e: tokio_postgres::Error) -> RunError {
    let text = crate::pg::error_text(&e);
    if crate::pg::classify(&e).is_retryable() {
        RunError::Transient(text)
    } else {
        RunError::Fatal(text)
    }
}

async fn run_one(b: Arc<Backfills>, bf: Backfill, cancel: CancellationToken) {
    let id = bf.id;
    let schema = Schema::new(b.config.outbox.schema.as_str());
    let mut runner = Runner::new(b.clone(), bf);
    loop {
        match runner.run(&cancel).await {
            Ok(()) => break,
            Err(RunError::Transient(e)) => {
                warn!(backfill = id, error = %e, "backfill interrupted; retrying");
                if !crate::backoff::sleep_or_cancel(Duration::from_secs(1), &cancel).await {
                    break;
                }
                if !b.streaming.load(Ordering::Relaxed) {
                    // Resumed by the scan once streaming again.
                    break;
                }
            }
            Err(RunError::Fatal(e)) => {
                warn!(backfill = id, error = %e, "backfill failed");
                if let Ok(c) = outbox::connect(&b.config).await {
                    let _ = backfills::finish(&c, &schema, id, Some(&e)).await;
                }
                break;
            }
        }
    }
    b.metrics.forget_backfill(id);
}

struct Runner {
    b: Arc<Backfills>,
    bf: Backfill,
    /// Distinguishes this run's watermarks from those of earlier runs still in the WAL.
    nonce: u64,
    chunk_no: u64,
    /// Said once per run: transactions outlived a chunk's wait for them.
    warned_long_transactions: bool,
}

impl Runner {
    fn new(b: Arc<Backfills>, bf: Backfill) -> Runner {
        Runner {
            b,
            bf,
            nonce: rand::random(),
            chunk_no: 0,
            warned_long_transactions: false,
        }
    }

    async fn run(&mut self, cancel: &CancellationToken) -> Result<(), RunError> {
        let schema = Schema::new(self.b.config.outbox.schema.as_str());
        let outbox_client = outbox::connect(&self.b.config).await?;
        let mut source = tls::connect_sql(&self.b.config.pg_config())
            .await
            .map_err(|e| RunError::Transient(e.to_string()))?;
        // Rows are read as the stream reads them: the server's or the database's own time zone,
        // interval style or bytea output would render values differently.
        crate::source::fidelity::pin_text_output(&source)
            .await
            .map_err(from_source)?;
        let sub = self
            .b
            .router
            .borrow()
            .subscriptions()
            .find(|s| s.id == self.bf.subscription_id)
            .cloned();
        let Some(mut sub) = sub else {
            // A subscription stored a moment ago (an API create with `backfill`, a reload) is
            // routed a moment later.
            if chrono::Utc::now() - self.bf.started_at < ROUTING_GRACE {
                return Err(RunError::Transient(format!(
                    "subscription {:?} is not routed yet",
                    self.bf.subscription_id
                )));
            }
            return Err(RunError::Fatal(format!(
                "subscription {:?} is not routed (deleted, or its table is unavailable)",
                self.bf.subscription_id
            )));
        };
        let table = sub.table.clone();
        let info = backfills::table_info(&source, &table)
            .await
            .map_err(|e| match e {
                backfills::BackfillRefused::Db(e) => RunError::from(e),
                other => RunError::Fatal(other.to_string()),
            })?;
        if self.bf.rows_estimated.is_none() {
            // Started without the API's check (`backfill = true`): estimate now, for progress.
            if let Ok(Some(n)) =
                backfills::check_where(&mut source, &table, self.bf.where_sql.as_deref()).await
            {
                backfills::set_estimate(&outbox_client, &schema, self.bf.id, n).await?;
                self.bf.rows_estimated = Some(n);
            }
        }
        // Every existing row goes to this subscription, whatever events it streams.
        sub.active = true;
        sub.events = vec![EventKind::Insert, EventKind::Update, EventKind::Delete];
        let router = Router::with_project(&self.b.config, [sub]);
        let read = ReadShape::read(&source, &table, &info).await.map_err(|e| {
            let text = format!("reading the columns of {table}: {e}");
            if e.is_retryable() {
                RunError::Transient(text)
            } else {
                RunError::Fatal(text)
            }
        })?;
        let mut wake = self.b.wake.clone();
        let mut last_log = Instant::now();
        let mut rows_at_log = self.bf.rows_done;
        info!(backfill = self.bf.id, subscription = %self.bf.subscription_id, table = %table, rows_done = self.bf.rows_done, "backfill running");
        // The next chunk is read and rendered (its low watermark written) while the sink stores
        // the one before it: reading and rendering take about half of a chunk's time and storing
        // the other half (bench/backfill.sh), on other sessions. Its high watermark is written
        // only once its predecessor is stored, so the sink stores chunks in order; when the
        // predecessor is not stored, the chunk read ahead is dropped and both are read again.
        // With pacing (`pause_ms`) nothing is read ahead: the pause comes between two reads.
        let mut ahead: Option<ReadResult> = None;
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            match backfills::get(
                &outbox_client,
                &schema,
                &self.bf.subscription_id,
                self.bf.id,
            )
            .await?
            {
                Some(now) if now.state == "running" => {}
                _ => {
                    info!(
                        backfill = self.bf.id,
                        "backfill no longer running (cancelled or deleted)"
                    );
                    return Ok(());
                }
            }
            if !self.b.streaming.load(Ordering::Relaxed) {
                return Err(RunError::Transient("the replication stream is down".into()));
            }
            let current = match ahead.take() {
                Some(r) => r,
                None => {
                    let at = (self.bf.last_key.clone(), self.bf.rows_done);
                    self.read(&mut source, &router, &read, &info, at).await?
                }
            };
            let ReadResult::Rows(current) = current else {
                backfills::finish(&outbox_client, &schema, self.bf.id, None).await?;
                info!(
                    backfill = self.bf.id,
                    rows_done = self.bf.rows_done,
                    "backfill done"
                );
                return Ok(());
            };
            // What the chunk completes once stored (its progress, stored with it).
            let Progress {
                last_key,
                rows_done,
                finished,
                ..
            } = current.chunk.progress.clone();
            let waiting = self.hand_over(&mut source, *current).await?;
            if !finished && self.bf.pause_ms == 0 {
                let at = (Some(last_key.clone()), rows_done);
                ahead = Some(self.read(&mut source, &router, &read, &info, at).await?);
            }
            match self
                .wait_stored(waiting, (&outbox_client, &schema), &mut wake)
                .await?
            {
                ChunkResult::Stored => {
                    self.bf.last_key = Some(last_key);
                    self.bf.rows_done = rows_done;
                    self.b.metrics.backfill_progress(
                        self.bf.id,
                        &self.bf.subscription_id,
                        self.bf.rows_done,
                        self.bf.rows_estimated,
                    );
                    if finished {
                        info!(
                            backfill = self.bf.id,
                            rows_done = self.bf.rows_done,
                            "backfill done"
                        );
                        return Ok(());
                    }
                }
                ChunkResult::Again(why) => {
                    ahead = None;
                    info!(
                        backfill = self.bf.id,
                        reason = why,
                        "reading the chunk again"
                    );
                }
                ChunkResult::Woken => {
                    ahead = None;
                    continue;
                }
            }
            if last_log.elapsed() >= LOG_EVERY {
                let rows = self.bf.rows_done - rows_at_log;
                info!(
                    backfill = self.bf.id,
                    rows_done = self.bf.rows_done,
                    rows_estimated = self.bf.rows_estimated,
                    per_sec = (rows as f64 / last_log.elapsed().as_secs_f64()) as u64,
                    "backfill progress"
                );
                last_log = Instant::now();
                rows_at_log = self.bf.rows_done;
            }
            if self.bf.pause_ms > 0 {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = woken(&mut wake) => {}
                    _ = tokio::time::sleep(Duration::from_millis(self.bf.pause_ms as u64)) => {}
                }
            }
        }
    }

    /// Reads and renders the chunk after `after` (`rows_done` rows before it), bracketed by its
    /// low watermark; its high one is written by [`Runner::hand_over`].
    async fn read(
        &mut self,
        source: &mut tokio_postgres::Client,
        router: &Router,
        read: &ReadShape,
        info: &TableInfo,
        (after, rows_done): (Option<Value>, i64),
    ) -> Result<ReadResult, RunError> {
        self.chunk_no += 1;
        let token = format!("{}:{:x}:{}", self.bf.id, self.nonce, self.chunk_no);
        let done = self.b.exchange.register(&token, read.shape.table.clone());
        let registration = Registration {
            exchange: self.b.exchange.clone(),
            token,
        };
        let t0 = Instant::now();
        backfills::emit_watermark(source, &format!("low:{}", registration.token))
            .await
            .map_err(from_source)?;
        // Everything before the low watermark in the WAL must be visible to the chunk's read.
        let still_open = backfills::settle_commits(source, &read.shape.table)
            .await
            .map_err(from_source)?;
        if !still_open.is_empty() && !self.warned_long_transactions {
            // Once per run: each chunk keeps waiting for them, and the operator should know why.
            self.warned_long_transactions = true;
            let open: Vec<String> = still_open.iter().map(ToString::to_string).collect();
            warn!(
                backfill = self.bf.id,
                table = %read.shape.table,
                open = %open.join(", "),
                "transactions that wrote to the table were still open 5 s after a chunk's low watermark; each chunk waits up to 5 s for those open at its start: end them (COMMIT or ROLLBACK; COMMIT PREPARED or ROLLBACK PREPARED for a prepared one) to let the backfill run at full speed"
            );
        }
        let t_settled = t0.elapsed();
        // Each row is rendered as it arrives, while the server produces the next ones.
        let now_pg =
            chrono::Utc::now().timestamp_micros() - crate::model::change::PG_EPOCH_UNIX_MICROS;
        let mut rows = Vec::with_capacity(self.bf.chunk_size.clamp(0, 10_000) as usize);
        let mut last_record = Map::new();
        let mut failed = None;
        let mut render = Duration::ZERO;
        let backfill = self.bf.id;
        let n = backfills::read_chunk(
            source,
            &read.shape.table,
            info,
            &read.chunk_columns(self.bf.where_sql.as_deref()),
            after.as_ref(),
            self.bf.chunk_size,
            |text| {
                let t = Instant::now();
                let rendered = render_row(read, router, backfill, &text, now_pg, &mut rows);
                render += t.elapsed();
                match rendered {
                    Ok(record) => {
                        last_record = record;
                        ControlFlow::Continue(())
                    }
                    Err(e) => {
                        failed = Some(e);
                        ControlFlow::Break(())
                    }
                }
            },
        )
        .await
        .map_err(from_source)?;
        if let Some(e) = failed {
            return Err(RunError::Fatal(e));
        }
        if n == 0 {
            return Ok(ReadResult::Empty);
        }
        let t_read = t0.elapsed();
        let last_key: Map<String, Value> = info
            .key
            .iter()
            .map(|(c, _)| {
                (
                    c.clone(),
                    last_record.get(c).cloned().unwrap_or(Value::Null),
                )
            })
            .collect();
        let progress = Progress {
            backfill_id: self.bf.id,
            last_key: Value::Object(last_key),
            rows_done: rows_done + n as i64,
            finished: n < self.bf.chunk_size as usize,
        };
        // Where a chunk's time goes, for tuning (`WALHOOK_LOG=walhook::ingest::backfill=debug`);
        // rendering happens during the read, and is part of `read_ms`.
        debug!(
            backfill = self.bf.id,
            rows = n,
            settled_ms = t_settled.as_millis() as u64,
            read_ms = (t_read - t_settled).as_millis() as u64,
            render_ms = render.as_millis() as u64,
            "backfill chunk read"
        );
        Ok(ReadResult::Rows(Box::new(ReadChunk {
            registration,
            done,
            chunk: Chunk { rows, progress },
        })))
    }

    /// Hands a read chunk to the sink and writes its high watermark, where the sink stores it.
    async fn hand_over(
        &self,
        source: &mut tokio_postgres::Client,
        c: ReadChunk,
    ) -> Result<Waiting, RunError> {
        self.b.exchange.fill(&c.registration.token, c.chunk);
        backfills::emit_watermark(source, &format!("high:{}", c.registration.token))
            .await
            .map_err(from_source)?;
        Ok(Waiting {
            _registration: c.registration,
            done: c.done,
            since: Instant::now(),
        })
    }

    /// Waits for the sink to store a handed-over chunk (a cancel stops the wait at once).
    async fn wait_stored(
        &self,
        mut w: Waiting,
        (outbox_client, schema): (&tokio_postgres::Client, &Schema),
        wake: &mut watch::Receiver<u64>,
    ) -> Result<ChunkResult, RunError> {
        let deadline = tokio::time::Instant::now() + CHUNK_WAIT;
        let outcome = loop {
            tokio::select! {
                o = &mut w.done => break o,
                _ = woken(wake) => {
                    // A cancel stops at once; anything else (another backfill) does not matter.
                    let now = backfills::get(outbox_client, schema, &self.bf.subscription_id, self.bf.id).await?;
                    if now.is_none_or(|b| b.state != "running") {
                        return Ok(ChunkResult::Woken);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(ChunkResult::Again("the chunk was not stored in time")),
            }
        };
        debug!(
            backfill = self.bf.id,
            waited_ms = w.since.elapsed().as_millis() as u64,
            "backfill chunk stored"
        );
        Ok(match outcome {
            Ok(Outcome::Stored) => ChunkResult::Stored,
            Ok(Outcome::Retry(why)) => ChunkResult::Again(why),
            Err(_) => ChunkResult::Again("the outbox writer stopped"),
        })
    }
}

/// Renders one row read by a chunk as the subscription's READ deliveries (appended to `out`);
/// returns the row's record, whose key columns say where the next chunk starts.
fn render_row(
    read: &ReadShape,
    router: &Router,
    backfill: i64,
    text: &ChunkRow<'_>,
    now_pg: i64,
    out: &mut Vec<Routed>,
) -> Result<Map<String, Value>, String> {
    let change = read.change(text, now_pg)?;
    router.route_read(&change, backfill, out);
    Ok(change.record)
}

/// A chunk's token in the [`Exchange`]; dropping it withdraws the chunk (the sink then forgets
/// its window and, at its high watermark, finds nothing to store).
struct Registration {
    exchange: Arc<Exchange>,
    token: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.exchange.abandon(&self.token);
    }
}

/// A chunk read and rendered, its low watermark written.
struct ReadChunk {
    registration: Registration,
    done: oneshot::Receiver<Outcome>,
    chunk: Chunk,
}

enum ReadResult {
    Rows(Box<ReadChunk>),
    /// Nothing after the last key: the backfill is done.
    Empty,
}

/// A chunk handed to the sink, until it is stored (or given up).
struct Waiting {
    _registration: Registration,
    done: oneshot::Receiver<Outcome>,
    since: Instant,
}

enum ChunkResult {
    Stored,
    Again(&'static str),
    /// The API changed something (a cancel?): look at the state again.
    Woken,
}
