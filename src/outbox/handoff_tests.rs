//! Tests of [`super`]: the writer's waits run on paused tokio time, so the durations are exact.

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
fn pump(slot: Arc<Slot>, chunk: usize, want: usize) -> tokio::task::JoinHandle<(Vec<i64>, bool)> {
    pump_pausing(slot, chunk, want, usize::MAX, Duration::ZERO)
}

/// [`pump`], which once it has `pause_at` rows stops taking for `pause`.
fn pump_pausing(
    slot: Arc<Slot>,
    chunk: usize,
    want: usize,
    pause_at: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<(Vec<i64>, bool)> {
    tokio::spawn(async move {
        let (mut got, mut overflowed, mut paused) = (Vec::new(), false, false);
        while got.len() < want && !overflowed {
            let wait = if !paused && got.len() >= pause_at {
                paused = true;
                pause
            } else {
                Duration::from_millis(1)
            };
            tokio::time::sleep(wait).await;
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
async fn a_pump_keeping_pace_is_waited_for_through_a_short_pause() {
    let h = Handoff::new();
    let slot = h.register("a");
    slot.accept(true);
    let n = SLOT_ROWS * 3;
    // 256 rows a millisecond, but descheduled for 150 ms once it has 4,096 rows (longer
    // than the 20 ms a single late take was once forgiven).
    let taker = pump_pausing(slot.clone(), 256, n, 4096, Duration::from_millis(150));
    let waited = h.publish(rows(1, n as i64)).await;
    let (got, overflowed) = taker.await.unwrap();
    assert!(!overflowed, "a pause within the pace window drops nothing");
    assert_eq!(got, (1..=n as i64).collect::<Vec<_>>());
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_pump_below_pace_is_not_waited_for() {
    let h = Handoff::new();
    let slot = h.register("a");
    slot.accept(true);
    assert_eq!(h.publish(rows(1, SLOT_ROWS as i64)).await, Duration::ZERO);
    // Delivers what it holds at 256 rows every 30 ms (~8.5k rows/s), taking nothing.
    let slow = {
        let slot = slot.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                slot.finished(BUSY_CHUNK);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let start = Instant::now();
    let last = SLOT_ROWS as i64 + 1;
    assert_eq!(h.publish(rows(last, last)).await, Duration::ZERO);
    assert_eq!(start.elapsed(), Duration::ZERO, "no wait for a slow pump");
    assert!(slot.take().overflowed, "the row is left to the outbox");
    slow.abort();
}

#[tokio::test(start_paused = true)]
async fn a_pump_that_took_nothing_lately_costs_the_writer_no_wait() {
    let h = Handoff::new();
    let slot = h.register("a");
    slot.accept(true);
    tokio::time::sleep(PACE_WINDOW * 2).await;
    let start = Instant::now();
    let waited = h.publish(rows(1, SLOT_ROWS as i64 + 1)).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "no wait for an idle pump");
    assert_eq!(waited, Duration::ZERO);
    let t = slot.take();
    assert!(t.overflowed && t.rows.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_pump_that_stops_taking_is_given_up_when_its_pace_lapses() {
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
    // Measured from its start (at 0): one mark (at 1 ms) buys it two steps, no more.
    assert_eq!(waited, PACE_STEP * 2);
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
    // it made none since it started accepting (at 0), so one step after that.
    assert_eq!(start.elapsed(), PACE_STEP);
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
    tokio::time::sleep(PACE_WINDOW).await;
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
