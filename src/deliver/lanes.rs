//! A pump's rows between claim (or handoff) and record: what is ready to send, what waits behind
//! an earlier row of its key, and every id the pump still holds.
//!
//! Guarantees:
//! - per key, one row at a time is ready or in flight; the next row of that key becomes ready
//!   only after the previous one succeeded, so rows of a key go out in the order they were
//!   admitted (commit order). A table without a primary key has the empty key: no ordering;
//! - after a failure the rows waiting behind it are let go (no longer held), so the outbox,
//!   which keeps them behind the failed row, decides when they go;
//! - a batch ([`Lanes::next_ready_run`]) may take a key's ready row together with the rows
//!   waiting behind it: they are consecutive in commit order and go in that order in one request,
//!   so the key still has one request in flight at a time;
//! - a row is held from admission until its result is recorded (or it is let go), so a claim
//!   that passes [`Lanes::held_ids`] never returns a row already in the pump's hands.

use std::collections::VecDeque;

use foldhash::HashMap;

use crate::outbox::queue::Claimed;

#[derive(Debug, Default)]
struct Key {
    /// The key's current row was handed out by [`Lanes::next_ready`] (in flight or finished).
    flying: bool,
    waiting: VecDeque<Claimed>,
}

#[derive(Debug, Default)]
pub struct Lanes {
    ready: VecDeque<Claimed>,
    keys: HashMap<String, Key>,
    /// Every id held, with its sequence number.
    held: HashMap<i64, Option<i64>>,
    /// Rows in the keys' `waiting` queues, all keys together: [`Lanes::queued_len`] is asked
    /// on every turn of the pump, and summing over the keys cost a walk of every held key.
    waiting: usize,
}

impl Lanes {
    /// Takes a row in; false (and nothing changes) when it is already held.
    pub fn admit(&mut self, row: Claimed) -> bool {
        if self.held.insert(row.id, row.sequence).is_some() {
            return false;
        }
        if row.ordering_key.is_empty() {
            self.ready.push_back(row);
            return true;
        }
        match self.keys.get_mut(&row.ordering_key) {
            Some(k) => {
                k.waiting.push_back(row);
                self.waiting += 1;
            }
            None => {
                self.keys.insert(row.ordering_key.clone(), Key::default());
                self.ready.push_back(row);
            }
        }
        true
    }

    /// The next row to send; its key is busy until [`Lanes::finished`].
    pub fn next_ready(&mut self) -> Option<Claimed> {
        let row = self.ready.pop_front()?;
        if let Some(k) = self.keys.get_mut(&row.ordering_key) {
            k.flying = true;
        }
        Some(row)
    }

    /// The next ready row and, for a keyed row, up to `room - 1` rows waiting behind it (in
    /// order); the key is busy until [`Lanes::finished`] is called once for it.
    pub fn next_ready_run(&mut self, room: usize) -> Option<Vec<Claimed>> {
        let row = self.ready.pop_front()?;
        let mut run = vec![row];
        if let Some(k) = self.keys.get_mut(&run[0].ordering_key) {
            k.flying = true;
            let more = k.waiting.len().min(room.saturating_sub(1));
            run.extend(k.waiting.drain(..more));
            self.waiting -= more;
        }
        Some(run)
    }

    /// How many rows [`Lanes::next_ready_run`] could hand out now, counted up to `cap`.
    pub fn sendable_len(&self, cap: usize) -> usize {
        let mut n = 0;
        for r in &self.ready {
            n += 1 + self
                .keys
                .get(&r.ordering_key)
                .map_or(0, |k| k.waiting.len());
            if n >= cap {
                return cap;
            }
        }
        n
    }

    /// A row handed out by [`Lanes::next_ready`] got its answer. On success the next row of
    /// its key becomes ready; on failure the rows waiting behind it are let go.
    pub fn finished(&mut self, row: &Claimed, success: bool) {
        if row.ordering_key.is_empty() {
            return;
        }
        let Some(k) = self.keys.get_mut(&row.ordering_key) else {
            return;
        };
        if success {
            if let Some(next) = k.waiting.pop_front() {
                self.waiting -= 1;
                k.flying = false;
                self.ready.push_back(next);
                return;
            }
        } else {
            self.waiting -= k.waiting.len();
            for w in k.waiting.drain(..) {
                self.held.remove(&w.id);
            }
        }
        self.keys.remove(&row.ordering_key);
    }

    /// The greatest id held (none: nothing held).
    pub fn max_held(&self) -> Option<i64> {
        self.held.keys().copied().max()
    }

    /// The row's result is recorded: no longer held.
    pub fn recorded(&mut self, id: i64) {
        self.held.remove(&id);
    }

    /// Lets go of everything not handed out yet (ready or waiting); rows in flight stay held.
    pub fn forget(&mut self) {
        for r in self.ready.drain(..) {
            self.held.remove(&r.id);
        }
        self.waiting = 0;
        let held = &mut self.held;
        self.keys.retain(|_, k| {
            for w in k.waiting.drain(..) {
                held.remove(&w.id);
            }
            k.flying
        });
    }

    pub fn held_ids(&self) -> Vec<i64> {
        self.held.keys().copied().collect()
    }

    /// Every row held: its id and sequence number.
    pub fn held_sequences(&self) -> impl Iterator<Item = (i64, Option<i64>)> + '_ {
        self.held.iter().map(|(id, seq)| (*id, *seq))
    }

    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Rows admitted and not handed out (ready or waiting behind their key).
    pub fn queued_len(&self) -> usize {
        debug_assert_eq!(
            self.waiting,
            self.keys.values().map(|k| k.waiting.len()).sum::<usize>()
        );
        self.ready.len() + self.waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, key: &str) -> Claimed {
        Claimed {
            id,
            event_id: format!("evt_{id}"),
            event: "UPDATE".into(),
            ordering_key: key.into(),
            payload: "{}".into(),
            attempts: 0,
            sequence: Some(id),
            fresh: true,
        }
    }

    fn ids(l: &mut Lanes) -> Vec<i64> {
        std::iter::from_fn(|| l.next_ready())
            .map(|r| r.id)
            .collect()
    }

    #[test]
    fn a_key_sends_one_row_at_a_time_in_order() {
        let mut l = Lanes::default();
        for (id, key) in [(1, "a"), (2, "a"), (3, "b"), (4, "a"), (5, "")] {
            assert!(l.admit(row(id, key)));
        }
        assert!(!l.admit(row(1, "a")), "a held row is not admitted twice");
        assert_eq!(ids(&mut l), vec![1, 3, 5]);
        l.finished(&row(1, "a"), true);
        assert_eq!(ids(&mut l), vec![2]);
        l.finished(&row(2, "a"), true);
        assert_eq!(ids(&mut l), vec![4]);
        l.finished(&row(4, "a"), true);
        assert_eq!(ids(&mut l), Vec::<i64>::new());
        assert_eq!(l.held_len(), 5, "held until recorded");
        for id in 1..=5 {
            l.recorded(id);
        }
        assert_eq!(l.held_len(), 0);
    }

    #[test]
    fn a_failure_lets_go_of_the_rows_behind_it() {
        let mut l = Lanes::default();
        for (id, key) in [(1, "a"), (2, "a"), (3, "a"), (4, "b")] {
            l.admit(row(id, key));
        }
        assert_eq!(ids(&mut l), vec![1, 4]);
        l.finished(&row(1, "a"), false);
        assert_eq!(ids(&mut l), Vec::<i64>::new());
        let mut held = l.held_ids();
        held.sort();
        assert_eq!(held, vec![1, 4], "2 and 3 are left to the outbox");
        // The key is free again: the outbox's next head of it may be admitted.
        assert!(l.admit(row(2, "a")));
        assert_eq!(ids(&mut l), vec![2]);
    }

    #[test]
    fn a_run_takes_a_keys_waiting_rows_in_order() {
        let mut l = Lanes::default();
        for (id, key) in [(1, "a"), (2, "b"), (3, "a"), (4, "a"), (5, "")] {
            l.admit(row(id, key));
        }
        assert_eq!(l.sendable_len(100), 5);
        assert_eq!(l.sendable_len(2), 2);
        let run = |l: &mut Lanes, room| {
            l.next_ready_run(room)
                .map(|r| r.iter().map(|c| c.id).collect::<Vec<_>>())
        };
        assert_eq!(run(&mut l, 2), Some(vec![1, 3]));
        assert_eq!(run(&mut l, 10), Some(vec![2]));
        assert_eq!(run(&mut l, 10), Some(vec![5]));
        assert_eq!(
            run(&mut l, 10),
            None,
            "4 waits until the key's run finished"
        );
        l.finished(&row(3, "a"), true);
        assert_eq!(run(&mut l, 10), Some(vec![4]));
    }

    /// `queued_len` is kept as rows come and go (it is asked on every turn of the pump, so it
    /// is counted, not summed over the keys).
    #[test]
    fn the_queue_length_follows_admits_runs_answers_and_forget() {
        let mut l = Lanes::default();
        for (id, key) in [(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "b"), (6, "")] {
            l.admit(row(id, key));
        }
        assert_eq!(l.queued_len(), 6);
        let first = l.next_ready_run(2).unwrap();
        assert_eq!(first.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(l.queued_len(), 4);
        l.finished(&row(2, "a"), true); // 3 becomes ready, behind 4 and 6
        assert_eq!(l.queued_len(), 4);
        assert_eq!(l.next_ready().map(|r| r.id), Some(4));
        assert_eq!(l.next_ready().map(|r| r.id), Some(6));
        assert_eq!(l.queued_len(), 2);
        l.finished(&row(4, "b"), false); // 5 is let go behind the failure
        assert_eq!(l.queued_len(), 1);
        l.admit(row(7, "c"));
        l.admit(row(8, "c"));
        l.forget();
        assert_eq!(l.queued_len(), 0);
    }

    #[test]
    fn forget_keeps_only_rows_in_flight() {
        let mut l = Lanes::default();
        for (id, key) in [(1, "a"), (2, "a"), (3, "b"), (4, "")] {
            l.admit(row(id, key));
        }
        assert_eq!(l.next_ready().map(|r| r.id), Some(1));
        l.forget();
        assert_eq!(l.held_ids(), vec![1]);
        assert_eq!(l.queued_len(), 0);
        // Key "a" stays busy until its flying row finishes.
        l.admit(row(2, "a"));
        assert_eq!(ids(&mut l), Vec::<i64>::new());
        l.finished(&row(1, "a"), true);
        assert_eq!(ids(&mut l), vec![2]);
    }
}
