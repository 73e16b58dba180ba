//! Where a pump's next rows come from, and when it may trust each source.
//!
//! Guarantees (the modes of [`Mode`]):
//! - **outbox**: a claim reads the due rows that no attempted, unfinished row of their key
//!   precedes, leaving out every id the pump holds, the rows never attempted in id order; this
//!   is the mode after anything unexpected (a failure, an open breaker, lost ownership, a
//!   replay, a gap in the sequence numbers), and it is always correct: the lanes keep the order
//!   among a key's rows never attempted, no claim starts while a failure is not recorded, and
//!   the rows an answer holds of a key that failed while it ran are left to the outbox, so no
//!   row passes a failed row of its key (sql/018);
//! - **tail**: the pump holds every unfinished row up to an id, and the subscription has no
//!   failed row waiting for a retry; it reads the pending rows after that id in id order (no
//!   per-row head probe, no list of held ids: the cheap read of a backlog), and its lanes keep
//!   each key's order. It is entered from memory mode when the handoff slot overflowed, or from
//!   outbox mode when the pump holds nothing (when outbox mode meets a backlog, claims pause
//!   until what the pump holds is recorded); the read is refused (back to outbox mode) while
//!   failed rows wait, and its answer is dropped if the pump went back to the outbox while it
//!   ran, since rows read in id order could then pass a failed row of their key;
//! - **memory**: the last read showed that the outbox holds nothing the pump does not hold, so
//!   what ingest hands over after that read's snapshot is complete, and it is sent without
//!   being read back. The pump holds at most `MEMORY_QUEUE_MIN` unsent rows; the rest wait in
//!   its handoff slot, whose writer waits for room while the pump keeps taking
//!   ([`crate::outbox::handoff`]). An overflowed slot continues in tail mode after the last row
//!   taken;
//! - the delivered cursor ([`crate::deliver::cursor`]) starts only where a read proved that the
//!   pump holds every unfinished row (switching to memory mode, a read in id order), and every
//!   row taken in afterwards is registered with it ([`Pump::admit`]).

use std::time::{Duration, Instant};

use tracing::debug;

use super::{Claiming, Mode, Pump, MEMORY_QUEUE_MIN, TAKE_MIN};
use crate::deliver::policy::Permit;
use crate::metrics::BreakerState;
use crate::outbox::queue::{Answer, Claimed};

/// After a read in id order was refused (failed rows wait for a retry), outbox mode claims for
/// at least this long before trying one again.
const TAIL_RETRY: Duration = Duration::from_secs(5);

impl Pump {
    /// Rows handed over by ingest: taken in memory mode when they continue the sequence;
    /// otherwise left to the outbox.
    pub(super) fn handed_over(&mut self) {
        let probe = self.slot.take_probe();
        if probe || self.slot.take_reread() {
            if probe && self.breaker.probe_now() {
                self.report_breaker(Some("deliveries were replayed; probing now".into()));
                tracing::info!(subscription = %self.sub.id, "deliveries replayed: circuit breaker half-open, sending a probe now");
            }
            self.back_to_outbox();
            return;
        }
        let Mode::Memory { mut next, mut last } = self.mode else {
            // Outbox and tail modes claim; a claim starts with an empty slot (see `start_claim`).
            self.more_due = true;
            return;
        };
        // The pump holds at most `cap` unsent rows; the rest wait in the slot, whose writer
        // waits for room while the pump keeps taking. Room is taken in chunks of at least
        // TAKE_MIN rows, so that writer and pump do not wake each other a row at a time.
        let room = self.memory_room();
        let taken = self
            .slot
            .take_up_to(if room >= TAKE_MIN { room } else { 0 });
        if !self.owns {
            self.back_to_outbox();
            return;
        }
        // What the slot could not keep is read from the outbox after the last row taken; ids
        // ascend in commit order, so all of it lies after that row.
        if taken.overflowed {
            self.read_in_id_order(last);
            return;
        }
        for row in taken.rows {
            match row.sequence {
                Some(n) if n < next => continue,
                Some(n) if n == next => {
                    next += 1;
                    last = last.max(row.id);
                    if self.claim_running {
                        self.handed_during_claim.insert(row.id);
                    }
                    self.admit(row);
                }
                _ => {
                    self.back_to_outbox();
                    return;
                }
            }
        }
        self.mode = Mode::Memory { next, last };
    }

    /// In memory mode, takes the rows waiting in the slot once there is room for a chunk.
    pub(super) fn take_waiting(&mut self) {
        if matches!(self.mode, Mode::Memory { .. })
            && self.memory_room() >= TAKE_MIN
            && self.slot.has_rows()
        {
            self.handed_over();
        }
    }

    /// Tells ingest how far a read of the outbox got, so that it waits for a pump catching up
    /// (see `outbox::handoff::CATCH_UP_ROWS`).
    fn note_progress(&self, rows: &[Claimed]) {
        if let Some(top) = rows.iter().filter_map(|c| c.sequence).max() {
            self.slot.progress(top);
        }
    }

    /// Unsent rows the pump may still take from memory.
    pub(super) fn memory_room(&self) -> usize {
        self.prefetch()
            .max(MEMORY_QUEUE_MIN)
            .saturating_sub(self.lanes.queued_len())
    }

    /// Takes a row in (lanes and cursor); false when it was already held.
    pub(super) fn admit(&mut self, row: Claimed) -> bool {
        let (id, sequence) = (row.id, row.sequence);
        if !self.lanes.admit(row) {
            return false;
        }
        let rest = self.cursor.admit(id, sequence);
        self.decided.batch.extend(rest);
        true
    }

    /// Stops the delivered cursor; the successes it kept are recorded on their rows.
    pub(super) fn stop_cursor(&mut self) {
        let rest = self.cursor.deactivate();
        self.decided.batch.extend(rest);
    }

    /// Starts the delivered cursor where a read proved that the pump holds every unfinished
    /// delivery: everything below the lowest number it holds (or, holding nothing, up to the
    /// read's `last_sequence`) is finished.
    pub(super) fn start_cursor(&mut self, last_sequence: i64) {
        let through = self
            .lanes
            .held_sequences()
            .filter_map(|(_, s)| s)
            .min()
            .map_or(last_sequence, |s| (s - 1).min(last_sequence));
        self.cursor.activate(through, self.lanes.held_sequences());
    }

    /// Continues in tail mode after `after`, keeping what the pump holds.
    fn read_in_id_order(&mut self, after: i64) {
        if !matches!(self.mode, Mode::Tail { .. }) {
            debug!(subscription = %self.sub.id, after, "delivery reads the outbox in id order");
        }
        self.mode = Mode::Tail { after };
        self.more_due = true;
        self.slot.accept(false);
    }

    /// Starts reading the next due rows, unless the breaker or the prefetch limit says no.
    pub(super) fn start_claim(&mut self) -> Option<Claiming> {
        // A half-open breaker needs one row only.
        let permit = self.breaker.permit(Instant::now());
        let want = match permit {
            Permit::Probe if self.in_flight.is_empty() && self.lanes.queued_len() == 0 => 1,
            Permit::Open => self.prefetch().saturating_sub(self.lanes.held_len()),
            _ => 0,
        };
        self.more_due = false;
        // Rows behind a failure stay out of a claim once the outbox shows the failure (sql/018):
        // until then, no claim (recording it sets `more_due` again).
        if want == 0 || self.failed_unrecorded > 0 {
            return None;
        }
        if self.drain_for_tail()
            && matches!(permit, Permit::Open)
            && matches!(self.mode, Mode::Outbox)
            && self.lanes.held_len() > 0
        {
            // A backlog claimed head by head: let what the pump holds finish first (a short
            // pause, no claim), so that the rest is read in id order from an empty hand. The
            // next record brings the pump back here.
            return None;
        }
        let after = match self.mode {
            _ if !matches!(permit, Permit::Open) => None,
            Mode::Tail { after } => Some(after),
            Mode::Outbox if self.lanes.held_len() == 0 && self.tail_may_start() => Some(0),
            _ => None,
        };
        if !matches!(self.mode, Mode::Memory { .. }) {
            // Whatever was handed over until now is in this claim's snapshot (it was committed
            // before it was handed over); what arrives from now on is kept and checked against
            // the answer's last sequence number.
            self.slot.take();
            self.slot.accept(true);
            self.may_switch = self.failed_unrecorded == 0;
        }
        self.handed_during_claim.clear();
        self.failed_during_claim.clear();
        self.claim_running = true;
        self.last_claim = Instant::now();
        self.engine.metrics.outbox_claim();
        // A read in id order needs no held ids: it starts after all of them.
        let held = match after {
            Some(_) => Vec::new(),
            None => self.lanes.held_ids(),
        };
        let reply = self
            .batcher
            .claim(self.sub.id.clone(), want as i64, held, after);
        Some(Claiming {
            want,
            reply,
            tail_epoch: after.map(|_| self.epoch),
        })
    }

    /// Outbox mode may start reading in id order once the pump holds nothing: no failure
    /// waits to be recorded, and no read was refused lately (failed rows waiting).
    fn tail_may_start(&self) -> bool {
        self.failed_unrecorded == 0
            && self
                .tail_refused_at
                .is_none_or(|t| t.elapsed() >= TAIL_RETRY)
    }

    /// The last head-by-head claim filled its limit (a backlog) and reading in id order may
    /// start: worth pausing claims until the pump's hand is empty.
    fn drain_for_tail(&self) -> bool {
        self.backlog && self.tail_may_start()
    }

    pub(super) fn claimed(&mut self, answer: Answer, claiming: Claiming) {
        self.claim_running = false;
        let handed = std::mem::take(&mut self.handed_during_claim);
        if !self.owns {
            // Ownership was lost while the claim ran: the new owner sends these.
            return;
        }
        let failed_keys = std::mem::take(&mut self.failed_during_claim);
        if let Some(epoch) = claiming.tail_epoch {
            return self.tail_claimed(answer, claiming.want, epoch);
        }
        let everything = answer.is_everything();
        let full = answer.rows.len() == claiming.want;
        self.backlog = full && !everything;
        let mut unknown = false;
        self.note_progress(&answer.rows);
        for c in answer.rows {
            // A key that failed while this ran: its row may be missing from the snapshot's
            // failures, and this one would pass it. The outbox keeps it; a later claim, which
            // starts once the failure is recorded, sees it in order.
            if failed_keys.contains(&c.ordering_key) {
                self.more_due = true;
                continue;
            }
            if !handed.contains(&c.id) {
                unknown |= self.admit(c);
            }
        }
        match self.mode {
            Mode::Memory { .. } if unknown => {
                // The outbox had rows nobody handed over (a replay, another instance's writes).
                self.back_to_outbox();
            }
            Mode::Memory { .. } => {}
            Mode::Outbox | Mode::Tail { .. } => {
                // A full claim suggests more is due; a probe claims one row and waits for its
                // result. A handoff that came while the claim ran has set more_due already.
                self.more_due |= full && !matches!(self.breaker.state(), BreakerState::HalfOpen);
                if everything {
                    self.try_memory(answer.last_sequence);
                } else {
                    self.slot.accept(false);
                }
            }
        }
    }

    /// The answer of a read in id order.
    fn tail_claimed(&mut self, answer: Answer, want: usize, epoch: u64) {
        if epoch != self.epoch {
            // The pump went back to the outbox while this ran (a failure, the breaker): rows
            // read in id order could pass a failed row of their key. The outbox keeps them.
            self.more_due = true;
            return;
        }
        if !answer.owned {
            // The outbox does not show this instance as the owner (yet, or any more): an
            // empty answer proves nothing. Ownership changes reach the pump on their own.
            self.slot.accept(false);
            return;
        }
        if answer.has_retries {
            self.tail_refused_at = Some(Instant::now());
            self.back_to_outbox();
            return;
        }
        self.backlog = false;
        let full = answer.rows.len() == want;
        let mut last = match self.mode {
            Mode::Tail { after } => after,
            _ => 0,
        };
        self.note_progress(&answer.rows);
        for c in answer.rows {
            last = last.max(c.id);
            self.admit(c);
        }
        // The pump holds every unfinished row up to `last`.
        self.start_cursor(answer.last_sequence);
        if full {
            self.read_in_id_order(last);
            return;
        }
        // Everything after `last` was read, everything before it is held, and nothing waits
        // for a retry: the outbox holds nothing else.
        self.mode = Mode::Tail { after: last };
        self.try_memory(answer.last_sequence);
    }

    /// The last claim showed that the pump holds everything unfinished: from its snapshot on,
    /// what ingest hands over is complete, unless something sent the pump back meanwhile.
    fn try_memory(&mut self, last_sequence: i64) {
        if self.may_switch && matches!(self.breaker.permit(Instant::now()), Permit::Open) {
            let last = self.lanes.max_held().unwrap_or(0).max(match self.mode {
                Mode::Tail { after } => after,
                _ => 0,
            });
            self.mode = Mode::Memory {
                next: last_sequence + 1,
                last,
            };
            self.more_due = false;
            self.start_cursor(last_sequence);
            debug!(subscription = %self.sub.id, next_sequence = last_sequence + 1, "delivery takes new rows from memory");
            self.handed_over();
        } else {
            self.slot.accept(false);
        }
    }
}
