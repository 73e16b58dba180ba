//! A Postgres restart (the server stopped and started again, not walhook) in the middle of a
//! backfill: walhook reconnects by itself and the backfill continues from its last stored chunk
//! to the end, with no row stored twice. Runs on its own server: restarting the shared one would
//! break every other test.

use std::time::{Duration, Instant};

use crate::durability::{stop_within, wait_slot_active};
use crate::support::bin::Runs;
use crate::support::{poll_value, sub, DELIVERY_OFF};
use walhook::embedded_pg::{PgServer, StopMode};

const ROWS: i64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_backfill_resumes_from_the_last_chunk() {
    let mut pg = PgServer::start(&[]).expect("own server");
    let db = pg.create_database().unwrap();
    pg.psql(
        &db,
        &format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, v text);
             INSERT INTO items SELECT g, repeat('v', 50) || g FROM generate_series(1, {ROWS}) g"
        ),
    )
    .unwrap();
    // Delivery off: the test counts what the backfill stored in the outbox.
    let text = crate::support::config_text(
        &pg.url(&db),
        &db,
        "p",
        DELIVERY_OFF,
        &sub(
            "s",
            "items",
            r#"["INSERT", "UPDATE", "DELETE"]"#,
            "backfill = true",
        ),
    );
    let daemon = Runs::new(&db, &text);
    let child = daemon.spawn();
    wait_slot_active(&pg, &db, &daemon).await;
    let rows_done = |pg: &PgServer| -> i64 {
        pg.psql(
            &db,
            "SELECT coalesce(max(rows_done), 0) FROM walhook.backfills",
        )
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows_done(&pg) < 5_000 {
        assert!(
            Instant::now() < deadline,
            "backfill not under way; log:\n{}",
            daemon.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_within(&mut pg, StopMode::Fast, Duration::from_secs(60), &daemon).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.restart().unwrap();
    let at_restart = rows_done(&pg);
    eprintln!("[bf-restart] Postgres restarted with {at_restart} of {ROWS} rows stored");
    assert!(
        at_restart < ROWS,
        "the backfill finished before the restart; make the table larger"
    );
    let done = poll_value(
        &pg,
        &db,
        "SELECT state || ' ' || rows_done FROM walhook.backfills",
        &format!("done {ROWS}"),
        Duration::from_secs(120),
    )
    .await;
    let log = daemon.log_tail(10_000);
    assert!(
        done,
        "backfill did not complete; log:\n{}",
        daemon.log_tail(60)
    );
    // Every row stored once: the chunks stored before the restart were not read again, and the
    // chunk in flight (its transaction lost with the server) was stored once, afterwards.
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) || ' ' || count(DISTINCT event_id) || ' ' || count(DISTINCT ordering_key)
             FROM walhook.delivery_states WHERE event = 'READ'"
        )
        .unwrap(),
        format!("{ROWS} {ROWS} {ROWS}")
    );
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM walhook.backfills")
            .unwrap(),
        "1",
        "one backfill, continued (not started again)"
    );
    assert!(
        log.contains("reconnecting"),
        "walhook never noticed the restart? {log}"
    );
    // The runner went on from the progress stored before the restart, not from the start.
    let resumed: Vec<i64> = log
        .lines()
        .filter(|l| l.contains("backfill running"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("rows_done="))
                .and_then(|v| v.parse().ok())
        })
        .collect();
    assert!(
        resumed.len() >= 2 && resumed[0] == 0 && *resumed.last().unwrap() >= at_restart.min(5_000),
        "runs of the backfill by rows_done at their start: {resumed:?}"
    );
    assert!(child.stop().await.success(), "walhook did not stop cleanly");
}
