//! The source loop: replication stream → decode → a [`Sink`], with standby status feedback.
//!
//! Guarantees (ARCHITECTURE.md invariant 2):
//! - the flush position reported to Postgres is what the sink says is durable, never more, and
//!   it never moves backwards;
//! - when no transaction is open and the sink has nothing in flight, the position follows the
//!   keepalives' `wal_end`, so churn in unpublished tables does not pin WAL;
//! - status updates go out when the server asks and at least every `status_interval`, well inside
//!   `wal_sender_timeout`;
//! - with a [`Fence`], a position is reported only once the fence allows it, i.e. once its owner
//!   recorded it where a later start can compare the slot against it (the outbox's slot fence,
//!   issue #18): a slot confirmed past it was moved by someone else;
//! - cancellation is checked first in the loop; on it the loop sends a final status and ends the
//!   copy stream cleanly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::conn::{ReplicationEvent, ReplicationStream};
use super::decode::{ChangeDecoder, Decoded};
use super::error::SourceError;
use crate::model::change::RowChange;
use crate::model::Lsn;

/// Where decoded changes go. `commit` returns the LSN up to which everything is durable.
#[allow(async_fn_in_trait)]
pub trait Sink {
    /// The sink's own layer error; source errors convert into it.
    type Error: From<SourceError>;
    async fn begin(&mut self, final_lsn: Lsn, commit_ts: i64) -> Result<(), Self::Error>;
    async fn change(&mut self, change: RowChange) -> Result<(), Self::Error>;
    async fn commit(&mut self, commit_lsn: Lsn, end_lsn: Lsn) -> Result<Lsn, Self::Error>;
    /// A transactional logical message, between `begin` and `commit` of its transaction.
    async fn message(&mut self, _prefix: &str, _content: &[u8]) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Durable position now (a sink that stores in the background moves it later than commit).
    fn durable(&self) -> Lsn {
        Lsn::ZERO
    }
    /// True when every committed transaction handed over is durable.
    fn idle(&self) -> bool {
        true
    }
    /// Fails when the sink can no longer store anything (its database went away while no
    /// change arrived), so the stream is dropped instead of being kept alive by keepalive
    /// replies: a server shutting down waits for its walsenders, and must not wait for us.
    async fn check(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Stops accepting work, finishes what is complete, and returns the final durable position.
    async fn close(&mut self) -> Result<Lsn, Self::Error> {
        Ok(self.durable())
    }
}

/// The highest position the slot may be confirmed at: what the owner recorded durably.
/// The loop says what it wants ([`Fence::wanted`]); the owner records it, then allows it.
#[derive(Debug, Default)]
pub struct Fence {
    allowed: AtomicU64,
    wanted: AtomicU64,
    wake: tokio::sync::Notify,
    /// Notified whenever `allowed` rises.
    raised: tokio::sync::Notify,
    /// Asks the owner to record what is wanted now, not at its next round.
    urgent: tokio::sync::Notify,
}

impl Fence {
    pub fn new(allowed: Lsn) -> Arc<Fence> {
        Arc::new(Fence {
            allowed: AtomicU64::new(allowed.0),
            wanted: AtomicU64::new(allowed.0),
            wake: tokio::sync::Notify::new(),
            raised: tokio::sync::Notify::new(),
            urgent: tokio::sync::Notify::new(),
        })
    }
    pub fn allowed(&self) -> Lsn {
        Lsn(self.allowed.load(Ordering::Acquire))
    }
    pub fn wanted(&self) -> Lsn {
        Lsn(self.wanted.load(Ordering::Acquire))
    }
    /// Raises what may be reported (after it was recorded).
    pub fn allow(&self, lsn: Lsn) {
        self.allowed.fetch_max(lsn.0, Ordering::AcqRel);
        self.raised.notify_waiters();
    }
    /// Returns when someone needs the wanted position recorded at once (a stop).
    pub async fn urgent(&self) {
        self.urgent.notified().await
    }
    /// On stop: asks for `lsn` to be recorded now and waits until it is, at most `limit`, so
    /// that a clean stop confirms everything stored (a later start replays less).
    async fn settle(&self, lsn: Lsn, limit: Duration) {
        self.want(lsn);
        self.urgent.notify_one();
        let reached = async {
            loop {
                let raised = self.raised.notified();
                tokio::pin!(raised);
                raised.as_mut().enable();
                if self.allowed() >= lsn {
                    return;
                }
                raised.await;
            }
        };
        let _ = tokio::time::timeout(limit, reached).await;
    }
    fn want(&self, lsn: Lsn) {
        if self.wanted.fetch_max(lsn.0, Ordering::AcqRel) < lsn.0 {
            self.wake.notify_one();
        }
    }
    /// Returns once more is wanted than allowed.
    pub async fn more_wanted(&self) {
        while self.wanted() <= self.allowed() {
            self.wake.notified().await;
        }
    }
}

pub struct SourceLoop {
    pub stream: ReplicationStream,
    pub decoder: ChangeDecoder,
    /// Regular SQL connection, used by the decoder for catalog lookups.
    pub client: Client,
    pub status_interval: Duration,
    /// Last position reported as flushed.
    pub flushed: Lsn,
    /// With nothing received for this long the connection is presumed dead (a silently dropped
    /// path): the loop ends with a retryable timeout. While the server is alive something
    /// arrives at least every `status_interval`, because idle status updates ask for a reply.
    pub receive_timeout: Duration,
    /// Limits what is reported to what its owner recorded; None: no limit.
    pub fence: Option<Arc<Fence>>,
}

/// The receive timeout for a replication stream: the server's `wal_sender_timeout` (the time
/// after which the server, too, gives up on a silent peer), 60 s when it is disabled, never less
/// than 2 s.
pub async fn receive_timeout(client: &Client) -> Result<Duration, SourceError> {
    let ms: i64 = client
        .query_one(
            "SELECT setting::int8 FROM pg_settings WHERE name = 'wal_sender_timeout'",
            &[],
        )
        .await?
        .get(0);
    Ok(match ms {
        ms if ms <= 0 => Duration::from_secs(60),
        ms => Duration::from_millis(ms as u64).max(Duration::from_secs(2)),
    })
}

impl SourceLoop {
    pub async fn run<S: Sink>(
        mut self,
        sink: &mut S,
        cancel: &CancellationToken,
    ) -> Result<Lsn, S::Error> {
        let mut tick = tokio::time::interval(self.status_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut in_tx = false;
        let mut durable = self.flushed;
        let mut last_received = tokio::time::Instant::now();
        let result = loop {
            tokio::select! {
                biased;
                // 1. Stopping wins over everything: the open source transaction is simply not
                //    confirmed, so it is streamed again next time.
                _ = cancel.cancelled() => break Ok(()),
                // 2. The stream; decoding happens here and may query the catalog.
                ev = self.stream.next() => {
                    last_received = tokio::time::Instant::now();
                    match ev {
                        Err(e) => break Err(e.into()),
                        Ok(None) => break Err(SourceError::StreamEnded("the server closed the copy stream".into()).into()),
                        Ok(Some(ReplicationEvent::XLogData { data, .. })) => {
                            match self.decoder.decode(&self.client, data).await {
                                Err(e) => break Err(e.into()),
                                Ok(Decoded::Begin { final_lsn, commit_ts, .. }) => {
                                    in_tx = true;
                                    if let Err(e) = sink.begin(final_lsn, commit_ts).await { break Err(e) }
                                }
                                Ok(Decoded::Change(c)) => {
                                    if let Err(e) = sink.change(c).await { break Err(e) }
                                }
                                Ok(Decoded::Commit { commit_lsn, end_lsn, .. }) => {
                                    in_tx = false;
                                    match sink.commit(commit_lsn, end_lsn).await {
                                        Ok(lsn) => durable = durable.max(lsn),
                                        Err(e) => break Err(e),
                                    }
                                }
                                Ok(Decoded::Message { prefix, content }) => {
                                    if let Err(e) = sink.message(&prefix, &content).await { break Err(e) }
                                }
                                Ok(Decoded::Other) => {}
                            }
                        }
                        Ok(Some(ReplicationEvent::Keepalive { wal_end, reply_requested, .. })) => {
                            durable = durable.max(sink.durable());
                            if !in_tx && sink.idle() {
                                durable = durable.max(wal_end);
                            }
                            if reply_requested {
                                if let Err(e) = self.report(durable, false).await { break Err(e.into()) }
                            }
                        }
                    }
                }
                // 3. Periodic feedback so the server neither times us out nor keeps WAL for us.
                //    When idle, ask for a keepalive: its wal_end lets an idle slot move on.
                _ = tick.tick() => {
                    if last_received.elapsed() > self.receive_timeout {
                        break Err(SourceError::Timeout(format!(
                            "nothing received from the server for {} s (wal_sender_timeout); the connection is presumed dead",
                            self.receive_timeout.as_secs()
                        )).into());
                    }
                    if let Err(e) = sink.check().await { break Err(e) }
                    durable = durable.max(sink.durable());
                    if let Err(e) = self.report(durable, !in_tx).await { break Err(e.into()) }
                }
            }
        };
        if result.is_ok() {
            durable = durable.max(sink.close().await?);
            if let Some(f) = &self.fence {
                f.settle(durable, Duration::from_secs(3)).await;
            }
            self.report(durable, false).await?;
            info!(flushed = %self.flushed, "replication stream stopped");
            self.stream.finish().await?;
        }
        result.map(|_| self.flushed)
    }

    async fn report(&mut self, durable: Lsn, request_reply: bool) -> Result<(), SourceError> {
        let mut flush = durable.max(self.flushed);
        if let Some(f) = &self.fence {
            f.want(flush);
            flush = flush.min(f.allowed()).max(self.flushed);
        }
        self.stream
            .send_status(flush, flush, flush, request_reply)
            .await?;
        if flush != self.flushed {
            debug!(flushed = %flush, "confirmed flush position");
        }
        self.flushed = flush;
        Ok(())
    }
}
