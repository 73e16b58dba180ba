//! The delivery pump: one per active subscription (kept by [`super::supervisor`]), deciding what
//! to send and when, with a shared scheduler ([`super::batch`], [`super::owner`]) that talks to
//! the outbox for all of them.
//!
//! Guarantees (on top of [`crate::outbox::queue`]'s):
//! - the cost does not grow with the number of subscriptions: a pump is a task holding no
//!   database connection; claims and records for many subscriptions go through a few shared
//!   tasks, one statement per batch, on a small pool (`delivery.pool_size`) whose every wait is
//!   bounded ([`Engine::conn`]): a wait that runs out is a retryable error, logged with the
//!   subscription, never a hang;
//! - isolation: each subscription has its own in-flight cap (`max_in_flight`), breaker and
//!   queue, so a slow or dead endpoint holds only its own slots;
//! - a pump sends only while this instance owns its subscription ([`super::owner`]: a live
//!   session lock, with the lease as fallback); on losing it, it drops its queue and stands by;
//! - the happy path writes almost nothing per delivery: while the pump holds every unfinished
//!   row, first-attempt successes are recorded as runs of its delivered cursor
//!   (`super::cursor`), one row per record batch, instead of one row update each;
//! - the happy path is served from memory: after ingest commits, it hands the stored rows to
//!   their pumps ([`crate::outbox::handoff`]); a pump whose last claim showed that the outbox
//!   holds nothing else for it (nothing blocked, nothing waiting for a retry) sends them without
//!   reading them back ("memory mode"). Anything unexpected (a gap in the sequence numbers, a
//!   full handoff buffer, a failure, an open breaker, lost ownership) sends it back to claiming
//!   from the outbox ("outbox mode"), which stays the truth; a pump also claims every
//!   `poll_interval` in either mode, which finds what no handoff announced (replays, rows
//!   another instance stored);
//! - rows of a key go out one at a time in commit order in both modes ([`super::lanes`]); a
//!   subscription with `batch` sends several rows per request ([`super::batching`]), a key's
//!   consecutive rows together, one request per key at a time;
//! - an open breaker sends nothing and forgets its queue without consuming attempts;
//! - on shutdown, requests in flight finish (bounded by `timeout`) and are recorded, then
//!   ownership is given up; nothing is marked delivered without a 2xx.

mod claim;

use super::DeliverError;
use foldhash::{HashMap, HashSet, HashSetExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, Notify};

use super::lanes::Lanes;
use crate::outbox::handoff::{Handoff, Slot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::attempt::{attempt_batch, attempt_one, report_breaker, Done};
use super::batch::{Batcher, Written};
use super::batching::{self, Gatherer};
use super::cursor::Cursor;
use super::decide::Decided;
use super::http::host_of;
use super::http::HttpSender;
use super::policy::{Breaker, Permit, RetryPolicy};
use super::rate;
use crate::backoff::{sleep_or_cancel, Backoff};
use crate::config::DeliveryConfig;
use crate::metrics::Metrics;
use crate::outbox::queue::{self, Answer, Claimed, Queue};
use crate::outbox::subscriptions::Stored;
use crate::outbox::Schema;

/// What every pump shares.
pub struct Engine {
    pub schema: Schema,
    pub queue: Queue,
    pub pool: deadpool_postgres::Pool,
    pub config: DeliveryConfig,
    pub retry: RetryPolicy,
    pub sender: HttpSender,
    pub metrics: Arc<Metrics>,
    /// Where ingest hands each commit's rows to this process's pumps.
    pub handoff: Arc<Handoff>,
    /// Notified when a subscription changed here (410 Gone), so routing is reloaded.
    pub changed: Arc<Notify>,
    /// This instance: it owns its subscriptions, and records results, under this id.
    pub worker: Uuid,
    /// Traces of each request (off unless `[telemetry]` is set).
    pub telemetry: crate::telemetry::Telemetry,
}

/// The longest any delivery task waits for a pooled outbox connection.
pub const POOL_WAIT: Duration = Duration::from_secs(5);

impl Engine {
    pub fn new(
        schema: Schema,
        pool: deadpool_postgres::Pool,
        config: DeliveryConfig,
        sender: HttpSender,
        metrics: Arc<Metrics>,
        handoff: Arc<Handoff>,
        changed: Arc<Notify>,
    ) -> Engine {
        Engine {
            queue: Queue::new(&schema),
            schema,
            pool,
            retry: RetryPolicy::new(config.retry_schedule.iter().map(|d| d.0).collect()),
            config,
            sender,
            metrics,
            handoff,
            changed,
            worker: Uuid::new_v4(),
            telemetry: crate::telemetry::Telemetry::off(),
        }
    }

    /// A pooled outbox connection, waiting at most [`POOL_WAIT`]: a pool that stays exhausted
    /// is an error the caller retries, never a hang.
    pub async fn conn(&self) -> Result<deadpool_postgres::Object, DeliverError> {
        match tokio::time::timeout(POOL_WAIT, self.pool.get()).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(DeliverError::Outbox {
                message: crate::pg::pool_error_text(&e),
                retryable: crate::pg::pool_error_is_retryable(&e),
            }),
            Err(_) => Err(DeliverError::PoolTimeout {
                waited_s: POOL_WAIT.as_secs(),
                pool_size: self.config.pool_size,
            }),
        }
    }
}

/// Rows leased per in-flight slot: enough that a claim (one round trip) feeds many sends.
const PREFETCH: usize = 4;

/// Rows a pump in memory mode holds unsent, at least (else `PREFETCH × max_in_flight`); beyond
/// it they wait in its handoff slot (see `outbox::handoff`).
const MEMORY_QUEUE_MIN: usize = 4096;
/// A pump in memory mode takes rows from its slot once it has room for this many.
const TAKE_MIN: usize = 256;

/// A finished attempt waits at most this long for others to be recorded with it.
const RECORD_DELAY: Duration = Duration::from_millis(2);
/// Decided results a pump keeps waiting for a record statement, per in-flight slot (and
/// event of a batch), before it stops sending ([`Pump::start_sends`]).
const UNRECORDED_PER_SLOT: usize = 4;
/// ... and at least this many, so small `max_in_flight` values still record in batches.
const RECORD_MIN: usize = 4096;

/// Successes waiting behind an unfinished delivery for a run of the delivered cursor, at
/// least, before they are recorded on their rows instead ([`Cursor::spill`]).
const SPILL_MIN: usize = 256;

/// How often the supervisor re-reads the subscriptions table when nobody told it to.
pub(super) const RESCAN: Duration = Duration::from_secs(5);

/// Results being written by the shared recorder while the pump goes on sending.
struct Recording {
    ids: Vec<i64>,
    /// Deliveries the runs being written cover.
    covered: Vec<i64>,
    /// Failed attempts among them (see [`Pump::failed_unrecorded`]).
    failed: usize,
    /// The receiver answered 410 Gone to one of them.
    gone: bool,
    reply: oneshot::Receiver<Result<Written, DeliverError>>,
}

/// A claim in progress, answered by the shared claimer.
struct Claiming {
    want: usize,
    reply: oneshot::Receiver<Result<Answer, DeliverError>>,
    /// A read in id order, started at this [`Pump::epoch`].
    tail_epoch: Option<u64>,
}

/// The backstop of [`Pump::timer_claims`]: 60 polls, spread ±25% so that pumps started together
/// do not claim together.
fn backstop(poll: Duration) -> Duration {
    use rand::Rng;
    poll.mul_f64(60.0 * rand::thread_rng().gen_range(0.75..1.25))
}

/// Where a pump's next rows come from (see [`claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Claimed from the outbox: the heads of their keys, leaving out what the pump holds.
    Outbox,
    /// Read from the outbox in id order after `after`: the pump holds every unfinished row up
    /// to it.
    Tail { after: i64 },
    /// Handed over by ingest; `next` is the sequence number expected next, `last` the greatest
    /// id taken.
    Memory { next: i64, last: i64 },
}

pub(super) struct Pump {
    engine: Arc<Engine>,
    batcher: Batcher,
    /// What this instance owns, published by [`super::owner::run`].
    owned_rx: watch::Receiver<bool>,
    /// Whether this instance owns the subscription, as of the last published set.
    owns: bool,
    sub_rx: watch::Receiver<Arc<Stored>>,
    sub: Arc<Stored>,
    breaker: Breaker,
    /// Claimed or handed over, not yet recorded: ready, waiting behind their key, in flight.
    lanes: Lanes,
    /// First-attempt successes recorded as runs (sql/015) while the pump holds everything.
    cursor: Cursor,
    /// This subscription's handoff slot.
    slot: Arc<Slot>,
    mode: Mode,
    /// Ids taken from the handoff since the running claim was started: its snapshot may show
    /// them unfinished after they were sent and recorded, so its answer must not bring them
    /// back.
    handed_during_claim: HashSet<i64>,
    claim_running: bool,
    /// The running claim was started in outbox mode, and nothing sent the pump back to the
    /// outbox since: its answer may switch to memory mode.
    may_switch: bool,
    /// Results handed to the recorder and not confirmed yet (one write at a time, so a pump's
    /// results reach the outbox in order).
    recording: Option<Recording>,
    /// Attempts that failed and are not recorded yet: the outbox does not show them failed,
    /// and holding them hides them from a claim's count, so no claim may switch to memory mode
    /// meanwhile (rows of their keys must wait in the outbox). Nor may a claim run: a claim
    /// leaves out the rows behind a failure only once the outbox shows it (sql/018).
    failed_unrecorded: usize,
    /// The keys whose row failed while the running claim ran: its snapshot may not show those
    /// failures, so its rows of those keys could pass the failed rows; they are left to the
    /// outbox (no other key's rows are at risk: a claim starts with every failure recorded).
    failed_during_claim: HashSet<String>,
    /// One entry per request: its rows' results.
    in_flight: JoinSet<Vec<Done>>,
    /// Results decided as their attempts finished, not handed to the recorder yet.
    decided: Decided,
    /// The last claim filled its limit: there is probably more due right now.
    more_due: bool,
    /// When the last claim started.
    last_claim: Instant,
    /// How long a pump taking rows from memory goes without reading the outbox (see
    /// [`Pump::timer_claims`]).
    backstop: Duration,
    /// The subscription's `rate_limit`.
    rate: rate::Gate,
    /// The last `start_sends` stopped for the rate limit (claims go on meanwhile).
    rate_held: bool,
    /// When a partial batch goes out (subscriptions with `batch` only).
    gather: Gatherer,
    /// Counts the returns to outbox mode: a read in id order started before one is dropped.
    epoch: u64,
    /// When a read in id order was last refused (failed rows wait for a retry).
    tail_refused_at: Option<Instant>,
    /// The last head-by-head claim filled its limit: a backlog waits in the outbox.
    backlog: bool,
    /// The last `start_sends` waits for a batch to fill (claims go on meanwhile).
    batch_held: bool,
}

impl Pump {
    pub(super) fn new(
        engine: Arc<Engine>,
        mut sub_rx: watch::Receiver<Arc<Stored>>,
        owned_rx: watch::Receiver<bool>,
        batcher: Batcher,
        slot: Arc<Slot>,
    ) -> Pump {
        let sub = sub_rx.borrow_and_update().clone();
        let backstop = backstop(engine.config.poll_interval.0);
        Pump {
            breaker: Breaker::new(
                engine.config.breaker_failures,
                engine.config.breaker_cooldown.0,
            ),
            engine,
            batcher,
            owned_rx,
            owns: false,
            sub_rx,
            sub,
            lanes: Lanes::default(),
            cursor: Cursor::default(),
            slot,
            mode: Mode::Outbox,
            handed_during_claim: HashSet::new(),
            claim_running: false,
            may_switch: false,
            failed_unrecorded: 0,
            failed_during_claim: HashSet::new(),
            recording: None,
            in_flight: JoinSet::new(),
            decided: Decided::default(),
            more_due: true,
            last_claim: Instant::now(),
            backstop,
            rate: rate::Gate::default(),
            rate_held: false,
            gather: Gatherer::default(),
            batch_held: false,
            epoch: 0,
            tail_refused_at: None,
            backlog: false,
        }
    }

    /// Returns the subscription's id once its last results are recorded.
    pub(super) async fn run(mut self, cancel: CancellationToken) -> String {
        let id = self.sub.id.clone();
        debug!(subscription = %id, url_host = %host_of(&self.sub.url), "delivery running for subscription");
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            match self.run_loop(&cancel).await {
                Ok(()) => break,
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(subscription = %id, error = %e, retry_in_ms = delay.as_millis() as u64, "delivery pump cannot reach the outbox; retrying");
                    if !sleep_or_cancel(delay, &cancel).await {
                        break;
                    }
                }
            }
        }
        // Let requests in flight finish and record them; give back what was never sent.
        while let Some(joined) = self.in_flight.join_next().await {
            self.finished(joined);
        }
        let last = async {
            self.recorded().await?;
            self.start_record();
            self.recorded().await?;
            // Successes the cursor could not put in a run: recorded on their rows.
            self.stop_cursor();
            self.start_record();
            self.recorded().await
        };
        if let Err(e) = last.await {
            warn!(subscription = %id, error = %e, "could not record the last results; they will be sent again by the next owner");
        }
        self.forget_queue();
        id
    }

    /// Returns Ok on cancel or when the subscription was deactivated; Err on a database error.
    async fn run_loop(&mut self, cancel: &CancellationToken) -> Result<(), DeliverError> {
        let engine = self.engine.clone();
        let slot = self.slot.clone();
        let poll = engine.config.poll_interval.0;
        let max = engine.config.max_in_flight;
        // Results are recorded in batches: one statement per batch, not per delivery.
        let record_batch = (max / 2).max(1);
        let mut first_done_at: Option<Instant> = None;
        // A claim is answered by the shared claimer while this loop keeps sending and
        // recording, so in-flight slots do not sit idle for the length of a claim. One at a
        // time: two would read the same rows.
        let mut claiming: Option<Claiming> = None;
        self.check_ownership();
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            // Whether the owner's watermark reading must wake this pump (see `timer_claims`).
            self.slot.set_memory_next(match self.mode {
                Mode::Memory { next, .. } => next,
                _ => 0,
            });
            if self.sub_rx.has_changed().unwrap_or(false) {
                self.subscription_changed();
            }
            if self.owned_rx.has_changed().unwrap_or(false) {
                self.check_ownership();
            }
            // Results are written while sends go on: a pump never waits for its own record
            // statement, which would cap its rate at one batch per round trip.
            let record_due = first_done_at.is_some_and(|t| t.elapsed() >= RECORD_DELAY);
            let to_record = self.decided.len() + self.cursor.waiting();
            if self.recording.is_none()
                && to_record > 0
                && (to_record >= record_batch || self.in_flight.is_empty() || record_due)
            {
                first_done_at = None;
                self.start_record();
            }
            self.take_waiting();
            let wait_until = self.start_sends();
            // Refill before the queue runs dry, so sends never wait for a claim.
            if self.owns
                && self.more_due
                && (wait_until.is_none() || self.rate_held || self.batch_held)
                && self.lanes.queued_len() < max * self.per_request()
                && claiming.is_none()
            {
                claiming = self.start_claim();
            }
            let mut sleep_until = wait_until.unwrap_or_else(|| {
                if self.timer_claims() {
                    Instant::now() + poll
                } else {
                    self.last_claim + self.backstop
                }
            });
            if let Some(t) = first_done_at.filter(|_| self.recording.is_none()) {
                sleep_until = sleep_until.min(t + RECORD_DELAY);
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                Some(joined) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    self.finished(joined);
                    while let Some(joined) = self.in_flight.try_join_next() {
                        self.finished(joined);
                    }
                    first_done_at.get_or_insert_with(Instant::now);
                }
                written = async { (&mut self.recording.as_mut().expect("guarded").reply).await }, if self.recording.is_some() => {
                    let recording = self.recording.take().expect("guarded");
                    let written = written.unwrap_or(Err(DeliverError::Stopping("the recorder stopped before answering")));
                    if self.was_recorded(recording, written).await? {
                        return Ok(());
                    }
                }
                answered = async { (&mut claiming.as_mut().expect("guarded").reply).await }, if claiming.is_some() => {
                    let claim = claiming.take().expect("guarded");
                    let answer = answered.map_err(|_| DeliverError::Stopping("the claimer stopped"))??;
                    self.claimed(answer, claim);
                }
                r = self.owned_rx.changed() => {
                    if r.is_err() { return Ok(()) }
                    self.check_ownership();
                }
                _ = slot.notify.notified() => self.handed_over(),
                // A PATCH (new URL or secret) reaches an open breaker at once, not after its
                // cooldown. A closed channel (the subscription is going away) disables this arm.
                Ok(()) = self.sub_rx.changed() => {
                    self.subscription_changed();
                }
                _ = tokio::time::sleep_until(sleep_until.into()) => {
                    if first_done_at.is_none() && self.timer_claims() { self.more_due = true; }
                }
            }
        }
    }

    /// Whether the poll timer makes this pump read the outbox. Not while it takes rows from
    /// memory: what it could miss then (rows stored by another instance, replays by another
    /// process) moves its subscription's watermarks, which the owner reads once per poll for
    /// all subscriptions and wakes it (a claim per pump per poll cost a quarter of a core at
    /// 10,000 idle subscriptions); the backstop still reads it now and then, for rows put back
    /// by hand.
    fn timer_claims(&self) -> bool {
        !matches!(self.mode, Mode::Memory { .. }) || self.last_claim.elapsed() >= self.backstop
    }

    /// Takes the new version of the subscription; when what a receiver checks changed (URL,
    /// secrets, signature, format, headers or batching) an open breaker sends its probe now: the
    /// operator fixed something, and waiting out the cooldown would only delay the proof.
    fn subscription_changed(&mut self) {
        let new = self.sub_rx.borrow_and_update().clone();
        let fix = new.url != self.sub.url
            || new.secret != self.sub.secret
            || new.previous_secret != self.sub.previous_secret
            || new.signature != self.sub.signature
            || new.format != self.sub.format
            || new.headers != self.sub.headers
            || new.signature_header != self.sub.signature_header
            || new.template != self.sub.template
            || new.batch != self.sub.batch;
        self.sub = new;
        if fix && self.breaker.probe_now() {
            self.report_breaker(Some("the subscription changed; probing now".into()));
            info!(subscription = %self.sub.id, "subscription changed: circuit breaker half-open, sending a probe now");
            self.more_due = true;
        }
    }

    fn finished(&mut self, joined: Result<Vec<Done>, tokio::task::JoinError>) {
        match joined {
            Ok(dones) => {
                self.slot
                    .finished(dones.iter().filter(|d| d.outcome.is_success()).count());
                // A key's rows in one batch are consecutive: its lane moves on once, after
                // the last of them (which has the outcome of the others, or a failure). One
                // row (no batching) needs no map.
                let last: HashMap<&str, usize> = if dones.len() > 1 {
                    dones
                        .iter()
                        .enumerate()
                        .map(|(i, d)| (d.claimed.ordering_key.as_str(), i))
                        .collect()
                } else {
                    HashMap::default()
                };
                let mut failed = 0;
                for (i, done) in dones.iter().enumerate() {
                    let success = done.outcome.is_success();
                    let last_of_key = dones.len() == 1
                        || last.get(done.claimed.ordering_key.as_str()) == Some(&i);
                    if last_of_key {
                        self.lanes.finished(&done.claimed, success);
                    }
                    failed += usize::from(!success);
                    if !success && self.claim_running && !done.claimed.ordering_key.is_empty() {
                        self.failed_during_claim
                            .insert(done.claimed.ordering_key.clone());
                    }
                    self.decided.add(
                        done,
                        &self.engine.retry,
                        &mut self.breaker,
                        &self.engine.metrics,
                        &self.sub.id,
                    );
                    // A success the cursor can record in a run is not written on its row.
                    if let Some(result) = self.decided.batch.pop() {
                        if let Some(result) = self.cursor.decided(&done.claimed, result) {
                            self.decided.batch.push(result);
                        }
                    }
                }
                if failed > 0 {
                    self.failed_unrecorded += failed;
                    // Retries and what waits behind them are the outbox's business.
                    self.back_to_outbox();
                }
            }
            Err(e) => {
                error!(subscription = %self.sub.id, error = %e, "a delivery request panicked; its lease will expire and it will be sent again")
            }
        }
    }

    /// Publishes the breaker's state, why it is not closed, and when it next lets a request
    /// through (for the API's subscription view and `/metrics`).
    fn report_breaker(&mut self, reason: Option<String>) {
        report_breaker(
            &mut self.breaker,
            &self.engine.metrics,
            &self.sub.id,
            reason,
        );
    }

    /// Follows the published owned set; on losing the subscription, forgets the queue (in-flight
    /// results will be refused by the database and the new owner sends those rows again).
    fn check_ownership(&mut self) {
        let owns = *self.owned_rx.borrow_and_update();
        match (self.owns, owns) {
            (false, true) => {
                debug!(subscription = %self.sub.id, worker = %self.engine.worker, "delivering: this instance owns the subscription");
                self.more_due = true;
            }
            (true, false) => {
                warn!(subscription = %self.sub.id, worker = %self.engine.worker, "lost ownership of the subscription; standing by");
                self.forget_queue();
            }
            _ => {}
        }
        self.owns = owns;
    }

    /// Lets go of what was not sent yet; the outbox keeps it and the next claim finds it.
    fn forget_queue(&mut self) {
        self.lanes.forget();
        self.back_to_outbox();
    }

    fn back_to_outbox(&mut self) {
        if self.mode != Mode::Outbox {
            debug!(subscription = %self.sub.id, "delivery reads the outbox again");
        }
        self.mode = Mode::Outbox;
        // The pump no longer holds everything: successes waiting for a run go on their rows.
        self.stop_cursor();
        self.epoch += 1;
        self.more_due = true;
        self.may_switch = false;
        self.slot.accept(false);
    }

    /// Starts queued sends within the in-flight cap and the breaker; returns when to look again
    /// if the breaker holds us back.
    fn start_sends(&mut self) -> Option<Instant> {
        if !self.owns {
            return None;
        }
        let max = self.engine.config.max_in_flight;
        // Results wait in memory while the previous record statement runs. Past this many,
        // those it writes included, sends pause until it answers (the loop wakes on its
        // reply): a slow outbox holds memory at a bound instead of growing it, and the rows
        // stay pending where they are.
        let writing = self
            .recording
            .as_ref()
            .map_or(0, |r| r.ids.len() + r.covered.len());
        let unrecorded = self.decided.len() + self.cursor.waiting() + writing;
        if unrecorded >= (UNRECORDED_PER_SLOT * max * self.per_request()).max(RECORD_MIN) {
            return None;
        }
        self.rate_held = false;
        self.batch_held = false;
        while self.in_flight.len() < max {
            match self.breaker.permit(Instant::now()) {
                Permit::Open => {}
                Permit::Probe if self.in_flight.is_empty() => {}
                Permit::Probe => return None,
                Permit::Wait(until) => {
                    // Nothing goes out while the breaker is open: the queue is forgotten (it
                    // was only read) and claimed again, in order, when the breaker lets us.
                    self.forget_queue();
                    self.more_due = false;
                    return Some(
                        until
                            .unwrap_or_else(|| Instant::now() + self.engine.config.poll_interval.0),
                    );
                }
            }
            if self.lanes.ready_len() == 0 {
                break;
            }
            if let Some(batch) = self.sub.batch {
                let probe = matches!(self.breaker.permit(Instant::now()), Permit::Probe);
                if let Some(until) = self.gather.wait(&self.lanes, batch, probe, Instant::now()) {
                    self.batch_held = true;
                    return Some(until);
                }
            }
            // The rate limit holds the queue (claimed rows stay pending, no attempt is used).
            match self.rate.try_acquire(self.sub.rate_limit, Instant::now()) {
                rate::Acquire::Wait(d) => {
                    self.rate_held = true;
                    return Some(Instant::now() + d);
                }
                rate::Acquire::Go { waited: Some(w) } => {
                    self.engine.metrics.rate_limited(&self.sub.id, w)
                }
                rate::Acquire::Go { waited: None } => {}
            }
            if let Some(batch) = self.sub.batch {
                let rows = self.gather.take(&mut self.lanes, batch);
                if matches!(self.breaker.permit(Instant::now()), Permit::Probe) {
                    self.breaker.probe_sent();
                    info!(subscription = %self.sub.id, events = rows.len(), "circuit breaker half-open: sending one probe batch");
                }
                self.spawn_batch(rows);
                continue;
            }
            let Some(claimed) = self.lanes.next_ready() else {
                break;
            };
            if matches!(self.breaker.permit(Instant::now()), Permit::Probe) {
                self.breaker.probe_sent();
                info!(subscription = %self.sub.id, delivery = claimed.id, "circuit breaker half-open: sending one probe");
            }
            self.spawn_send(claimed);
        }
        None
    }

    /// Rows one request carries at most: 1, or the batch's `max_events`.
    fn per_request(&self) -> usize {
        self.sub.batch.map_or(1, |b| b.max_events as usize)
    }

    /// Rows to hold (claimed or handed over, unsent or in flight) for `max_in_flight` requests.
    fn prefetch(&self) -> usize {
        let max = self.engine.config.max_in_flight;
        match self.sub.batch {
            None => PREFETCH * max,
            Some(_) => (PREFETCH * max * self.per_request()).min(batching::MAX_HELD),
        }
    }

    fn spawn_send(&mut self, claimed: Claimed) {
        let (sub, sender) = (self.sub.clone(), self.engine.sender.clone());
        let telemetry = self.engine.telemetry.clone();
        self.in_flight
            .spawn(attempt_one(sender, sub, claimed, telemetry));
    }

    /// One request for a batch of rows; every row gets its outcome ([`batching::send`]).
    fn spawn_batch(&mut self, rows: Vec<Claimed>) {
        let (sub, sender) = (self.sub.clone(), self.engine.sender.clone());
        self.engine.metrics.batch_sent(&sub.id, rows.len());
        let telemetry = self.engine.telemetry.clone();
        self.in_flight
            .spawn(attempt_batch(sender, sub, rows, telemetry));
    }

    /// Hands the decided results to the recorder; [`Pump::was_recorded`] finishes when it
    /// answers.
    fn start_record(&mut self) {
        if self.recording.is_some() {
            return;
        }
        let advance = self.cursor.take_runs();
        // Successes held up behind a slow request go on their rows past a few per slot.
        let spill_at = (2 * self.engine.config.max_in_flight * self.per_request()).max(SPILL_MIN);
        if self.cursor.waiting() >= spill_at {
            let spilled = self.cursor.spill();
            self.decided.batch.extend(spilled);
        }
        if self.decided.is_empty() && advance.runs.is_empty() {
            return;
        }
        let Decided {
            batch,
            failed,
            gone,
        } = std::mem::take(&mut self.decided);
        let ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
        let reply = self
            .batcher
            .record(self.sub.id.clone(), batch, advance.runs);
        self.recording = Some(Recording {
            ids,
            covered: advance.ids,
            failed,
            gone,
            reply,
        });
    }

    /// Waits for the results being written, if any; true when the subscription is gone.
    async fn recorded(&mut self) -> Result<bool, DeliverError> {
        let Some(mut recording) = self.recording.take() else {
            return Ok(false);
        };
        let written = (&mut recording.reply)
            .await
            .unwrap_or(Err(DeliverError::Stopping(
                "the recorder stopped before answering",
            )));
        self.was_recorded(recording, written).await
    }

    /// The recorder answered: the rows are no longer held; true when the subscription is gone.
    /// When the write failed they are let go too: the outbox still shows them unfinished, so a
    /// later claim sends them again (same event ids) and their results are decided anew.
    async fn was_recorded(
        &mut self,
        recording: Recording,
        written: Result<Written, DeliverError>,
    ) -> Result<bool, DeliverError> {
        let written = match written {
            Ok(n) => n,
            Err(e) => {
                for id in recording.ids.into_iter().chain(recording.covered) {
                    self.lanes.recorded(id);
                }
                self.failed_unrecorded = self.failed_unrecorded.saturating_sub(recording.failed);
                self.back_to_outbox();
                return Err(e);
            }
        };
        let engine = self.engine.clone();
        let sub_id = self.sub.id.clone();
        let total = (recording.ids.len() + recording.covered.len()) as u64;
        let lost = total
            - written.rows
            - if written.runs {
                recording.covered.len() as u64
            } else {
                0
            };
        if lost > 0 {
            warn!(subscription = %sub_id, results = lost, "results not recorded: this instance no longer owns the subscription, and the new owner sends those deliveries again (same event ids)");
            // The cursor may not pass rows whose records were refused.
            self.stop_cursor();
        }
        for id in recording.ids {
            self.lanes.recorded(id);
            self.cursor.released(id);
        }
        for id in recording.covered {
            self.lanes.recorded(id);
        }
        self.failed_unrecorded = self.failed_unrecorded.saturating_sub(recording.failed);
        // Reading the outbox, a finished delivery may unblock the next one of its key, and
        // frees room to read more.
        if !matches!(self.mode, Mode::Memory { .. }) {
            self.more_due = true;
        }
        if recording.gone {
            // Boxed: rare, and its statement's future would otherwise enlarge every pump's task.
            Box::pin(deactivate_gone(&engine, &sub_id)).await?;
            self.more_due = false;
        }
        Ok(recording.gone)
    }
}

/// The receiver answered 410 Gone: the subscription is switched off and routing reloaded.
async fn deactivate_gone(engine: &Engine, sub_id: &str) -> Result<(), DeliverError> {
    let reason = "receiver answered 410 Gone";
    let client = engine.conn().await?;
    if queue::deactivate(&client, &engine.schema, sub_id, reason)
        .await
        .map_err(DeliverError::from)?
    {
        warn!(subscription = %sub_id, "receiver answered 410 Gone: subscription deactivated; reactivate it through the API or config.toml");
    }
    engine.changed.notify_one();
    Ok(())
}
