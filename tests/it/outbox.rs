//! `walhook run`: WAL → outbox, exactly once, across clean restarts and config reloads.
//!
//! Delivery is off in these configs: the rows stay in the outbox for the assertions, and
//! nothing is sent anywhere.

use std::time::Duration;

use crate::support::bin::Walhook;
use crate::support::{sub, TestDb, DELIVERY_OFF};

fn config_text(db: &TestDb, subs: &str) -> String {
    crate::support::config_text(
        &db.url(),
        &db.name,
        "p",
        &format!("{DELIVERY_OFF}[outbox]\nretention = \"2s\"\n"),
        subs,
    )
}

pub fn write_config(db: &TestDb, subs: &str) -> tempfile::NamedTempFile {
    crate::support::write_config(&config_text(db, subs))
}

fn rewrite_config(path: &std::path::Path, db: &TestDb, subs: &str) {
    crate::support::rewrite_config(path, &config_text(db, subs));
}

fn spawn_run(db: &TestDb, cfg: &std::path::Path) -> Walhook {
    Walhook::run(&format!("outbox-{}", db.name), cfg)
}

async fn stop(child: Walhook, signal: i32) -> std::process::ExitStatus {
    child.stop_with(signal).await
}

/// Waits until `sql` (a count) returns `want`, for up to 60 s. Generous: every walsender of
/// the shared test cluster reads all of its WAL, and other tests write hundreds of megabytes at
/// once; a change can take a while to reach a new slot on a loaded 2-core machine.
async fn wait_count(db: &TestDb, sql: &str, want: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        last = db.pg.psql(&db.name, sql).unwrap_or_default();
        if last == want.to_string() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{sql}: expected {want}, last saw {last}; {}",
        db.stall_report()
    );
}

const ALL: &str = r#"["INSERT", "UPDATE", "DELETE"]"#;

/// Starts `walhook run` and waits until its slot is streaming.
async fn run_streaming(db: &TestDb, cfg: &std::path::Path) -> Walhook {
    let child = spawn_run(db, cfg);
    wait_count(db, &crate::support::slot_streaming_sql(&db.name), 1).await;
    child
}

#[tokio::test]
async fn changes_land_in_the_outbox_exactly_once_across_restarts() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders(id int PRIMARY KEY, status text)");
    let subs = [
        sub("a", "orders", ALL, ""),
        sub("b", "orders", r#"["UPDATE"]"#, ""),
    ]
    .concat();
    let cfg = write_config(&db, &subs);
    let child = run_streaming(&db, cfg.path()).await;
    db.sql("INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 100) g");
    db.sql("UPDATE orders SET status = 'paid' WHERE id <= 10");
    wait_count(&db, "SELECT count(*) FROM walhook.delivery_states", 120).await;
    assert!(stop(child, libc::SIGTERM).await.success());

    // While stopped: more changes; they are picked up after restart, nothing twice.
    db.sql("DELETE FROM orders WHERE id > 95");
    let child = spawn_run(&db, cfg.path());
    wait_count(&db, "SELECT count(*) FROM walhook.delivery_states", 125).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.delivery_states"),
        "125"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM (SELECT DISTINCT subscription_id, event_id FROM walhook.delivery_states) d"),
        "125"
    );
    assert_eq!(
        db.sql("SELECT string_agg(DISTINCT subscription_id || ':' || event, ',' ORDER BY subscription_id || ':' || event) FROM walhook.delivery_states"),
        "a:DELETE,a:INSERT,a:UPDATE,b:UPDATE"
    );
    // The stored payload is the exact body: parse one and check its fields.
    let body = db.sql(
        "SELECT payload FROM walhook.delivery_states WHERE event = 'DELETE' ORDER BY id LIMIT 1",
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["record"]["id"].to_string(), "96");
    assert_eq!(db.sql("SELECT ordering_key FROM walhook.delivery_states WHERE event = 'DELETE' ORDER BY id LIMIT 1"), "[96]");
    // Checkpoint equals the newest stored commit LSN; the slot confirmed at least that far.
    assert_eq!(
        db.sql("SELECT (SELECT commit_lsn FROM walhook.checkpoint) = (SELECT max(commit_lsn) FROM walhook.delivery_states)"),
        "t"
    );
    assert!(stop(child, libc::SIGINT).await.success());
    let behind = db.sql(
        "SELECT (SELECT commit_lsn FROM walhook.checkpoint) <= \
         (SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = current_database())",
    );
    assert_eq!(behind, "t");
    // Config subscriptions are stored for the API.
    assert_eq!(
        db.sql(
            "SELECT string_agg(id || ':' || source, ',' ORDER BY id) FROM walhook.subscriptions"
        ),
        "a:config,b:config"
    );
}

#[tokio::test]
async fn sighup_adds_a_table_without_restart_and_without_loss() {
    let db = TestDb::new();
    db.sql("CREATE TABLE a(id int PRIMARY KEY); CREATE TABLE b(id int PRIMARY KEY)");
    let cfg = write_config(&db, &sub("a", "a", ALL, ""));
    let mut child = run_streaming(&db, cfg.path()).await;
    db.sql("INSERT INTO a VALUES (1)");
    wait_count(&db, "SELECT count(*) FROM walhook.delivery_states", 1).await;

    rewrite_config(
        cfg.path(),
        &db,
        &[sub("a", "a", ALL, ""), sub("b", "b", ALL, "")].concat(),
    );
    child.signal(libc::SIGHUP);
    wait_count(
        &db,
        "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'walhook' AND tablename = 'b'",
        1,
    )
    .await;
    db.sql("INSERT INTO b VALUES (1); INSERT INTO a VALUES (2)");
    wait_count(&db, "SELECT count(*) FROM walhook.delivery_states", 3).await;
    assert_eq!(
        db.sql("SELECT relreplident FROM pg_class WHERE relname = 'b'"),
        "f"
    );

    // A broken reload is attempted, refused, and changes nothing.
    crate::support::rewrite_config(cfg.path(), "[source]\nurl = 5\n");
    child.signal(libc::SIGHUP);
    let log = child
        .wait_log(
            "config reload failed; keeping the previous subscriptions",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(log.matches("SIGHUP: reloading config").count(), 2, "{log}");
    assert_eq!(log.matches("config reloaded").count(), 1, "{log}");
    db.sql("INSERT INTO b VALUES (2)");
    wait_count(&db, "SELECT count(*) FROM walhook.delivery_states", 4).await;
    assert!(stop(child, libc::SIGTERM).await.success());
}

#[tokio::test]
async fn delivered_rows_are_pruned_after_retention_pending_rows_are_kept() {
    let db = TestDb::new();
    db.sql("CREATE TABLE a(id int PRIMARY KEY)");
    let cfg = write_config(&db, &sub("a", "a", ALL, ""));
    let child = run_streaming(&db, cfg.path()).await;
    db.sql("INSERT INTO a SELECT generate_series(1, 30)");
    wait_count(&db, "SELECT count(*) FROM walhook.delivery_states", 30).await;
    // Mark 20 delivered (the delivery engine's job), 10 stay pending. A crashed pump's
    // ownership of a since-deleted subscription goes too.
    db.sql("UPDATE walhook.deliveries SET status = 'delivered', finished_at = now() - interval '1 hour' WHERE id IN (SELECT id FROM walhook.delivery_states ORDER BY id LIMIT 20)");
    db.sql("INSERT INTO walhook.delivery_owners VALUES ('deleted', gen_random_uuid(), now() - interval '1 minute')");
    // Rows stored for a subscription deleted meanwhile, as the writer stores them (numbered,
    // with the subscription's last number), can never be sent: they go, whatever their status.
    db.sql(
        "INSERT INTO walhook.deliveries (subscription_id, event_id, event, ordering_key, payload,
                                         commit_lsn, sequence)
         SELECT 'deleted', 'evt_gone_' || n, 'INSERT', '[' || n || ']', '{}', 1, n
         FROM generate_series(1, 5) n;
         INSERT INTO walhook.sequences (subscription_id, last_sequence) VALUES ('deleted', 5)",
    );
    wait_count(&db, "SELECT count(*) FROM walhook.delivery_states", 10).await;
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.delivery_states WHERE subscription_id = 'deleted'"),
        "0"
    );
    wait_count(
        &db,
        "SELECT count(*) FROM walhook.delivery_owners WHERE subscription_id = 'deleted'",
        0,
    )
    .await;
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.delivery_states WHERE status = 'pending'"),
        "10"
    );
    assert!(stop(child, libc::SIGTERM).await.success());
}

/// Autovacuum visits a table at most once a minute; a busy outbox would bloat in between, so
/// retention vacuums walhook's tables itself when their dead row versions pile up.
#[tokio::test]
async fn retention_vacuums_the_outbox_when_dead_rows_pile_up() {
    let db = TestDb::new();
    db.sql("CREATE TABLE a(id int PRIMARY KEY)");
    let cfg = write_config(&db, &sub("a", "a", ALL, ""));
    let child = run_streaming(&db, cfg.path()).await;
    let vacuums =
        "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'walhook.deliveries'::regclass";
    assert_eq!(db.sql(vacuums), "0");
    // Autovacuum off for this table: only walhook may vacuum it here. Once in CI the statistics
    // read 0 dead, 12000 live after the prune, and walhook saw nothing to do: an autovacuum
    // that scans while the prune's DELETE is in progress counts those rows live, and its report
    // replaces the counts the DELETE had added.
    db.sql("ALTER TABLE walhook.deliveries SET (autovacuum_enabled = false)");
    db.sql("INSERT INTO a SELECT generate_series(1, 12000)");
    wait_count(&db, "SELECT count(*) FROM walhook.delivery_states", 12000).await;
    db.sql("UPDATE walhook.deliveries SET status = 'delivered', finished_at = now() - interval '1 hour'");
    // Pruned (12,000 more dead versions), then vacuumed at retention's next look (every 10 s).
    wait_count(&db, "SELECT count(*) FROM walhook.delivery_states", 0).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while db.sql(vacuums) == "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "not vacuumed within 40 s: {}",
            db.sql("SELECT n_dead_tup || ' dead, ' || n_live_tup || ' live' FROM pg_stat_user_tables WHERE relid = 'walhook.deliveries'::regclass")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stop(child, libc::SIGTERM).await.success());
}

#[tokio::test]
async fn migrate_command_creates_the_schema_once() {
    let db = TestDb::new();
    let cfg = write_config(&db, "");
    for expected in [
        "applied migrations: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]",
        "applied migrations: []",
    ] {
        let out = crate::support::bin::succeeds(&mut crate::support::bin::with_config(
            "migrate",
            cfg.path(),
        ))
        .await;
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);
        // The second run finds everything in place: no "already exists, skipping" noise.
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!log.contains("NOTICE"), "{log}");
    }
    assert_eq!(
        db.sql("SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'walhook'"),
        "all_attempts,attempts,backfills,checkpoint,delivered_runs,deliveries,delivery_owners,delivery_states,schema_migrations,sequences,slot_fence,slot_recoveries,subscriptions"
    );
    // No update of a delivery can be HOT (sql/019): its pages are filled, not kept 30% free.
    assert_eq!(
        db.sql("SELECT reloptions::text FROM pg_class WHERE oid = 'walhook.deliveries'::regclass"),
        "{fillfactor=100}"
    );
}

/// A follower's reading of the subscriptions (routing, delivery) decodes only the rows that
/// changed, and still answers what a full read does: every row in id order, a change to any
/// column (a hand edit that leaves `updated_at` alone included), deletions; a row that no longer
/// parses fails the reading with its id and leaves the cache usable.
#[tokio::test]
async fn the_subscription_cache_reads_again_only_what_changed() {
    use walhook::outbox::subscriptions::{load_all, Cache};
    let db = TestDb::new();
    let (client, schema) = db.outbox().await;
    db.sql(
        "INSERT INTO walhook.subscriptions (id, source, table_name, events, url, secret)
         SELECT 's' || i, 'api', 'public.orders', '{INSERT}', 'https://127.0.0.1/' || i, 'k'
         FROM generate_series(1, 3) i",
    );
    let ids = |v: &[std::sync::Arc<walhook::outbox::subscriptions::Stored>]| {
        v.iter().map(|s| s.id.clone()).collect::<Vec<_>>()
    };
    let mut cache = Cache::default();
    let first = cache.load(&client, &schema).await.unwrap();
    assert_eq!(ids(&first), ["s1", "s2", "s3"]);

    db.sql("UPDATE walhook.subscriptions SET url = 'https://127.0.0.1/new' WHERE id = 's2'");
    let second = cache.load(&client, &schema).await.unwrap();
    assert_eq!(ids(&second), ["s1", "s2", "s3"]);
    assert_eq!(second[1].url, "https://127.0.0.1/new");
    // Unchanged rows were not decoded again: the same values are handed out.
    assert!(std::sync::Arc::ptr_eq(&first[0], &second[0]));
    assert!(std::sync::Arc::ptr_eq(&first[2], &second[2]));
    assert!(!std::sync::Arc::ptr_eq(&first[1], &second[1]));
    // What a full read gives, field for field.
    let full = load_all(&client, &schema).await.unwrap();
    assert_eq!(
        format!("{full:?}"),
        format!("{:?}", second.iter().map(|s| &**s).collect::<Vec<_>>())
    );

    db.sql(
        "DELETE FROM walhook.subscriptions WHERE id = 's1';
         INSERT INTO walhook.subscriptions (id, source, table_name, events, url, secret)
         VALUES ('s0', 'api', 'public.orders', '{DELETE}', 'https://127.0.0.1/0', 'k')",
    );
    let third = cache.load(&client, &schema).await.unwrap();
    assert_eq!(ids(&third), ["s0", "s2", "s3"]);

    db.sql("UPDATE walhook.subscriptions SET events = '{UPSERT}' WHERE id = 's3'");
    let err = cache.load(&client, &schema).await.unwrap_err().to_string();
    assert!(err.contains("s3") && err.contains("UPSERT"), "{err}");
    db.sql("UPDATE walhook.subscriptions SET events = '{UPDATE}' WHERE id = 's3'");
    let fourth = cache.load(&client, &schema).await.unwrap();
    assert_eq!(ids(&fourth), ["s0", "s2", "s3"]);
    assert!(std::sync::Arc::ptr_eq(&third[1], &fourth[1]));
    assert_eq!(fourth[2].events, [walhook::model::EventKind::Update]);
}

/// An operator's SQL edit of a subscription row that leaves `updated_at` alone (a new URL, say)
/// reaches the running pump at the next reading of the subscriptions (here: the next API
/// change), not only at a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edited_url_reaches_the_running_pump() {
    use crate::backfill::{spawn, stop, sub, TOKEN};
    use crate::support::receiver::Receiver;
    let db = TestDb::new();
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let rx = Receiver::ok().await;
    let (child, api) = spawn(&db, &sub("cfg", "t", &rx.url, ""), "handedit").await;
    let create = |path: &str| {
        let body = serde_json::json!({
            "projectId": "test-project", "environment": "master", "table": "t",
            "events": ["INSERT"], "url": format!("{}/{path}", rx.url), "secret": "k"
        });
        api.http
            .post(format!("{}/api/rest/_webhooks", api.base))
            .bearer_auth(TOKEN)
            .header("X-Project-ID", "test-project")
            .header("environment", "master")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let r = create("old").await.unwrap();
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    db.sql("INSERT INTO t VALUES (1)");
    wait_arrival(&rx, "/old", 1).await;

    db.sql(&format!(
        "UPDATE walhook.subscriptions SET url = '{}/new' WHERE id = '{id}'",
        rx.url
    ));
    assert_eq!(create("other").await.unwrap().status(), 201);
    db.sql("INSERT INTO t VALUES (2)");
    wait_arrival(&rx, "/new", 2).await;
    assert!(!arrived(&rx, "/old", 2));
    stop(child, &db).await;
}

fn arrived(rx: &crate::support::receiver::Receiver, path: &str, row: i64) -> bool {
    rx.snapshot()
        .iter()
        .any(|q| q.path == path && q.json()["record"]["id"] == row)
}

async fn wait_arrival(rx: &crate::support::receiver::Receiver, path: &str, row: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !arrived(rx, path, row) {
        let paths: Vec<String> = rx.snapshot().iter().map(|q| q.path.clone()).collect();
        assert!(
            std::time::Instant::now() < deadline,
            "row {row} not at {path}; requests went to {paths:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
