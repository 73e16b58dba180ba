//! A backlog bigger than a pump's memory queue, and a backlog found at start: both are read
//! from the outbox in id order (no per-row head probe), which must keep each key's order and
//! lose nothing when rows fail on the way, or when their results cannot be recorded for a while.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::support::daemon::{fast_delivery, wait_value, Daemon};
use crate::support::receiver::{Answer, Receiver, Request};
use crate::support::TestDb;

const KEYS: i64 = 50;

fn subscription(url: &str) -> String {
    format!(
        "[[subscriptions]]\nid = \"kv\"\ntable = \"kv\"\n\
         events = [\"INSERT\", \"UPDATE\"]\nurl = \"{url}\"\nsecret = \"whsec_backlog\"\n"
    )
}

/// Per key, the values of every request in arrival order (retries included), and the event
/// ids answered 2xx with how often.
fn by_key(
    reqs: &[Request],
    failed: &HashSet<String>,
) -> (HashMap<i64, Vec<i64>>, HashMap<String, usize>) {
    let mut keys: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut ok: HashMap<String, usize> = HashMap::new();
    let mut failed_once = failed.clone();
    for r in reqs {
        let b = r.json();
        let k = b["record"]["k"].as_i64().unwrap();
        let v = b["record"]["v"].as_i64().unwrap();
        keys.entry(k).or_default().push(v);
        let id = b["id"].as_str().unwrap().to_string();
        // The first request of a failed event was answered 500; the others 200.
        if !failed_once.remove(&id) {
            *ok.entry(id).or_default() += 1;
        }
    }
    (keys, ok)
}

/// A receiver answering 500 to the first request of each event whose record's `(k, v)` fails,
/// 200 to every other; and the event ids it failed.
async fn failing_once(
    fails: impl Fn(i64, i64) -> bool + Send + Sync + 'static,
) -> (Receiver, Arc<Mutex<HashSet<String>>>) {
    let failed: Arc<Mutex<HashSet<String>>> = Default::default();
    let seen_failed = failed.clone();
    let rx = Receiver::scripted(move |r, _| {
        let b = r.json();
        let k = b["record"]["k"].as_i64().unwrap_or(-1);
        let v = b["record"]["v"].as_i64().unwrap_or(-1);
        let id = b["id"].as_str().unwrap_or_default().to_string();
        if fails(k, v) && seen_failed.lock().unwrap().insert(id) {
            Answer::Status(500)
        } else {
            Answer::Status(200)
        }
    })
    .await;
    (rx, failed)
}

/// Waits until the outbox holds `total` deliveries, every one delivered.
async fn wait_all_delivered(db: &TestDb, total: i64) {
    wait_value(
        db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') || '/' || count(*) FROM walhook.delivery_states",
        &format!("{total}/{total}"),
        120,
    )
    .await;
}

/// Key `k`'s values 0..=`last` as a receiver must see them: one request at a time in commit
/// order, a value that fails once retried before any later value of its key goes out.
fn expected_arrivals(k: i64, last: i64, fails: impl Fn(i64, i64) -> bool) -> Vec<i64> {
    let mut expected = Vec::new();
    for v in 0..=last {
        if fails(k, v) {
            expected.push(v);
        }
        expected.push(v);
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_read_in_id_order_keeps_each_key_in_order_through_failures() {
    let db = TestDb::new();
    db.sql("CREATE TABLE kv (k int PRIMARY KEY, v int NOT NULL)");
    // Each key's values 3 and 110 fail once (500), then succeed.
    let fails = |_: i64, v: i64| v == 3 || v == 110;
    let (rx, failed) = failing_once(fails).await;
    // A small in-flight cap: the pump's memory queue is its 4096-row minimum, and one
    // transaction of 5,050 changes does not fit.
    let delivery = fast_delivery(
        "max_in_flight = 4\nretry_schedule = [\"0s\", \"200ms\"]\nbreaker_failures = 100000",
    );
    let d = Daemon::start(&db, &delivery, &subscription(&rx.url)).await;
    let mut one_txn =
        format!("BEGIN; INSERT INTO kv SELECT g, 0 FROM generate_series(1, {KEYS}) g;");
    for _ in 0..100 {
        one_txn.push_str("UPDATE kv SET v = v + 1;");
    }
    one_txn.push_str("COMMIT;");
    db.sql(&one_txn);
    let first = KEYS * 101;
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') FROM walhook.delivery_states",
        &first.to_string(),
        120,
    )
    .await;
    d.stop().await;

    // Written while walhook is stopped: at start the pump holds nothing and reads it all from
    // the outbox in id order.
    let mut later = String::from("BEGIN;");
    for _ in 0..20 {
        later.push_str("UPDATE kv SET v = v + 1;");
    }
    later.push_str("COMMIT;");
    db.sql(&later);
    let d = Daemon::start(&db, &delivery, &subscription(&rx.url)).await;
    let total = KEYS * 121;
    wait_all_delivered(&db, total).await;
    d.stop().await;

    let reqs = rx.snapshot();
    let failed = failed.lock().unwrap().clone();
    assert_eq!(
        failed.len() as i64,
        KEYS * 2,
        "each key's values 3 and 110 failed once"
    );
    let (keys, ok) = by_key(&reqs, &failed);
    assert_eq!(keys.len() as i64, KEYS);
    for (k, values) in &keys {
        assert_eq!(values, &expected_arrivals(*k, 120, fails), "key {k}");
    }
    // Every event answered 2xx exactly once.
    assert_eq!(ok.len() as i64, total);
    assert!(ok.values().all(|n| *n == 1), "an event was delivered twice");
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.delivery_states WHERE attempts <> 1 + (payload::jsonb->'record'->>'v' IN ('3', '110'))::int"),
        "0"
    );
}

/// While the outbox does not answer record statements (here: every UPDATE of `deliveries` and
/// INSERT of `delivered_runs` waits for a lock the test holds, through a statement trigger;
/// ingest only inserts into `deliveries`), a pump sends at most a bounded number of requests
/// whose results it cannot record, then waits; once records go through again, everything is
/// delivered exactly once and recorded. (The pump may stop earlier, at a transaction's handoff
/// it does not take while its results wait: the count is then a multiple of 100, plus one;
/// the bound is what `deliver::worker` guarantees either way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_stay_bounded_while_results_cannot_be_recorded_and_nothing_is_lost_after() {
    const ROWS: usize = 12_000;
    // The bound for max_in_flight = 4 and one event per request (deliver::worker).
    const BOUND: usize = 4096;
    let db = TestDb::new();
    db.sql("CREATE TABLE kv (k int PRIMARY KEY, v int NOT NULL)");
    let rx = Receiver::ok().await;
    let daemon = Daemon::start(
        &db,
        &fast_delivery("max_in_flight = 4"),
        &subscription(&rx.url),
    )
    .await;
    // One change delivered and recorded first: the pump is warm and in memory mode.
    db.sql("INSERT INTO kv VALUES (0, 0)");
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_states WHERE status = 'delivered'",
        "1",
        20,
    )
    .await;
    db.sql(
        "CREATE FUNCTION test_hold_records() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$;
         CREATE TRIGGER test_hold_records BEFORE UPDATE ON walhook.deliveries
             FOR EACH STATEMENT EXECUTE FUNCTION test_hold_records();
         CREATE TRIGGER test_hold_runs BEFORE INSERT ON walhook.delivered_runs
             FOR EACH STATEMENT EXECUTE FUNCTION test_hold_records();",
    );
    let mut blocker = db.client().await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("SELECT pg_advisory_xact_lock(4242)")
        .await
        .unwrap();
    // Small transactions, as an application writes: each is handed to the pump from memory
    // as it commits, so only the bound on unrecorded results can stop the sends.
    let writer = db.client().await;
    for t in 0..(ROWS / 100) as i32 {
        writer
            .execute(
                "INSERT INTO kv SELECT g, 1 FROM generate_series($1::int, $2::int) g",
                &[&(t * 100 + 1), &(t * 100 + 100)],
            )
            .await
            .unwrap();
    }
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_states",
        &(ROWS + 1).to_string(),
        30,
    )
    .await;
    // Sends go on until the bound, then stop: the count settles below it.
    let mut last = rx.count();
    let mut still_for = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while still_for < 20 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = rx.count();
        still_for = if now == last { still_for + 1 } else { 0 };
        last = now;
        assert!(
            std::time::Instant::now() < deadline,
            "sends never paused: {now} requests while records are blocked"
        );
    }
    eprintln!("requests sent while records were blocked: {last}");
    // The warm row; the bound (results unrecorded, those of the blocked record statement
    // included); and the 4 in flight when it was reached.
    assert!(
        last <= 1 + BOUND + 4,
        "{last} requests sent while no result could be recorded (bound {BOUND})"
    );
    assert!(last > 1, "nothing was sent at all");
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.delivery_states WHERE status = 'delivered'"),
        "1",
        "nothing recorded while updates of deliveries wait"
    );
    tx.rollback().await.unwrap();
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_states WHERE status = 'delivered'",
        &(ROWS + 1).to_string(),
        60,
    )
    .await;
    let reqs = rx.snapshot();
    let ids: HashSet<String> = reqs
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), ROWS + 1, "every change arrived");
    assert_eq!(reqs.len(), ROWS + 1, "and each once");
    daemon.stop().await;
}

/// Failures scattered over many keys while changes keep coming: the pump spends most of its
/// time claiming from the outbox, where claims no longer check order among rows never
/// attempted (sql/018) and the pump keeps it. Each key's requests must still arrive one at a
/// time in commit order, a failed value retried before any later value of its key, and every
/// event answered 2xx exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scattered_failures_keep_each_key_in_commit_order() {
    const ROUNDS: i64 = 100;
    let db = TestDb::new();
    db.sql("CREATE TABLE kv (k int PRIMARY KEY, v int NOT NULL)");
    let fails = |k: i64, v: i64| (k * 3 + v) % 7 == 0;
    let (rx, failed) = failing_once(fails).await;
    let delivery = fast_delivery(
        "max_in_flight = 16\nretry_schedule = [\"0s\", \"20ms\"]\nbreaker_failures = 100000",
    );
    let d = Daemon::start(&db, &delivery, &subscription(&rx.url)).await;
    db.sql(&format!(
        "INSERT INTO kv SELECT g, 0 FROM generate_series(1, {KEYS}) g"
    ));
    // Small transactions, each handed over as it commits, while earlier ones fail and retry.
    let writer = db.client().await;
    for _ in 0..ROUNDS {
        writer
            .execute("UPDATE kv SET v = v + 1", &[])
            .await
            .unwrap();
    }
    let total = KEYS * (ROUNDS + 1);
    wait_all_delivered(&db, total).await;
    d.stop().await;

    let reqs = rx.snapshot();
    let failed = failed.lock().unwrap().clone();
    let (keys, ok) = by_key(&reqs, &failed);
    assert_eq!(keys.len() as i64, KEYS);
    let mut failures = 0;
    for (k, values) in &keys {
        let expected = expected_arrivals(*k, ROUNDS, fails);
        failures += expected.len() - (ROUNDS + 1) as usize;
        assert_eq!(values, &expected, "key {k}: requests in arrival order");
    }
    assert_eq!(failed.len(), failures, "each failing value failed once");
    assert_eq!(ok.len() as i64, total);
    assert!(ok.values().all(|n| *n == 1), "an event was delivered twice");
}
