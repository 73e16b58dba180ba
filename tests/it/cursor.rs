//! The delivered cursor (sql/015): first-attempt successes are recorded as runs, their rows stay
//! `pending` on disk, and every reader (listing, attempts, gauges, replay, retention, a restarted
//! daemon) sees them delivered.

use std::time::Duration;

use walhook::outbox::deliveries::{self, ListQuery, ReplayOne};
use walhook::outbox::{gauges, retention, Schema};

use crate::support::daemon::{fast_delivery, wait_value, Daemon};
use crate::support::receiver::{Answer, Receiver};
use crate::support::TestDb;

fn subscription(url: &str) -> String {
    format!(
        "[[subscriptions]]\nid = \"c\"\ntable = \"items\"\nevents = [\"INSERT\"]\n\
         url = \"{url}\"\nsecret = \"whsec_cursor\"\n"
    )
}

/// Rows as they lie on disk, by status.
fn on_disk(db: &TestDb) -> String {
    db.sql(
        "SELECT coalesce(string_agg(status || ' ' || n, ', ' ORDER BY status), 'none')
         FROM (SELECT status, count(*) n FROM walhook.deliveries GROUP BY 1) x",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successes_are_runs_that_every_reader_sees_as_delivered() {
    let db = TestDb::new();
    db.sql("CREATE TABLE items (id int PRIMARY KEY)");
    let rx = Receiver::scripted(|_, _| Answer::Status(201)).await;
    let daemon = Daemon::start(&db, &fast_delivery(""), &subscription(&rx.url)).await;
    db.sql("INSERT INTO items SELECT g FROM generate_series(1, 50) g");
    rx.wait_for(50, Duration::from_secs(20)).await;
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_states WHERE status = 'delivered'",
        "50",
        20,
    )
    .await;
    // Nothing was written on the rows: one run (or a few) says all fifty were delivered.
    assert_eq!(on_disk(&db), "pending 50");
    assert_eq!(
        db.sql(
            "SELECT min(first_sequence) || '-' || max(last_sequence) || ' ' || min(http_status)
                    || ' ' || bool_and(duration_ms >= 0)
             FROM walhook.delivered_runs WHERE subscription_id = 'c'"
        ),
        "1-50 201 true"
    );
    let client = db.client().await;
    let schema = Schema::new("walhook");
    let listed = deliveries::list(&client, &schema, "c", &ListQuery::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 50);
    for d in &listed {
        assert_eq!(
            (d.status.as_str(), d.http_status, d.attempts),
            ("delivered", Some(201), 1),
            "delivery {} as listed",
            d.id
        );
        assert!(d.finished_at.is_some());
    }
    // One attempt each in the history; nothing left to send in the gauges.
    assert_eq!(
        db.sql("SELECT count(*) || ' ' || min(http_status) FROM walhook.all_attempts"),
        "50 201"
    );
    let counts = gauges::queue_counts(&client, &schema).await.unwrap();
    assert_eq!((counts[0].pending, counts[0].dead), (0, 0));

    // A replayed delivery is sent again with its event id, then recorded on its own row.
    let first = listed.iter().find(|d| d.sequence == Some(1)).unwrap();
    let replayed = match deliveries::replay_one(&client, &schema, "c", first.id)
        .await
        .unwrap()
    {
        ReplayOne::Replayed(d) => d,
        other => panic!("replay of a delivered row: {other:?}"),
    };
    assert_eq!(replayed.status, "pending");
    let got = rx.wait_for(51, Duration::from_secs(20)).await;
    assert_eq!(got[50].json()["id"], replayed.event_id.as_str());
    wait_value(
        &db,
        &format!(
            "SELECT status FROM walhook.deliveries WHERE id = {}",
            first.id
        ),
        "delivered",
        20,
    )
    .await;
    assert_eq!(on_disk(&db), "delivered 1, pending 49");

    // A restart sends nothing again: the new process starts after the cursor.
    daemon.stop().await;
    let daemon = Daemon::start(&db, &fast_delivery(""), &subscription(&rx.url)).await;
    db.sql("INSERT INTO items SELECT g FROM generate_series(51, 60) g");
    rx.wait_for(61, Duration::from_secs(20)).await;
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_states WHERE status = 'delivered'",
        "60",
        20,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.count(), 61, "nothing delivered was sent again");
    daemon.stop().await;

    // Retention removes what runs older than it delivered, and keeps the newest run (the
    // cursor), so what follows is still recognised as delivered.
    db.sql("UPDATE walhook.delivered_runs SET recorded_at = now() - interval '2 days'");
    let day = Duration::from_secs(86_400);
    retention::prune(&client, &schema, day, day).await.unwrap();
    assert_eq!(on_disk(&db), "delivered 1");
    assert_eq!(
        db.sql("SELECT count(*) || ' ' || max(last_sequence) FROM walhook.delivered_runs"),
        "1 60"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_does_not_hold_the_successes_behind_it() {
    let db = TestDb::new();
    db.sql("CREATE TABLE items (id int PRIMARY KEY)");
    // The first request to arrive answers after 800 ms (under the 1 s timeout); the rest at once.
    let rx = Receiver::scripted(|_, i| {
        if i == 0 {
            Answer::Slow(Duration::from_millis(800))
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let daemon = Daemon::start(
        &db,
        &fast_delivery("max_in_flight = 4"),
        &subscription(&rx.url),
    )
    .await;
    db.sql("INSERT INTO items SELECT g FROM generate_series(1, 1000) g");
    rx.wait_for(1000, Duration::from_secs(30)).await;
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_states WHERE status = 'delivered'",
        "1000",
        20,
    )
    .await;
    daemon.stop().await;
    // The successes that waited behind the slow one past the spill threshold (256) were
    // recorded on their rows; the rest by runs. Each was sent once.
    let on_rows: i64 = db
        .sql("SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered'")
        .parse()
        .unwrap();
    assert!(
        on_rows >= 256,
        "{on_rows} recorded on their rows; {}",
        on_disk(&db)
    );
    assert_eq!(rx.count(), 1000);
}

/// A listing filtered by status gives exactly the rows `delivery_states` shows in that status,
/// in the page's order, for rows in every state the outbox holds: delivered by the cursor,
/// delivered on their row, failed, dead, waiting after the cursor, replayed below it; newest
/// first with `before` and oldest first with `after_sequence`. (The listing picks candidates
/// from the stored columns instead of walking the view: sql/016.)
#[tokio::test]
async fn a_status_filter_lists_what_the_view_shows() {
    let db = TestDb::new();
    let (client, schema) = db.outbox().await;
    // Sequences 1..=40 of "c" and 1..=5 of "other"; the cursor of "c" ends at 30.
    db.sql(
        "INSERT INTO walhook.deliveries (subscription_id, event_id, event, ordering_key, payload,
                                         commit_lsn, sequence, status, last_attempt_at)
         SELECT s, s || g, 'INSERT', '[1]', '{}', g, g,
                CASE WHEN s = 'other' THEN 'dead'
                     WHEN g IN (3, 33) THEN 'dead' WHEN g IN (7, 35) THEN 'failed'
                     WHEN g IN (9, 36) THEN 'delivered' ELSE 'pending' END,
                CASE WHEN s = 'other' OR g IN (3, 33, 7, 35, 9, 36, 12) THEN now() END
         FROM (VALUES ('c', 40), ('other', 5)) v(s, n), generate_series(1, n) g;
         INSERT INTO walhook.delivered_runs
                (subscription_id, first_sequence, last_sequence, http_status, attempted_at, duration_ms)
         VALUES ('c', 1, 20, 200, now(), 1), ('c', 21, 30, 204, now(), 1)",
    );
    let id_of = |seq: i64| -> i64 {
        db.sql(&format!(
            "SELECT id FROM walhook.deliveries WHERE subscription_id = 'c' AND sequence = {seq}"
        ))
        .parse()
        .unwrap()
    };
    let pages = [
        ListQuery::default(),
        ListQuery {
            limit: 3,
            ..ListQuery::default()
        },
        ListQuery {
            before: Some(id_of(34)),
            ..ListQuery::default()
        },
        ListQuery {
            after_sequence: Some(8),
            limit: 4,
            ..ListQuery::default()
        },
    ];
    for status in ["pending", "delivered", "failed", "dead"] {
        for page in &pages {
            let q = ListQuery {
                status: Some(status.to_string()),
                ..page.clone()
            };
            let listed = deliveries::list(&client, &schema, "c", &q).await.unwrap();
            let got = listed
                .iter()
                .map(|d| format!("{} {}", d.sequence.unwrap(), d.status))
                .collect::<Vec<_>>()
                .join(", ");
            let (order, bound) = match (page.before, page.after_sequence) {
                (Some(id), _) => ("DESC", format!("AND id < {id}")),
                (_, Some(seq)) => ("", format!("AND sequence > {seq}")),
                _ => ("DESC", String::new()),
            };
            let want = db.sql(&format!(
                "SELECT coalesce(string_agg(sequence || ' ' || status, ', ' ORDER BY sequence {order}), '')
                 FROM (SELECT sequence, status FROM walhook.delivery_states
                       WHERE subscription_id = 'c' AND status = '{status}' {bound}
                       ORDER BY sequence {order} LIMIT {}) x",
                page.limit
            ));
            assert_eq!(got, want, "status {status}, page {page:?}");
        }
    }
    // A row the cursor delivered shows the outcome of the run that covers it (sql/017 reads the
    // run per column).
    let all = deliveries::list(
        &client,
        &schema,
        "c",
        &ListQuery {
            limit: 100,
            ..ListQuery::default()
        },
    )
    .await
    .unwrap();
    let http = |seq| {
        let d = all.iter().find(|d| d.sequence == Some(seq)).unwrap();
        (d.status.as_str(), d.http_status, d.finished_at.is_some())
    };
    assert_eq!(
        [http(20), http(21), http(30), http(31)],
        [
            ("delivered", Some(200), true),
            ("delivered", Some(204), true),
            ("delivered", Some(204), true),
            ("pending", None, false)
        ]
    );
    // The states on the rows above, as the view shows them, so that the comparison covers each.
    assert_eq!(
        db.sql(
            "SELECT string_agg(status || ' ' || n, ', ' ORDER BY status) FROM
             (SELECT status, count(*) n FROM walhook.delivery_states
              WHERE subscription_id = 'c' GROUP BY 1) x"
        ),
        "dead 2, delivered 28, failed 2, pending 8"
    );
}

/// The overview's health reads a bounded sample per subscription, its newest successes of the
/// hour of each kind (on their rows, and by the cursor's runs), and its latest failed or dead
/// delivery's error. Here the newest 500 rows the cursor delivered took 1 s, the 1,500 before
/// them 10 s (so a percentile over the whole hour would say 10,000 ms); ten successes on their
/// rows took 2 s, and one more finished two hours ago.
#[tokio::test]
async fn the_overview_health_samples_the_newest_successes() {
    let db = TestDb::new();
    let (client, schema) = db.outbox().await;
    db.sql(
        "INSERT INTO walhook.sequences VALUES ('h', 2011), ('quiet', 0);
         INSERT INTO walhook.deliveries (subscription_id, event_id, event, ordering_key, payload,
                    commit_lsn, sequence, status, created_at, finished_at, last_attempt_at,
                    last_error)
         SELECT 'h', 'h' || g, 'INSERT', '[1]', '{}', g, g,
                CASE WHEN g = 1200 THEN 'failed' WHEN g = 1300 THEN 'dead'
                     WHEN g > 2000 THEN 'delivered' ELSE 'pending' END,
                CASE WHEN g = 2011 THEN now() - interval '2 hours 2 seconds'
                     WHEN g > 2000 THEN now() - interval '3 minutes 2 seconds'
                     WHEN g > 1500 THEN now() - interval '5 minutes 1 second'
                     ELSE now() - interval '5 minutes 10 seconds' END,
                CASE WHEN g = 2011 THEN now() - interval '2 hours'
                     WHEN g > 2000 THEN now() - interval '3 minutes' END,
                CASE WHEN g > 2000 OR g IN (1200, 1300) THEN now() END,
                CASE WHEN g = 1200 THEN 'failed: 500' WHEN g = 1300 THEN 'dead: 410' END
         FROM generate_series(1, 2011) g;
         INSERT INTO walhook.delivered_runs
                (subscription_id, first_sequence, last_sequence, http_status, attempted_at,
                 duration_ms, recorded_at)
         VALUES ('h', 1, 1500, 200, now(), 1, now() - interval '5 minutes'),
                ('h', 1501, 2000, 200, now(), 1, now() - interval '5 minutes')",
    );
    let health = walhook::outbox::console::health(&client, &schema)
        .await
        .unwrap();
    assert_eq!(health.len(), 1, "{health:?}");
    let h = &health[0];
    assert_eq!(h.subscription, "h");
    // The newest 500 of the cursor's rows (1 s) and the ten on their rows within the hour (2 s).
    assert_eq!(h.p50_ms.map(|v| v.round()), Some(1000.0), "{h:?}");
    assert_eq!(h.p99_ms.map(|v| v.round()), Some(2000.0), "{h:?}");
    let last = h.last_success.unwrap();
    let ago = chrono::Utc::now() - last;
    assert!(
        ago > chrono::Duration::seconds(170) && ago < chrono::Duration::seconds(190),
        "last success {last} should be the on-row ones of 3 minutes ago"
    );
    // The newest of the failed and dead deliveries: the dead one, numbered after the failed.
    assert_eq!(
        h.last_error.as_ref().map(|e| e.1.as_str()),
        Some("dead: 410")
    );
}
