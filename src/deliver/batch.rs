//! The shared scheduler's database side: a few tasks claim and record for all subscriptions,
//! each in one statement per batch, instead of a task and a connection per subscription.
//!
//! Guarantees:
//! - the number of outbox connections delivery uses does not grow with the number of
//!   subscriptions: [`CLAIMERS`] + [`RECORDERS`] statements run at a time, plus the ownership
//!   session and the supervisor's reading; every pool wait is bounded ([`Engine::conn`]);
//! - a request is answered exactly once, with its own rows or its batch's error; an error is
//!   retryable and the pump that asked logs it with its subscription;
//! - the tasks end when every pump (and the supervisor) has dropped its handle, so the pumps'
//!   last results are recorded before ownership is given up.

use super::DeliverError;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinSet;

use super::worker::Engine;
use crate::outbox::queue::{Answer, Recorded, Run, TailWant, Want, CLAIM_BATCH};

/// Claim statements running at a time.
pub const CLAIMERS: usize = 2;
/// Record statements running at a time.
pub const RECORDERS: usize = 2;
/// Results recorded by one statement, at most (whole requests: one may exceed it alone).
const RECORD_BATCH: usize = 4096;

pub struct ClaimReq {
    pub sub: String,
    pub want: i64,
    pub held: Vec<i64>,
    /// Read in id order after this id ([`crate::outbox::queue::Queue::claim_tail_many`]);
    /// `held` is then unused.
    pub after: Option<i64>,
    pub reply: oneshot::Sender<Result<Answer, DeliverError>>,
}

pub struct RecordReq {
    pub sub: String,
    pub batch: Vec<Recorded>,
    /// Runs of the delivered cursor (`crate::deliver::cursor`), in sequence order.
    pub runs: Vec<Run>,
    pub reply: oneshot::Sender<Result<Written, DeliverError>>,
}

/// What a record request got written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Results written on their rows.
    pub rows: u64,
    /// Every run was written.
    pub runs: bool,
}

/// What a pump uses to claim and record; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    claims: mpsc::UnboundedSender<ClaimReq>,
    records: mpsc::UnboundedSender<RecordReq>,
}

impl Batcher {
    /// Starts the claim and record tasks on `tasks`.
    pub fn start(engine: Arc<Engine>, tasks: &mut JoinSet<()>) -> Batcher {
        let (claims, claim_rx) = mpsc::unbounded_channel();
        let (records, record_rx) = mpsc::unbounded_channel();
        let claim_rx = Arc::new(Mutex::new(claim_rx));
        let record_rx = Arc::new(Mutex::new(record_rx));
        for _ in 0..CLAIMERS {
            tasks.spawn(claim_loop(engine.clone(), claim_rx.clone()));
        }
        for _ in 0..RECORDERS {
            tasks.spawn(record_loop(engine.clone(), record_rx.clone()));
        }
        Batcher { claims, records }
    }

    /// Asks for up to `want` due rows of `sub`: with `after`, the pending rows after that id
    /// in id order; otherwise the heads of their keys, leaving out `held`.
    pub fn claim(
        &self,
        sub: String,
        want: i64,
        held: Vec<i64>,
        after: Option<i64>,
    ) -> oneshot::Receiver<Result<Answer, DeliverError>> {
        let (reply, rx) = oneshot::channel();
        let _ = self.claims.send(ClaimReq {
            sub,
            want,
            held,
            after,
            reply,
        });
        rx
    }

    /// Records `batch` and `runs` of `sub`; the answer says what was written. A recorder that
    /// is gone drops the request, which the receiver sees as a closed channel.
    pub fn record(
        &self,
        sub: String,
        batch: Vec<Recorded>,
        runs: Vec<Run>,
    ) -> oneshot::Receiver<Result<Written, DeliverError>> {
        let (reply, rx) = oneshot::channel();
        let _ = self.records.send(RecordReq {
            sub,
            batch,
            runs,
            reply,
        });
        rx
    }
}

/// Takes one request (waiting), then whatever else is queued, up to `fits`.
async fn next_batch<T>(
    rx: &Mutex<mpsc::UnboundedReceiver<T>>,
    fits: impl Fn(&[T]) -> bool,
) -> Option<Vec<T>> {
    let mut rx = rx.lock().await;
    let mut batch = vec![rx.recv().await?];
    while fits(&batch) {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
    Some(batch)
}

async fn claim_loop(engine: Arc<Engine>, rx: Arc<Mutex<mpsc::UnboundedReceiver<ClaimReq>>>) {
    while let Some(reqs) = next_batch(&rx, |b| b.len() < CLAIM_BATCH).await {
        let (tail, heads): (Vec<ClaimReq>, Vec<ClaimReq>) =
            reqs.into_iter().partition(|r| r.after.is_some());
        let result = async {
            let client = engine.conn().await?;
            let mut answers = HashMap::new();
            if !heads.is_empty() {
                let wants: Vec<Want> = heads
                    .iter()
                    .map(|r| Want {
                        subscription: r.sub.clone(),
                        limit: r.want,
                    })
                    .collect();
                let held: Vec<i64> = heads.iter().flat_map(|r| r.held.iter().copied()).collect();
                answers = engine
                    .queue
                    .claim_many(&client, &wants, &held, engine.worker)
                    .await?;
            }
            if !tail.is_empty() {
                let wants: Vec<TailWant> = tail
                    .iter()
                    .map(|r| TailWant {
                        subscription: r.sub.clone(),
                        limit: r.want,
                        after: r.after.unwrap_or(0),
                    })
                    .collect();
                let more = engine
                    .queue
                    .claim_tail_many(&client, &wants, engine.worker)
                    .await?;
                answers.extend(more);
            }
            Ok::<_, DeliverError>(answers)
        }
        .await;
        match result {
            Ok(mut answers) => {
                for r in heads.into_iter().chain(tail) {
                    // No answer: this instance does not own the subscription (any more).
                    let answer = answers.remove(&r.sub).unwrap_or_else(Answer::not_owned);
                    let _ = r.reply.send(Ok(answer));
                }
            }
            Err(e) => {
                for r in heads.into_iter().chain(tail) {
                    let _ = r.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

async fn record_loop(engine: Arc<Engine>, rx: Arc<Mutex<mpsc::UnboundedReceiver<RecordReq>>>) {
    let fits = |b: &[RecordReq]| {
        b.iter()
            .map(|r| r.batch.len() + r.runs.len())
            .sum::<usize>()
            < RECORD_BATCH
    };
    while let Some(reqs) = next_batch(&rx, fits).await {
        let rows: Vec<(&str, &Recorded)> = reqs
            .iter()
            .flat_map(|r| r.batch.iter().map(move |rec| (r.sub.as_str(), rec)))
            .collect();
        let runs: Vec<(&str, &Run)> = reqs
            .iter()
            .flat_map(|r| r.runs.iter().map(move |run| (r.sub.as_str(), run)))
            .collect();
        let result = async {
            let client = engine.conn().await?;
            // Both go out together on the one connection (pipelined). They never touch the
            // same rows: a run covers only rows whose own records were confirmed, or none.
            futures_util::future::try_join(
                engine.queue.record_many(&client, &rows, engine.worker),
                engine.queue.record_runs(&client, &runs, engine.worker),
            )
            .await
            .map_err(DeliverError::from)
        }
        .await;
        drop((rows, runs));
        match result {
            Ok((written, runs_written)) => {
                let written: HashSet<i64> = written.into_iter().collect();
                let runs_written: HashSet<(String, i64)> = runs_written.into_iter().collect();
                for r in reqs {
                    let n = r.batch.iter().filter(|c| written.contains(&c.id)).count();
                    let runs = r
                        .runs
                        .iter()
                        .all(|run| runs_written.contains(&(r.sub.clone(), run.last)));
                    let _ = r.reply.send(Ok(Written {
                        rows: n as u64,
                        runs,
                    }));
                }
            }
            Err(e) => {
                for r in reqs {
                    let _ = r.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
