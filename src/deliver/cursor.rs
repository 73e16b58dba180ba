//! A pump's delivered cursor: which first-attempt successes can be recorded as one run
//! ([`Run`], sql/015) instead of one row update each.
//!
//! Guarantees:
//! - it is active only while the pump holds every unfinished delivery of its subscription
//!   numbered above `through` ([`Cursor::activate`] is called where a claim proved that: memory
//!   mode, reads in id order) and goes inactive the moment the pump goes back to claiming from
//!   the outbox; inactive, it diverts nothing;
//! - a run only ever covers sequence numbers that are finished: successes of fresh rows the
//!   pump holds, and numbers it does not hold (rows that were not pending when the pump read
//!   past them, or whose own records were confirmed). It stops at the first number still open
//!   (queued, in flight, failed, or waiting for its own record), so it never passes a row that
//!   could still fail;
//! - a success it cannot put in a run (inactive cursor, a row attempted before, a run blocked
//!   when the cursor goes inactive) is handed back to be recorded on its row, so nothing is
//!   lost and nothing is recorded twice;
//! - memory is bounded by the rows the pump holds.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};

use crate::outbox::queue::{Claimed, NewStatus, Recorded, Run};

#[derive(Debug)]
enum Entry {
    /// Held, not finished by the cursor: queued, in flight, or recorded on its row.
    Open,
    /// A first-attempt success of a fresh row, waiting for the run that covers it.
    Delivered(Recorded),
}

/// What [`Cursor::take_runs`] hands to the recorder.
#[derive(Debug, Default)]
pub struct Advance {
    pub runs: Vec<Run>,
    /// The deliveries the runs cover: released once the runs are written.
    pub ids: Vec<i64>,
}

#[derive(Debug, Default)]
pub struct Cursor {
    active: bool,
    /// Every delivery numbered up to this is finished or covered by a run already taken.
    through: i64,
    /// The greatest number admitted while active.
    top: i64,
    held: BTreeMap<i64, Entry>,
    by_id: HashMap<i64, i64>,
    /// Successes waiting for a run.
    waiting: usize,
}

impl Cursor {
    /// Successes waiting for a run.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Starts the cursor: every delivery numbered up to `through` is finished, and `held` (id,
    /// sequence) is every unfinished one the pump holds. Does nothing when already active, or
    /// when a held row has no sequence number (written by hand before version 4).
    pub fn activate(&mut self, through: i64, held: impl IntoIterator<Item = (i64, Option<i64>)>) {
        if self.active {
            return;
        }
        let mut entries = BTreeMap::new();
        let mut by_id = HashMap::new();
        for (id, seq) in held {
            let Some(seq) = seq.filter(|s| *s > through) else {
                return;
            };
            entries.insert(seq, Entry::Open);
            by_id.insert(id, seq);
        }
        self.top = entries.keys().next_back().copied().unwrap_or(through);
        self.through = through;
        self.held = entries;
        self.by_id = by_id;
        self.active = true;
    }

    /// A row the pump now holds. A row the cursor cannot place (no number, or one it already
    /// passed) stops the cursor: its successes so far are returned, to be recorded on their rows.
    pub fn admit(&mut self, id: i64, sequence: Option<i64>) -> Vec<Recorded> {
        if !self.active {
            return Vec::new();
        }
        match sequence {
            Some(seq) if seq > self.through && !self.held.contains_key(&seq) => {
                self.held.insert(seq, Entry::Open);
                self.by_id.insert(id, seq);
                self.top = self.top.max(seq);
                Vec::new()
            }
            _ => self.deactivate(),
        }
    }

    /// A result: kept for a run when it is the first-attempt success of a fresh row the cursor
    /// holds (None), else returned to be recorded on its row.
    pub fn decided(&mut self, row: &Claimed, result: Recorded) -> Option<Recorded> {
        let eligible = self.active
            && row.fresh
            && result.first_attempt
            && result.status == NewStatus::Delivered
            && result.http_status.is_some();
        match self.by_id.get(&row.id).and_then(|s| self.held.get_mut(s)) {
            Some(e @ Entry::Open) if eligible => {
                *e = Entry::Delivered(result);
                self.waiting += 1;
                None
            }
            _ => Some(result),
        }
    }

    /// A row's own record was written (or given up): the cursor may pass its number.
    pub fn released(&mut self, id: i64) {
        if let Some(seq) = self.by_id.remove(&id) {
            self.held.remove(&seq);
        }
    }

    /// The runs from `through` up to the first number still open, when they cover at least
    /// one success; the cursor moves past them. A run may span numbers the pump does not hold
    /// (finished otherwise): the cursor passes them, and the run's details describe its
    /// successes only.
    pub fn take_runs(&mut self) -> Advance {
        let mut advance = Advance::default();
        if !self.active {
            return advance;
        }
        // The numbers between held entries are not held: the cursor passes them.
        let mut stop = self.top;
        let mut delivered = Vec::new();
        for (&seq, entry) in self.held.range(self.through + 1..) {
            match entry {
                Entry::Open => {
                    stop = seq - 1;
                    break;
                }
                Entry::Delivered(_) => delivered.push(seq),
            }
        }
        for seq in delivered {
            let Some(Entry::Delivered(r)) = self.held.remove(&seq) else {
                continue;
            };
            self.by_id.remove(&r.id);
            self.waiting -= 1;
            let http = r.http_status.unwrap_or_default();
            match advance.runs.last_mut() {
                Some(run) if run.http_status == http => {
                    run.last = seq;
                    run.attempted_at = run.attempted_at.max(r.attempted_at);
                    run.duration_ms = run.duration_ms.max(r.duration_ms);
                }
                _ => advance.runs.push(Run {
                    first: advance.runs.last().map_or(self.through, |r| r.last) + 1,
                    last: seq,
                    http_status: http,
                    attempted_at: r.attempted_at,
                    duration_ms: r.duration_ms,
                }),
            }
            advance.ids.push(r.id);
        }
        if let Some(run) = advance.runs.last_mut() {
            run.last = stop;
            self.through = stop;
        }
        advance
    }

    /// The successes waiting behind a number still open, to be recorded on their rows instead:
    /// one slow request must not hold every later success (and, through the bound on unrecorded
    /// results, the pump's sends) until it ends. They stay held until their records are written
    /// ([`Cursor::released`]); the cursor passes them after that.
    pub fn spill(&mut self) -> Vec<Recorded> {
        let mut out = Vec::new();
        for entry in self.held.values_mut() {
            if let Entry::Delivered(_) = entry {
                if let Entry::Delivered(r) = std::mem::replace(entry, Entry::Open) {
                    out.push(r);
                }
            }
        }
        self.waiting = 0;
        out
    }

    /// Stops the cursor (the pump reads the outbox again); the successes it kept are returned,
    /// to be recorded on their rows.
    pub fn deactivate(&mut self) -> Vec<Recorded> {
        self.active = false;
        self.waiting = 0;
        self.by_id.clear();
        std::mem::take(&mut self.held)
            .into_values()
            .filter_map(|e| match e {
                Entry::Delivered(r) => Some(r),
                Entry::Open => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn row(id: i64, seq: i64) -> Claimed {
        Claimed {
            id,
            event_id: format!("e{id}"),
            event: "INSERT".into(),
            ordering_key: String::new(),
            payload: "{}".into(),
            attempts: 0,
            sequence: Some(seq),
            fresh: true,
        }
    }

    fn success(id: i64, http: i32, at_s: i64, ms: i32) -> Recorded {
        Recorded {
            id,
            status: NewStatus::Delivered,
            attempted_at: Utc.timestamp_opt(at_s, 0).unwrap(),
            duration_ms: ms,
            http_status: Some(http),
            error_kind: None,
            error: None,
            response_body: String::new(),
            first_attempt: true,
        }
    }

    /// A cursor through 10 holding rows 11..=15 (ids 111..=115).
    fn holding_five() -> Cursor {
        let mut c = Cursor::default();
        c.activate(10, (11..=15).map(|s| (100 + s, Some(s))));
        c
    }

    fn spans(a: &Advance) -> Vec<(i64, i64, i32)> {
        a.runs
            .iter()
            .map(|r| (r.first, r.last, r.http_status))
            .collect()
    }

    #[test]
    fn a_run_ends_at_the_first_open_number() {
        let mut c = holding_five();
        for s in [11, 12, 14] {
            assert!(c
                .decided(&row(100 + s, s), success(100 + s, 200, s, 5))
                .is_none());
        }
        assert_eq!(c.waiting(), 3);
        let a = c.take_runs();
        assert_eq!(spans(&a), vec![(11, 12, 200)]);
        assert_eq!(a.ids, vec![111, 112]);
        assert_eq!(c.waiting(), 1);
        // 13 still open: nothing more.
        assert!(c.take_runs().runs.is_empty());
        assert!(c.decided(&row(113, 13), success(113, 200, 20, 9)).is_none());
        let a = c.take_runs();
        // 15 is open: the run stops at 14.
        assert_eq!(spans(&a), vec![(13, 14, 200)]);
        assert_eq!(a.runs[0].duration_ms, 9);
        assert_eq!(a.runs[0].attempted_at, Utc.timestamp_opt(20, 0).unwrap());
    }

    #[test]
    fn numbers_not_held_are_passed_and_statuses_split_runs() {
        let mut c = Cursor::default();
        // Holds 12, 13 and 16 only: 11, 14 and 15 were finished before the pump read past them.
        c.activate(10, [(112, Some(12)), (113, Some(13)), (116, Some(16))]);
        assert!(c.decided(&row(112, 12), success(112, 200, 1, 1)).is_none());
        assert!(c.decided(&row(113, 13), success(113, 204, 2, 1)).is_none());
        assert!(c.decided(&row(116, 16), success(116, 204, 3, 1)).is_none());
        let a = c.take_runs();
        assert_eq!(spans(&a), vec![(11, 12, 200), (13, 16, 204)]);
    }

    #[test]
    fn a_row_recorded_on_itself_is_passed_once_its_record_is_written() {
        let mut c = holding_five();
        let mut retried = row(111, 11);
        retried.fresh = false;
        // A replayed row: recorded on itself.
        assert!(c.decided(&retried, success(111, 200, 1, 1)).is_some());
        assert!(c.decided(&row(112, 12), success(112, 200, 1, 1)).is_none());
        assert!(c.take_runs().runs.is_empty());
        c.released(111);
        assert_eq!(spans(&c.take_runs()), vec![(11, 12, 200)]);
    }

    #[test]
    fn failures_and_retries_are_not_taken() {
        let mut c = holding_five();
        let mut failed = success(111, 500, 1, 1);
        failed.status = NewStatus::Failed {
            retry_in: std::time::Duration::from_secs(1),
        };
        assert!(c.decided(&row(111, 11), failed).is_some());
        let mut later = success(112, 200, 1, 1);
        later.first_attempt = false;
        assert!(c.decided(&row(112, 12), later).is_some());
        assert_eq!(c.waiting(), 0);
    }

    #[test]
    fn spilled_successes_go_on_their_rows_and_are_passed_once_written() {
        let mut c = holding_five();
        // 11 is slow; 12 and 13 succeed behind it.
        assert!(c.decided(&row(112, 12), success(112, 200, 1, 1)).is_none());
        assert!(c.decided(&row(113, 13), success(113, 200, 1, 1)).is_none());
        let spilled: Vec<i64> = c.spill().iter().map(|r| r.id).collect();
        assert_eq!(spilled, vec![112, 113]);
        assert_eq!(c.waiting(), 0);
        // 11 succeeds: the run stops before 12, whose record is not written yet.
        assert!(c.decided(&row(111, 11), success(111, 200, 1, 1)).is_none());
        assert_eq!(spans(&c.take_runs()), vec![(11, 11, 200)]);
        c.released(112);
        c.released(113);
        assert!(c.decided(&row(114, 14), success(114, 200, 1, 1)).is_none());
        assert_eq!(spans(&c.take_runs()), vec![(12, 14, 200)]);
    }

    #[test]
    fn going_inactive_hands_back_what_no_run_took() {
        let mut c = holding_five();
        assert!(c.decided(&row(112, 12), success(112, 200, 1, 1)).is_none());
        assert!(c.decided(&row(113, 13), success(113, 200, 1, 1)).is_none());
        let back: Vec<i64> = c.deactivate().iter().map(|r| r.id).collect();
        assert_eq!(back.len(), 2);
        assert!(back.contains(&112) && back.contains(&113));
        assert_eq!(c.waiting(), 0);
        // Inactive: nothing is taken, and a run never starts.
        assert!(c.decided(&row(114, 14), success(114, 200, 1, 1)).is_some());
        assert!(c.take_runs().runs.is_empty());
    }

    #[test]
    fn rows_the_cursor_cannot_place_stop_it() {
        let mut c = holding_five();
        assert!(c.decided(&row(112, 12), success(112, 200, 1, 1)).is_none());
        // Admitted rows extend the cursor's reach ...
        assert!(c.admit(117, Some(17)).is_empty());
        // ... a number it already passed, or none, stops it.
        let back = c.admit(99, Some(3));
        assert_eq!(back.len(), 1);
        assert!(c.take_runs().runs.is_empty());
        let mut d = holding_five();
        d.admit(120, None);
        assert!(d.decided(&row(111, 11), success(111, 200, 1, 1)).is_some());
    }

    #[test]
    fn a_held_row_without_a_number_keeps_it_inactive() {
        let mut c = Cursor::default();
        c.activate(0, [(1, Some(1)), (2, None)]);
        assert!(c.decided(&row(1, 1), success(1, 200, 1, 1)).is_some());
    }
}
