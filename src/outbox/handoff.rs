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
//!   bytes of payload. What does not fit is dropped and the slot marked `overflowed`, and the
//!   pump falls back to reading the outbox. Nothing is lost by dropping: every row handed over
//!   is already stored;
//! - a pump that keeps up paces ingest instead of being sent to read a backlog back row by
//!   row: the writer waits (at most [`WAIT_MAX`] a publish) for room in a full slot, and for a
//!   pump reading the outbox less than [`CATCH_UP_ROWS`] behind to come back to memory, only
//!   while that pump shows progress, taking or delivering rows at a pace of at least
//!   [`BUSY_CHUNK`] rows a [`PROGRESS`]. A slow, failing, idle or far-behind pump never holds
//!   ingest;
//! - the database stays the truth: a pump that ignores its slot loses only speed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::{timeout_at, Duration, Instant};

use super::queue::Claimed;

/// Rows buffered per subscription, at most.
pub const SLOT_ROWS: usize = 8192;
/// Payload bytes buffered per subscription, at most.
pub const SLOT_BYTES: usize = 16 << 20;
/// A writer finding a slot full waits for room only while the pump took rows less than this
/// long ago, and gives up (dropping what does not fit) as soon as it did not: a pump freeing
/// room (256 rows at a time, see `deliver::worker`) slower than ~13k rows/s never holds ingest
/// back, and the outbox absorbs the difference.
pub const PROGRESS: Duration = Duration::from_millis(20);
/// Deliveries a pump finishes that count as taking rows (see [`Slot::finished`]): the same
/// pace as taking rows 256 at a time.
pub const BUSY_CHUNK: usize = 256;
/// A writer also waits, as above, for a pump that reads the outbox less than this many rows
/// behind what it is handing over: a pump that fell out of memory mode (a stall longer than
/// [`PROGRESS`], a start behind ingest) catches up and comes back instead of reading every row
/// back while ingest runs ahead. A pump further behind (a large replay) never holds ingest.
pub const CATCH_UP_ROWS: i64 = 4 * SLOT_ROWS as i64;
/// The longest one publish waits for room, over all slots.
pub const WAIT_MAX: Duration = Duration::from_millis(500);

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
    /// When the pump last took rows, from the slot or the outbox (or started accepting them):
    /// a writer waits for it only while this is recent.
    last_take: Option<Instant>,
    /// Deliveries finished since `last_take` last moved for them (see [`Slot::finished`]).
    finished: usize,
    /// The greatest sequence number the pump took, from the slot or the outbox (see
    /// [`Slot::progress`]).
    taken_sequence: i64,
}

impl Buf {
    /// The pump took rows up to sequence number `sequence` (from the slot or the outbox).
    fn took(&mut self, sequence: i64) {
        self.taken_sequence = self.taken_sequence.max(sequence);
        self.last_take = Some(Instant::now());
    }
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
    /// Notified (all waiters) whenever the pump takes rows or stops accepting: a waiting writer
    /// tries again.
    room: Notify,
}

/// What [`Slot::offer`] did with the rows it was given.
#[derive(Debug, PartialEq, Eq)]
enum Offered {
    /// Kept, or dropped because the pump does not want them (or the slot overflowed already):
    /// nothing left to hand over.
    Done,
    /// The slot is full; the rows left in the queue still wait. The pump last took rows then.
    Full { last_take: Option<Instant> },
    /// The pump reads the outbox (it is not taking rows from memory); it last took rows then,
    /// up to this sequence number. The rows still wait.
    Reading {
        last_take: Option<Instant>,
        taken_sequence: i64,
    },
}

impl Slot {
    /// Everything buffered, and whether anything was dropped since the last take.
    pub fn take(&self) -> Taken {
        self.take_up_to(usize::MAX)
    }

    /// The first `max` rows buffered (the rest stay, in order), and whether anything was
    /// dropped since the last take.
    pub fn take_up_to(&self, max: usize) -> Taken {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let rows: VecDeque<Claimed> = if max >= b.rows.len() {
            std::mem::take(&mut b.rows)
        } else {
            // Moves the rows taken only, not the ones that stay.
            b.rows.drain(..max).collect()
        };
        b.bytes = b
            .bytes
            .saturating_sub(rows.iter().map(|r| r.payload.len()).sum::<usize>());
        let taken = Taken {
            rows,
            overflowed: b.overflowed,
        };
        b.overflowed = false;
        if let Some(last) = taken.rows.back() {
            b.took(last.sequence.unwrap_or(0));
            drop(b);
            self.room.notify_waiters();
        }
        taken
    }

    /// The pump took rows from the outbox, up to sequence number `sequence`: a writer waits
    /// for it while it is catching up (see [`CATCH_UP_ROWS`]).
    pub fn progress(&self, sequence: i64) {
        self.buf
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .took(sequence);
        self.room.notify_waiters();
    }

    /// The pump delivered `n` rows. Every [`BUSY_CHUNK`] of them counts as taking rows: a pump
    /// working through what it holds at that pace is worth waiting for (failures do not count:
    /// a receiver failing fast is not). Wakes no one.
    pub fn finished(&self, n: usize) {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        b.finished += n;
        if b.finished >= BUSY_CHUNK {
            b.finished = 0;
            b.last_take = Some(Instant::now());
        }
    }

    /// Whether rows wait in the buffer.
    pub fn has_rows(&self) -> bool {
        !self
            .buf
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rows
            .is_empty()
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
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if yes {
            b.last_take = Some(Instant::now());
        } else {
            b.rows.clear();
            b.bytes = 0;
        }
        drop(b);
        // A waiting writer hands its rows over now, or stops waiting.
        self.room.notify_waiters();
    }

    /// Keeps as many of `rows` as fit, in order, and wakes the pump.
    fn offer(&self, rows: &mut VecDeque<Claimed>) -> Offered {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if !self.accepting.load(Ordering::Acquire) {
            let reading = Offered::Reading {
                last_take: b.last_take,
                taken_sequence: b.taken_sequence,
            };
            drop(b);
            self.notify.notify_one();
            return reading;
        }
        if b.overflowed {
            rows.clear();
        }
        while let Some(row) = rows.front() {
            // An empty buffer takes any row, so one larger than SLOT_BYTES still gets through.
            let fits = b.rows.is_empty()
                || (b.rows.len() < SLOT_ROWS && b.bytes + row.payload.len() <= SLOT_BYTES);
            if !fits {
                break;
            }
            let row = rows.pop_front().expect("front exists");
            b.bytes += row.payload.len();
            b.rows.push_back(row);
        }
        let last_take = b.last_take;
        drop(b);
        self.notify.notify_one();
        if rows.is_empty() {
            Offered::Done
        } else {
            Offered::Full { last_take }
        }
    }

    /// Hands `rows` over, waiting for room while the pump keeps taking rows (it took some
    /// less than [`PROGRESS`] ago) and until `deadline`; what still does not fit is dropped and
    /// the slot marked overflowed. A pump that took nothing lately costs the writer no wait.
    /// Returns whether it waited.
    async fn push(&self, rows: Vec<Claimed>, deadline: Instant) -> bool {
        let mut rows = VecDeque::from(rows);
        let mut waited = false;
        loop {
            // Registered before the offer, so a take between the two is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let (last_take, full) = match self.offer(&mut rows) {
                Offered::Done => return waited,
                Offered::Full { last_take } => (last_take, true),
                Offered::Reading {
                    last_take,
                    taken_sequence,
                } => {
                    let last = rows.back().and_then(|r| r.sequence).unwrap_or(i64::MAX);
                    if last.saturating_sub(taken_sequence) > CATCH_UP_ROWS {
                        return waited;
                    }
                    (last_take, false)
                }
            };
            let until = last_take.map_or(Instant::now(), |t| deadline.min(t + PROGRESS));
            if until > Instant::now() {
                // Woken by a take, or at the end of PROGRESS: look again (the pump may have
                // finished deliveries meanwhile, see `Slot::busy`).
                waited = true;
                let _ = timeout_at(until, room).await;
                continue;
            }
            // What is left is stored: the pump reads it from the outbox.
            if full {
                let past_deadline = Instant::now() >= deadline;
                tracing::debug!(
                    left = rows.len(),
                    past_deadline,
                    "handoff slot full and its pump not taking: the rest is left to the outbox"
                );
                self.mark_overflowed();
            }
            return waited;
        }
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
        if let Some(slot) = slots.remove(subscription) {
            slot.accept(false);
        }
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
    /// without a pump here are dropped (whoever owns it reads the outbox). Waits while a full
    /// slot's pump keeps taking rows, [`WAIT_MAX`] at most in all; returns how long it took
    /// when it waited (zero otherwise).
    pub async fn publish(&self, rows: HashMap<Arc<str>, Vec<Claimed>>) -> Duration {
        let slots: Vec<(Arc<Slot>, Vec<Claimed>)> = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            rows.into_iter()
                .filter_map(|(sub, rows)| slots.get(&sub).map(|s| (s.clone(), rows)))
                .collect()
        };
        let start = Instant::now();
        let deadline = start + WAIT_MAX;
        let mut waited = false;
        for (slot, rows) in slots {
            waited |= slot.push(rows, deadline).await;
        }
        if waited {
            start.elapsed()
        } else {
            Duration::ZERO
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
                tracing::debug!(
                    subscription = sub,
                    last_sequence,
                    next,
                    "rows stored a poll ago were not handed to the pump"
                );
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

    #[tokio::test]
    async fn rows_reach_only_registered_slots_in_order() {
        let h = Handoff::new();
        let slot = h.register("a");
        let mut rows = HashMap::new();
        rows.insert(Arc::from("a"), vec![row(0, "dropped: not accepting")]);
        h.publish(rows).await;
        assert!(slot.take().rows.is_empty());
        slot.accept(true);
        let mut rows = HashMap::new();
        rows.insert(Arc::from("a"), vec![row(1, "x"), row(2, "y")]);
        rows.insert(Arc::from("b"), vec![row(1, "z")]);
        h.publish(rows).await;
        let t = slot.take();
        assert!(!t.overflowed);
        let seqs: Vec<i64> = t.rows.iter().filter_map(|r| r.sequence).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert!(slot.take().rows.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_slot_drops_everything_and_says_so() {
        let h = Handoff::new();
        let slot = h.register("a");
        slot.accept(true);
        let big = "x".repeat(SLOT_BYTES / 2 + 1);
        let mut rows = HashMap::new();
        rows.insert(
            Arc::from("a"),
            vec![row(1, &big), row(2, &big), row(3, "y")],
        );
        h.publish(rows).await;
        let t = slot.take();
        assert!(t.overflowed);
        assert!(t.rows.is_empty());
        // Once taken, the slot starts afresh.
        let mut rows = HashMap::new();
        rows.insert(Arc::from("a"), vec![row(4, "z")]);
        h.publish(rows).await;
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

    fn rows(from: i64, to: i64) -> HashMap<Arc<str>, Vec<Claimed>> {
        HashMap::from([(Arc::from("a"), (from..=to).map(|s| row(s, "p")).collect())])
    }

    /// A pump taking `chunk` rows every millisecond until it has `want`, noting any overflow.
    fn pump(
        slot: Arc<Slot>,
        chunk: usize,
        want: usize,
    ) -> tokio::task::JoinHandle<(Vec<i64>, bool)> {
        tokio::spawn(async move {
            let (mut got, mut overflowed) = (Vec::new(), false);
            while got.len() < want && !overflowed {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let t = slot.take_up_to(chunk);
                overflowed |= t.overflowed;
                got.extend(t.rows.iter().filter_map(|r| r.sequence));
            }
            (got, overflowed)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_waits_for_a_pump_that_keeps_taking() {
        let h = Handoff::new();
        let slot = h.register("a");
        slot.accept(true);
        let n = SLOT_ROWS * 3;
        let taker = pump(slot.clone(), 256, n);
        let start = Instant::now();
        let waited = h.publish(rows(1, n as i64)).await;
        assert_eq!(waited, start.elapsed(), "what ingest waited is reported");
        let (got, overflowed) = taker.await.unwrap();
        assert!(!overflowed, "the pump kept taking: nothing may be dropped");
        assert_eq!(got, (1..=n as i64).collect::<Vec<_>>());
        // 2 × SLOT_ROWS rows had to wait for room, 256 a millisecond.
        assert!(
            start.elapsed() >= Duration::from_millis(60),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pump_that_took_nothing_lately_costs_the_writer_no_wait() {
        let h = Handoff::new();
        let slot = h.register("a");
        slot.accept(true);
        tokio::time::sleep(PROGRESS * 2).await;
        let start = Instant::now();
        let waited = h.publish(rows(1, SLOT_ROWS as i64 + 1)).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "no wait for an idle pump");
        assert_eq!(waited, Duration::ZERO);
        let t = slot.take();
        assert!(t.overflowed && t.rows.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pump_that_stops_taking_is_given_up_after_progress() {
        let h = Handoff::new();
        let slot = h.register("a");
        slot.accept(true);
        // Takes once, then never again.
        let taker = pump(slot.clone(), 256, 256);
        let start = Instant::now();
        h.publish(rows(1, SLOT_ROWS as i64 + 300)).await;
        let waited = start.elapsed();
        let (got, _) = taker.await.unwrap();
        assert_eq!(got.len(), 256);
        assert!(waited >= PROGRESS && waited < PROGRESS * 2, "{waited:?}");
        assert!(
            slot.take().overflowed,
            "what did not fit is left to the outbox"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pump_leaving_memory_is_waited_for_only_while_it_progresses() {
        let h = Handoff::new();
        let slot = h.register("a");
        slot.accept(true);
        let leaver = {
            let slot = slot.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                slot.accept(false);
            })
        };
        let start = Instant::now();
        h.publish(rows(1, SLOT_ROWS as i64 + 1)).await;
        // It reads the outbox now, close behind: the writer waits while it makes progress;
        // it made none since it started accepting (at 0), so PROGRESS after that.
        assert_eq!(start.elapsed(), PROGRESS);
        leaver.await.unwrap();
        let t = slot.take();
        assert!(t.rows.is_empty() && !t.overflowed);
    }

    #[test]
    fn a_pump_takes_what_it_has_room_for_in_order() {
        let slot = Slot::default();
        slot.accept(true);
        let mut rows: VecDeque<Claimed> = (1..=10).map(|s| row(s, "p")).collect();
        assert_eq!(slot.offer(&mut rows), Offered::Done);
        let seqs = |t: Taken| t.rows.iter().filter_map(|r| r.sequence).collect::<Vec<_>>();
        assert_eq!(seqs(slot.take_up_to(3)), vec![1, 2, 3]);
        assert_eq!(seqs(slot.take_up_to(0)), Vec::<i64>::new());
        assert!(slot.has_rows());
        assert_eq!(seqs(slot.take()), (4..=10).collect::<Vec<_>>());
        assert!(!slot.has_rows());
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_waits_for_a_pump_catching_up_from_the_outbox() {
        let h = Handoff::new();
        let slot = h.register("a");
        // Reading the outbox (not accepting), 1,000 rows behind, taking 256 a millisecond.
        slot.progress(1_000);
        let catcher = {
            let slot = slot.clone();
            tokio::spawn(async move {
                for top in (1_256..=2_000).step_by(256) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    slot.progress(top);
                }
                // Caught up: takes from memory from here on.
                slot.accept(true);
            })
        };
        let start = Instant::now();
        let waited = h.publish(rows(1_001, 2_000)).await;
        catcher.await.unwrap();
        assert_eq!(
            waited,
            Duration::from_millis(3),
            "ingest waited while it caught up"
        );
        let t = slot.take();
        assert!(!t.overflowed);
        assert_eq!(t.rows.len(), 1_000, "handed over once it takes from memory");
        assert_eq!(start.elapsed(), waited);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pump_far_behind_or_idle_never_holds_the_writer() {
        let h = Handoff::new();
        let slot = h.register("a");
        slot.progress(1);
        let far = CATCH_UP_ROWS + 2;
        assert_eq!(h.publish(rows(far, far)).await, Duration::ZERO);
        tokio::time::sleep(PROGRESS).await;
        assert_eq!(
            h.publish(rows(2, 3)).await,
            Duration::ZERO,
            "took nothing lately"
        );
        assert!(!slot.has_rows() && !slot.take().overflowed);
    }

    #[tokio::test(start_paused = true)]
    async fn finishing_deliveries_keeps_a_writer_waiting() {
        let h = Handoff::new();
        let slot = h.register("a");
        slot.accept(true);
        h.publish(rows(1, SLOT_ROWS as i64)).await;
        // Busy sending what it holds for 60 ms (256 deliveries every 10 ms), then takes.
        let pump = {
            let slot = slot.clone();
            tokio::spawn(async move {
                for _ in 0..6 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    slot.finished(BUSY_CHUNK);
                }
                slot.take_up_to(256).rows.len()
            })
        };
        let waited = h
            .publish(rows(SLOT_ROWS as i64 + 1, SLOT_ROWS as i64 + 1))
            .await;
        assert_eq!(pump.await.unwrap(), 256);
        assert_eq!(waited, Duration::from_millis(60));
        assert!(!slot.take().overflowed, "nothing was dropped");
    }
}
