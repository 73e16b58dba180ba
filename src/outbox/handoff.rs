//! Fresh deliveries handed from the ingest writer to this process's delivery pumps right after
//! their outbox transaction committed, so that the happy path does not read back what it has
//! just written.
//!
//! Guarantees:
//! - a row is handed over only after its outbox transaction committed: a pump never sends what
//!   a crash could still roll back;
//! - rows of one subscription are handed over in sequence order (one writer, commits in order),
//!   so a pump that sees a sequence number other than the next one it expects knows it missed
//!   something and reads the outbox instead;
//! - bounded: each subscription's buffer holds at most [`SLOT_ROWS`] rows and [`SLOT_BYTES`]
//!   bytes of payload; what does not fit is dropped and the slot marked `overflowed`, and the
//!   pump falls back to reading the outbox. Nothing is lost by dropping: every row handed over
//!   is already stored;
//! - the database stays the truth: a pump that ignores its slot loses only speed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::queue::Claimed;

/// Rows buffered per subscription, at most.
pub const SLOT_ROWS: usize = 8192;
/// Payload bytes buffered per subscription, at most.
pub const SLOT_BYTES: usize = 16 << 20;

/// What a pump finds in its slot.
#[derive(Debug, Default)]
pub struct Taken {
    pub rows: VecDeque<Claimed>,
    /// Rows were dropped (the buffer was full, or someone said the outbox changed under the
    /// pump: a replay, another process's writes): read the outbox.
    pub overflowed: bool,
}

#[derive(Debug, Default)]
struct Buf {
    rows: VecDeque<Claimed>,
    bytes: usize,
    overflowed: bool,
}

/// One subscription's slot, held by its pump.
#[derive(Debug, Default)]
pub struct Slot {
    buf: Mutex<Buf>,
    /// Whether the pump wants rows kept (it takes new rows from memory, or is about to);
    /// otherwise rows are dropped and the pump is only woken.
    accepting: AtomicBool,
    /// Someone replayed deliveries: the receiver was probably fixed, so an open breaker should
    /// probe now rather than wait out its cooldown.
    probe: AtomicBool,
    /// The outbox holds rows of the subscription that were not handed over and may lie before
    /// what the pump took (another instance's writer, a replay): it reads the outbox whole.
    reread: AtomicBool,
    /// The sequence number the pump expects next while it takes rows from memory; 0 otherwise
    /// (it then reads the outbox on its own). See [`Handoff::wake_behind`].
    memory_next: AtomicI64,
    /// Notified whenever rows arrive or the slot overflows.
    pub notify: Notify,
}

impl Slot {
    /// Everything buffered, and whether anything was dropped since the last take.
    pub fn take(&self) -> Taken {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let taken = Taken {
            rows: std::mem::take(&mut b.rows),
            overflowed: b.overflowed,
        };
        b.bytes = 0;
        b.overflowed = false;
        taken
    }

    /// Whether a replay asked for a probe since the last call.
    pub fn take_probe(&self) -> bool {
        self.probe.swap(false, Ordering::AcqRel)
    }

    /// Whether the pump must read the outbox whole (see `reread`) since the last call.
    pub fn take_reread(&self) -> bool {
        self.reread.swap(false, Ordering::AcqRel)
    }

    /// The pump takes rows from memory and expects `next` (a sequence number), or 0: it reads
    /// the outbox on its own.
    pub fn set_memory_next(&self, next: i64) {
        self.memory_next.store(next, Ordering::Relaxed);
    }

    /// Keep rows from now on (true) or only wake the pump (false, which empties the buffer).
    pub fn accept(&self, yes: bool) {
        self.accepting.store(yes, Ordering::Release);
        if !yes {
            let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            b.rows.clear();
            b.bytes = 0;
        }
    }

    fn push(&self, rows: Vec<Claimed>) {
        if !self.accepting.load(Ordering::Acquire) {
            self.notify.notify_one();
            return;
        }
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        for row in rows {
            if b.overflowed || b.rows.len() >= SLOT_ROWS || b.bytes + row.payload.len() > SLOT_BYTES
            {
                b.overflowed = true;
                b.rows.clear();
                b.bytes = 0;
                break;
            }
            b.bytes += row.payload.len();
            b.rows.push_back(row);
        }
        drop(b);
        self.notify.notify_one();
    }

    /// Rows were replayed: the pump reads the outbox whole (a probe implies it), and an open
    /// breaker probes now.
    fn mark_replayed(&self) {
        self.probe.store(true, Ordering::Release);
        self.mark_overflowed();
    }

    fn mark_overflowed(&self) {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        b.overflowed = true;
        b.rows.clear();
        b.bytes = 0;
        drop(b);
        self.notify.notify_one();
    }
}

/// The registry of slots of this process's pumps; cheap to share.
#[derive(Debug, Default)]
pub struct Handoff {
    slots: Mutex<HashMap<Arc<str>, Arc<Slot>>>,
}

impl Handoff {
    pub fn new() -> Arc<Handoff> {
        Arc::new(Handoff::default())
    }

    /// The slot of `subscription`'s pump (one per subscription and process; a replacement pump
    /// takes over the same slot).
    pub fn register(&self, subscription: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(Arc::from(subscription)).or_default().clone()
    }

    /// Forgets a stopped subscription's slot.
    pub fn unregister(&self, subscription: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.remove(subscription);
    }

    /// Whether any pump of this process listens (the writer keeps rows only then).
    pub fn is_listening(&self) -> bool {
        !self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Hands committed rows over, per subscription in sequence order; rows of a subscription
    /// without a pump here are dropped (whoever owns it reads the outbox).
    pub fn publish(&self, rows: HashMap<Arc<str>, Vec<Claimed>>) {
        let slots: Vec<(Arc<Slot>, Vec<Claimed>)> = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            rows.into_iter()
                .filter_map(|(sub, rows)| slots.get(&sub).map(|s| (s.clone(), rows)))
                .collect()
        };
        for (slot, rows) in slots {
            slot.push(rows);
        }
    }

    /// Deliveries of `subscription` were replayed: its pump reads the outbox and an open breaker
    /// sends its probe now.
    pub fn replayed(&self, subscription: &str) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(subscription) {
            slot.mark_replayed();
        }
    }

    /// Wakes, to read the outbox, the pumps taking rows from memory whose subscription moved
    /// without them: each item is a subscription, its last sequence number as stored a while ago
    /// (rows this process stored have been handed over since), and whether its rows were
    /// replayed since. Returns how many were woken.
    pub fn wake_behind<'a>(&self, seen: impl IntoIterator<Item = (&'a str, i64, bool)>) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut woken = 0;
        for (sub, last_sequence, replayed) in seen {
            let Some(slot) = slots.get(sub) else { continue };
            let next = slot.memory_next.load(Ordering::Relaxed);
            if next > 0 && replayed {
                // As a replay made through this process: an open breaker probes now.
                slot.mark_replayed();
                woken += 1;
            } else if next > 0 && last_sequence >= next {
                slot.reread.store(true, Ordering::Release);
                slot.mark_overflowed();
                woken += 1;
            }
        }
        woken
    }

    /// Tells the pumps of `subscriptions` that the outbox holds rows they were not handed
    /// (rows dropped by the writer, a replay): they read the outbox.
    pub fn dirty<'a>(&self, subscriptions: impl IntoIterator<Item = &'a str>) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for sub in subscriptions {
            if let Some(slot) = slots.get(sub) {
                slot.mark_overflowed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pumps_in_memory_that_missed_rows_are_woken() {
        let h = Handoff::default();
        let (a, b, c) = (h.register("a"), h.register("b"), h.register("c"));
        a.set_memory_next(11); // holds up to 10
        b.set_memory_next(11);
        // c reads the outbox on its own (0): never woken by this.
        let woken = h.wake_behind([
            ("a", 10, false),
            ("b", 11, false),
            ("c", 99, true),
            ("x", 5, true),
        ]);
        assert_eq!(woken, 1);
        assert!(
            !a.take().overflowed && !a.take_reread(),
            "a has everything up to 10"
        );
        assert!(
            b.take().overflowed && b.take_reread() && !b.take_probe(),
            "b misses 11"
        );
        assert!(!c.take().overflowed && !c.take_reread());
        // A replay wakes a pump in memory whatever the numbers say, and probes.
        assert_eq!(h.wake_behind([("a", 3, true)]), 1);
        assert!(a.take().overflowed && a.take_probe());
    }

    fn row(seq: i64, payload: &str) -> Claimed {
        Claimed {
            id: seq,
            event_id: format!("evt_{seq}"),
            event: "INSERT".into(),
            ordering_key: String::new(),
            payload: payload.into(),
            attempts: 0,
            sequence: Some(seq),
            fresh: true,
        }
    }

    #[test]
    fn rows_reach_only_registered_slots_in_order() {
        let h = Handoff::new();
        let slot = h.register("a");
        let mut rows = HashMap::new();
        rows.insert(Arc::from("a"), vec![row(0, "dropped: not accepting")]);
        h.publish(rows);
        assert!(slot.take().rows.is_empty());
        slot.accept(true);
        let mut rows = HashMap::new();
        rows.insert(Arc::from("a"), vec![row(1, "x"), row(2, "y")]);
        rows.insert(Arc::from("b"), vec![row(1, "z")]);
        h.publish(rows);
        let t = slot.take();
        assert!(!t.overflowed);
        let seqs: Vec<i64> = t.rows.iter().filter_map(|r| r.sequence).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert!(slot.take().rows.is_empty());
    }

    #[test]
    fn a_full_slot_drops_everything_and_says_so() {
        let h = Handoff::new();
        let slot = h.register("a");
        slot.accept(true);
        let big = "x".repeat(SLOT_BYTES / 2 + 1);
        let mut rows = HashMap::new();
        rows.insert(
            Arc::from("a"),
            vec![row(1, &big), row(2, &big), row(3, "y")],
        );
        h.publish(rows);
        let t = slot.take();
        assert!(t.overflowed);
        assert!(t.rows.is_empty());
        // Once taken, the slot starts afresh.
        let mut rows = HashMap::new();
        rows.insert(Arc::from("a"), vec![row(4, "z")]);
        h.publish(rows);
        let t = slot.take();
        assert!(!t.overflowed);
        assert_eq!(t.rows.len(), 1);
    }

    #[test]
    fn dirty_marks_only_the_named_slots() {
        let h = Handoff::new();
        let a = h.register("a");
        let b = h.register("b");
        h.dirty(["a"]);
        assert!(a.take().overflowed);
        assert!(!b.take().overflowed);
    }
}
