//! Cancelling or terminating any of walhook's Postgres backends under load loses nothing and
//! does not stop walhook: every error such an interruption causes (57014, 57P01, 08006, a
//! closed connection) is retried, on the replication connection, the outbox writer, the
//! delivery pool and the ownership session alike.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::daemon::{fast_delivery, wait_value, Daemon};
use crate::support::receiver::Receiver;
use crate::support::TestDb;

const ROWS: i64 = 3000;
const PER_TXN: i64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_terminate_of_every_walhook_backend_under_load_lose_nothing() {
    let db = TestDb::new();
    db.sql("CREATE TABLE t (id bigint PRIMARY KEY, v text)");
    let rx = Receiver::ok().await;
    let subs = format!(
        "[[subscriptions]]\nid = \"s\"\ntable = \"t\"\nevents = [\"INSERT\"]\n\
         url = \"{}\"\nsecret = \"k\"\n",
        rx.url
    );
    let d = Daemon::start_standby_named(&db, "walhook_victim", &fast_delivery(""), &subs).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d
        .handles
        .streaming
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        assert!(Instant::now() < deadline, "not streaming after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The load: ROWS rows in transactions of PER_TXN, one every 15 ms.
    let writer = {
        let client = db.client().await;
        tokio::spawn(async move {
            for first in (1..=ROWS).step_by(PER_TXN as usize) {
                client
                    .execute(
                        "INSERT INTO t SELECT g, 'v' || g FROM generate_series($1::bigint, $2::bigint) g",
                        &[&first, &(first + PER_TXN - 1)],
                    )
                    .await
                    .expect("the app's inserts never fail");
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };

    // Meanwhile, every walhook backend (its sessions carry application_name walhook_victim; the
    // slot's walsender is found through the slot) is cancelled, then terminated, in turns.
    let killer = db.client().await;
    let backends = format!(
        "SELECT pid FROM pg_stat_activity
         WHERE application_name = 'walhook_victim' AND datname = current_database()
         UNION SELECT active_pid FROM pg_replication_slots
         WHERE slot_name = '{}' AND active_pid IS NOT NULL",
        db.name
    );
    let mut interrupted = 0;
    let mut round = 0;
    while !writer.is_finished() {
        let pids: Vec<i32> = killer
            .query(backends.as_str(), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let how = if round % 2 == 0 {
            "pg_cancel_backend"
        } else {
            "pg_terminate_backend"
        };
        for pid in pids {
            let done: bool = killer
                .query_one(&format!("SELECT {how}($1)"), &[&pid])
                .await
                .unwrap()
                .get(0);
            interrupted += done as usize;
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    writer.await.unwrap();
    assert!(
        round >= 6 && interrupted >= 10,
        "the load ended before the backends were interrupted enough ({round} rounds, {interrupted} interruptions)"
    );

    // Nothing lost: every row reaches the receiver (a request in flight at an interruption may
    // arrive twice, with the same event id), and the outbox holds each change once, delivered.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut rows: HashSet<i64> = HashSet::new();
    while (rows.len() as i64) < ROWS {
        assert!(
            Instant::now() < deadline,
            "only {} of {ROWS} rows arrived within 90 s of the end of the load",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        rows = rx
            .snapshot()
            .iter()
            .filter_map(|r| r.json()["record"]["id"].as_i64())
            .collect();
    }
    assert_eq!(rows, (1..=ROWS).collect::<HashSet<i64>>());
    wait_value(
        &db,
        "SELECT count(*) || '/' || count(DISTINCT event_id) || '/' || count(*) FILTER (WHERE status = 'delivered') FROM walhook.delivery_states",
        &format!("{ROWS}/{ROWS}/{ROWS}"),
        60,
    )
    .await;
    // And walhook is still running: it streams again and stops cleanly.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d
        .handles
        .streaming
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        assert!(
            Instant::now() < deadline,
            "walhook stopped streaming for good"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.stop().await;
}
