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
//!   while that pump keeps pace: it took or delivered [`PACE_MARKS`] × [`BUSY_CHUNK`] rows
//!   within the last [`PACE_WINDOW`]. Measured over a window rather than from the last take, so
//!   a pump descheduled for a few tens of milliseconds on a loaded machine is still waited for,
//!   while a slow, failing, idle or far-behind pump never holds ingest;
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
/// A writer finding a slot full waits for room only while the pump keeps pace: it took or
/// delivered [`PACE_MARKS`] chunks of [`BUSY_CHUNK`] rows within the last `PACE_WINDOW`
/// (12,800 rows/s averaged over the window; a row counts when taken and again when
/// delivered), and gives up (dropping what does not fit) as soon as it does not: a slower pump
/// never holds ingest back, and the outbox absorbs the difference. Averaged over half a second
/// because a pump's pace is bursty on a loaded machine: the rule before (a take within the
/// last 20 ms) lapsed in most W1 runs on 2 cores, and the pump then read the rest of the
/// backlog back from the outbox (a tenth to a fifth slower end to end). A pump
/// that just started taking rows from memory (or reading the outbox) must show that pace from
/// its start, a chunk per [`PACE_STEP`] (see `Pace::busy_until`), so a slow receiver's pump
/// coming back to memory after a rare success holds a writer one step at most, as before.
pub const PACE_WINDOW: Duration = Duration::from_millis(480);
/// Chunks of progress within [`PACE_WINDOW`] that make a pump worth waiting for.
pub const PACE_MARKS: usize = 24;
/// Rows taken or delivered that make one chunk of progress (see `Pace`).
pub const BUSY_CHUNK: usize = 256;
/// The pace in marks: one per this long on average (20 ms).
pub const PACE_STEP: Duration =
    Duration::from_millis(PACE_WINDOW.as_millis() as u64 / PACE_MARKS as u64);
/// A writer also waits, as above, for a pump that reads the outbox less than this many rows
/// behind what it is handing over: a pump that fell out of memory mode (a stall longer than
/// [`PACE_WINDOW`], a start behind ingest) catches up and comes back instead of reading every row
/// back while ingest runs ahead. A pump further behind (a large replay) never holds ingest.
pub const CATCH_UP_ROWS: i64 = 4 * SLOT_ROWS as i64;
/// The longest one publish waits for room, over all slots.
pub const WAIT_MAX: Duration = Duration::from_millis(500);
/// Emptied group vectors kept for reuse, at most, and the largest capacity kept (rows): a
/// hot subscription's group (up to a quarter of a slot) is reused whole, at most ~2 MB held.
const SPARE_VECS: usize = 4;
const SPARE_ROWS: usize = SLOT_ROWS / 2;

/// What a pump finds in its slot.
#[derive(Debug, Default)]
pub struct Taken {
    pub rows: VecDeque<Claimed>,
    /// Rows were dropped (the buffer was full, or someone said the outbox changed under the
    /// pump: a replay, another process's writes): read the outbox.
    pub overflowed: bool,
}

/// A pump's recent progress: a mark each time it has taken or delivered another
/// [`BUSY_CHUNK`] rows, the last [`PACE_MARKS`] kept.
#[derive(Debug, Default)]
struct Pace {
    marks: VecDeque<Instant>,
    /// Rows counted since the last mark.
    rows: usize,
    /// When measuring started: the pump began taking rows from memory, or made its first mark.
    since: Option<Instant>,
}

impl Pace {
    fn add(&mut self, rows: usize) {
        self.rows = self.rows.saturating_add(rows);
        if self.rows < BUSY_CHUNK {
            return;
        }
        let now = Instant::now();
        self.since.get_or_insert(now);
        let chunks = (self.rows / BUSY_CHUNK).min(PACE_MARKS);
        self.rows %= BUSY_CHUNK;
        for _ in 0..chunks {
            if self.marks.len() == PACE_MARKS {
                self.marks.pop_front();
            }
            self.marks.push_back(now);
        }
    }

    /// Measures afresh from now (the pump starts taking rows from memory): what it did before
    /// (e.g. a slow receiver's rare successes) does not count.
    fn restart(&mut self) {
        self.marks.clear();
        self.rows = 0;
        self.since = Some(Instant::now());
    }

    /// Until when the pump counts as keeping pace: the oldest of its last [`PACE_MARKS`]
    /// marks plus the window; a pump measured for less than that must have made a mark per
    /// [`PACE_STEP`] since it started (so a new one is given one step, and no more, to show it).
    fn busy_until(&self) -> Option<Instant> {
        if self.marks.len() >= PACE_MARKS {
            return self.marks.front().map(|t| *t + PACE_WINDOW);
        }
        let steps = u32::try_from(self.marks.len() + 1).unwrap_or(u32::MAX);
        self.since.map(|t| t + PACE_STEP * steps)
    }
}

#[derive(Debug, Default)]
struct Buf {
    rows: VecDeque<Claimed>,
    bytes: usize,
    overflowed: bool,
    /// The pump's progress: a writer waits for it only while it keeps pace.
    pace: Pace,
    /// The greatest sequence number the pump took, from the slot or the outbox (see
    /// [`Slot::progress`]).
    taken_sequence: i64,
}

impl Buf {
    /// The pump took rows up to sequence number `sequence` (from the slot or the outbox).
    fn took(&mut self, sequence: i64) {
        if sequence > self.taken_sequence {
            let rows = usize::try_from(sequence - self.taken_sequence).unwrap_or(usize::MAX);
            self.pace.add(rows);
            self.taken_sequence = sequence;
        }
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
    /// The slot is full; the rows left in the queue still wait. The pump keeps pace until then.
    Full { busy_until: Option<Instant> },
    /// The pump reads the outbox (it is not taking rows from memory); it keeps pace until then,
    /// and took rows up to this sequence number. The rows still wait.
    Reading {
        busy_until: Option<Instant>,
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

    /// The pump delivered `n` rows, which count towards its pace like rows taken: a pump
    /// working through what it holds is worth waiting for (failures do not count: a receiver
    /// failing fast is not). Wakes no one.
    pub fn finished(&self, n: usize) {
        self.buf
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pace
            .add(n);
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
            b.pace.restart();
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
                busy_until: b.pace.busy_until(),
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
        let busy_until = b.pace.busy_until();
        drop(b);
        self.notify.notify_one();
        if rows.is_empty() {
            Offered::Done
        } else {
            Offered::Full { busy_until }
        }
    }

    /// Hands `rows` over, waiting for room while the pump keeps pace (see [`PACE_WINDOW`]) and
    /// until `deadline`; what still does not fit is dropped and the slot marked overflowed. A
    /// pump that took nothing lately costs the writer no wait.
    /// Returns whether it waited, and `rows` emptied (its allocation, for the next group).
    async fn push(&self, rows: Vec<Claimed>, deadline: Instant) -> (bool, Vec<Claimed>) {
        let mut rows = VecDeque::from(rows);
        let waited = self.push_deque(&mut rows, deadline).await;
        // What did not fit was stored: the pump reads it from the outbox.
        rows.clear();
        (waited, Vec::from(rows))
    }

    async fn push_deque(&self, rows: &mut VecDeque<Claimed>, deadline: Instant) -> bool {
        let mut waited = false;
        loop {
            // Registered before the offer, so a take between the two is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let (busy_until, full) = match self.offer(rows) {
                Offered::Done => return waited,
                Offered::Full { busy_until } => (busy_until, true),
                Offered::Reading {
                    busy_until,
                    taken_sequence,
                } => {
                    let last = rows.back().and_then(|r| r.sequence).unwrap_or(i64::MAX);
                    if last.saturating_sub(taken_sequence) > CATCH_UP_ROWS {
                        return waited;
                    }
                    (busy_until, false)
                }
            };
            let until = busy_until.map_or(Instant::now(), |t| deadline.min(t));
            if until > Instant::now() {
                // Woken by a take, or when the pace would lapse: look again (the pump may have
                // finished deliveries meanwhile, see `Slot::finished`).
                waited = true;
                let _ = timeout_at(until, room).await;
                continue;
            }
            // What is left is stored: the pump reads it from the outbox.
            if full {
                let now = Instant::now();
                let since_progress_ms = self
                    .buf
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pace
                    .marks
                    .back()
                    .map(|t| now.saturating_duration_since(*t).as_millis() as u64);
                tracing::debug!(
                    left = rows.len(),
                    past_deadline = now >= deadline,
                    since_progress_ms,
                    "handoff slot full and its pump not keeping pace: the rest is left to the outbox"
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
    /// Emptied group vectors for the writer's next groups (see [`Handoff::group_vec`]).
    spare: Mutex<Vec<Vec<Claimed>>>,
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

    /// A vector for a subscription's rows of the next group: one a published group left empty
    /// when there is one. Reused because a hot subscription's group grows to thousands of rows:
    /// growing a new one each group reallocates it a dozen times, each time into fresh pages
    /// (walhook returns freed memory to the OS at once, see `main`).
    pub fn group_vec(&self) -> Vec<Claimed> {
        self.spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
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
            let (w, emptied) = slot.push(rows, deadline).await;
            waited |= w;
            let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
            if spare.len() < SPARE_VECS && emptied.capacity() <= SPARE_ROWS {
                spare.push(emptied);
            }
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
#[path = "handoff_tests.rs"]
mod tests;
