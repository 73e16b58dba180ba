//! The delivery engine at scale and across crashes, against real Postgres and real receivers:
//! many subscriptions share a small pool (one INSERT reaches all of them while walhook holds few
//! connections), and a killed owner's subscriptions are taken over in seconds (by its restart or
//! by a second instance) with nothing lost and redeliveries under the same event id.
//!
//! `WALHOOK_ENGINE_SUBS=10000 cargo test --release --test it engine::many -- --nocapture` measures
//! the large case by hand.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::support::daemon::{config_text, fast_delivery, wait_value, Daemon};
use crate::support::receiver::{Answer, Receiver};
use crate::support::TestDb;
use tokio::process::Child;

use crate::support::bin::Walhook;

/// A takeover must deliver the next change within this, even on a loaded 2-core machine.
const TAKEOVER_BOUND: Duration = Duration::from_secs(10);

/// `walhook run` through the one spawning helper (log in a file, killed on drop).
fn spawn(cfg: &std::path::Path) -> Child {
    let name = format!("engine-{}", uuid::Uuid::new_v4().simple());
    Walhook::spawn_logging(
        crate::support::bin::with_config("run", cfg),
        &crate::support::bin::log_path(&name),
    )
    .child
}

fn write_config(db: &TestDb, delivery: &str, subs: &str) -> tempfile::NamedTempFile {
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), config_text(db, delivery, subs)).unwrap();
    cfg
}

fn subscriptions(rx: &Receiver, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[subscriptions]]\nid = \"s{i}\"\ntable = \"orders\"\nevents = [\"INSERT\"]\n\
                 url = \"{}/s{i}\"\nsecret = \"k\"\n",
                rx.url
            )
        })
        .collect()
}

/// walhook's sessions on the test database (source and outbox are the same database here).
fn walhook_connections(db: &TestDb) -> usize {
    db.sql(&format!(
        "SELECT count(*) FROM pg_stat_activity
         WHERE application_name = 'walhook' AND datname = '{}'",
        db.name
    ))
    .parse()
    .unwrap()
}

async fn wait_streaming(db: &TestDb) {
    wait_value(db, &crate::support::slot_streaming_sql(&db.name), "1", 60).await;
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscriptions_one_insert_reaches_all_on_a_small_pool() {
    let n: usize = std::env::var("WALHOOK_ENGINE_SUBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    db.sql("CREATE TABLE other (id int PRIMARY KEY)");
    let rx = Receiver::ok().await;
    // Generous timeouts: a loaded machine answering late must not turn into retries here.
    let api_port = crate::support::free_port();
    let delivery = fast_delivery("")
        .replace("connect_timeout = \"1s\"", "connect_timeout = \"10s\"")
        .replace(
            "timeout = \"1s\"\nlease = \"3s\"",
            "timeout = \"20s\"\nlease = \"60s\"",
        )
        + &format!("[api]\nlisten = \"127.0.0.1:{api_port}\"\ntoken = \"t\"\n");
    let cfg = write_config(&db, &delivery, &subscriptions(&rx, n));
    let started = Instant::now();
    let mut child = spawn(cfg.path());
    let pid = child.id().unwrap();
    wait_streaming(&db).await;
    let streaming_after = started.elapsed();
    // Every subscription is owned before the change, so the figure is delivery alone.
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_owners",
        &n.to_string(),
        60,
    )
    .await;
    let owned_after = started.elapsed();

    let idle_rss = rss_kb(pid, "VmRSS:");
    // The API busy the whole time (listings, and creates that reload routing): the budget
    // holds with every part of walhook using its connections at once.
    let api_load = ApiLoad::start(api_port, &rx.url);
    db.sql("INSERT INTO orders VALUES (1, 'new')");
    let committed = Instant::now();
    let deadline = committed + Duration::from_secs(50);
    let mut max_connections = 0;
    let reached = || {
        let reqs = rx.snapshot();
        reqs.iter()
            .map(|r| r.path.clone())
            .collect::<HashSet<_>>()
            .len()
    };
    while reached() < n {
        max_connections = max_connections.max(walhook_connections(&db));
        assert!(
            Instant::now() < deadline,
            "{} of {n} subscriptions reached after 50 s; outbox: {}; slot: {}; walsender: {}; \
             walhook's sessions: {}",
            reached(),
            db.sql("SELECT count(*) || ' deliveries, checkpoint ' || coalesce((SELECT commit_lsn::text FROM walhook.checkpoint), '-') FROM walhook.delivery_states"),
            db.sql(&format!("SELECT active || ' ' || confirmed_flush_lsn || ' current ' || pg_current_wal_lsn() FROM pg_replication_slots WHERE slot_name = '{}'", db.name)),
            db.sql("SELECT coalesce(string_agg(r.state || ' sent ' || r.sent_lsn || ' ' || coalesce(a.wait_event, '-') || ' db ' || coalesce(a.datname, '-'), '; '), 'none') FROM pg_stat_replication r JOIN pg_stat_activity a USING (pid)"),
            db.sql("SELECT coalesce(string_agg(pid || ' ' || coalesce(state, '-') || ' ' || coalesce(wait_event_type || ':' || wait_event, '-') || ' ' || left(regexp_replace(query, '\\s+', ' ', 'g'), 60), '; '), 'none') FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The API load keeps going until its share of the pool was surely taken.
    while !api_load.enough() {
        max_connections = max_connections.max(walhook_connections(&db));
        assert!(Instant::now() < deadline, "API load: {}", api_load.report());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_in = committed.elapsed();
    max_connections = max_connections.max(walhook_connections(&db));
    let api_report = api_load.stop().await;
    let (rss, hwm) = (rss_kb(pid, "VmRSS:"), rss_kb(pid, "VmHWM:"));
    let mut arrivals: Vec<Duration> = rx
        .snapshot()
        .iter()
        .map(|r| r.at.saturating_duration_since(committed))
        .collect();
    arrivals.sort();
    eprintln!(
        "subscriptions: {n}; streaming after {streaming_after:?}, all owned after {owned_after:?}; \
         one INSERT delivered to all in {delivered_in:?} (first {:?}, median {:?}); walhook \
         connections (max seen): {max_connections}; RSS idle {idle_rss} kB, after {rss} kB, \
         peak {hwm} kB",
        arrivals[0],
        arrivals[arrivals.len() / 2]
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reqs = rx.snapshot();
    let paths: HashSet<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        (reqs.len(), paths.len()),
        (n, n),
        "each subscription got it once"
    );
    assert!(
        max_connections <= 20,
        "walhook held {max_connections} connections (README's budget: 20); API load: {api_report}"
    );
    // The work is recorded too, through the same few connections.
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') FROM walhook.delivery_states",
        &n.to_string(),
        30,
    )
    .await;
    // Where the time goes: source commit → outbox commit → attempts.
    eprintln!(
        "commit → stored, → first attempt, → last attempt: {}",
        db.sql(
            "SELECT (SELECT min(created_at) FROM walhook.delivery_states) - t || ', ' ||
                    (SELECT min(attempted_at) FROM walhook.all_attempts) - t || ', ' ||
                    (SELECT max(attempted_at) FROM walhook.all_attempts) - t
             FROM (SELECT (payload::json->>'timestamp')::timestamptz AS t
                   FROM walhook.delivery_states LIMIT 1) c"
        )
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// Concurrent management API requests until stopped: delivery listings (the API's outbox
/// pool) and subscription creates (each reloads routing through the background pools).
struct ApiLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    listed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    created: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ApiLoad {
    const LISTERS: usize = 12;
    const CREATORS: usize = 4;

    fn start(port: u16, rx_url: &str) -> ApiLoad {
        use std::sync::atomic::Ordering;
        let load = ApiLoad {
            stop: Default::default(),
            listed: Default::default(),
            created: Default::default(),
            failures: Default::default(),
            tasks: Vec::new(),
        };
        // reqwest is built without a default TLS provider; plain HTTP still needs one chosen.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}/api/rest/_webhooks");
        let mut tasks = Vec::new();
        for t in 0..Self::LISTERS + Self::CREATORS {
            let (http, base, rx_url) = (http.clone(), base.clone(), rx_url.to_string());
            let (stop, listed, created, failures) = (
                load.stop.clone(),
                load.listed.clone(),
                load.created.clone(),
                load.failures.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let req = if t < Self::LISTERS {
                        http.get(format!("{base}/s{}/deliveries", (t * 31 + i) % 1000))
                    } else {
                        let body = serde_json::json!({
                            "projectId": "test-project", "environment": "master",
                            "table": "other", "events": ["INSERT"],
                            "url": format!("{rx_url}/other-{t}-{i}"), "secret": "k"
                        });
                        http.post(&base)
                            .header("Content-Type", "application/json")
                            .body(body.to_string())
                    };
                    let resp = req
                        .bearer_auth("t")
                        .header("X-Project-ID", "test-project")
                        .header("environment", "master")
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status().is_success() => {
                            let n = if t < Self::LISTERS { &listed } else { &created };
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            let text =
                                format!("{}: {}", r.status(), r.text().await.unwrap_or_default());
                            failures.lock().unwrap().push(text);
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            }));
        }
        ApiLoad { tasks, ..load }
    }

    /// Enough requests answered that every lister and creator ran several times.
    fn enough(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.listed.load(Ordering::Relaxed) >= 5 * Self::LISTERS as u64
            && self.created.load(Ordering::Relaxed) >= Self::CREATORS as u64
    }

    fn report(&self) -> String {
        use std::sync::atomic::Ordering;
        let failures = self.failures.lock().unwrap();
        format!(
            "{} listings, {} creates answered 2xx; {} failed (first: {:?})",
            self.listed.load(Ordering::Relaxed),
            self.created.load(Ordering::Relaxed),
            failures.len(),
            failures.first()
        )
    }

    /// Stops the load; every request must have been answered 2xx.
    async fn stop(mut self) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "API requests failed under load: {failures:?}"
        );
        self.report()
    }
}

/// Inserts row `id` and returns how long until the receiver has its event.
async fn commit_to_receiver(db: &TestDb, rx: &Receiver, id: i32) -> Duration {
    db.sql(&format!("INSERT INTO orders VALUES ({id}, 'new')"));
    let committed = Instant::now();
    loop {
        let arrived = rx.snapshot().iter().any(|r| r.json()["record"]["id"] == id);
        if arrived {
            return committed.elapsed();
        }
        assert!(
            committed.elapsed() < TAKEOVER_BOUND * 3,
            "row {id} not delivered after {:?}; {}",
            TAKEOVER_BOUND * 3,
            db.stall_report()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every (subscription, change) of `deliveries` arrived; a request sent again carries the same
/// event id (header and body) as the first. Returns how many were sent again.
fn assert_nothing_lost(rx: &Receiver, deliveries: usize) -> usize {
    let mut by_delivery: HashMap<(String, i64), HashSet<String>> = HashMap::new();
    let reqs = rx.snapshot();
    for r in &reqs {
        let body = r.json();
        let id = body["id"].as_str().unwrap().to_string();
        assert_eq!(
            r.header("x-archie-delivery"),
            id,
            "same event id in header and body"
        );
        let row = body["record"]["id"].as_i64().unwrap();
        by_delivery
            .entry((r.path.clone(), row))
            .or_default()
            .insert(id);
    }
    assert_eq!(
        by_delivery.len(),
        deliveries,
        "every change reached every subscription"
    );
    for (key, ids) in &by_delivery {
        assert_eq!(
            ids.len(),
            1,
            "{key:?} was sent under several event ids: {ids:?}"
        );
    }
    reqs.len() - deliveries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_immediate_restart_delivers_the_next_change_in_seconds() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    let rx = Receiver::ok().await;
    // A long lease: only the session lock can explain a fast takeover.
    let delivery = fast_delivery("").replace("lease = \"3s\"", "lease = \"60s\"");
    let cfg = write_config(&db, &delivery, &subscriptions(&rx, 3));
    let mut first = spawn(cfg.path());
    wait_streaming(&db).await;
    wait_value(&db, "SELECT count(*) FROM walhook.delivery_owners", "3", 30).await;
    commit_to_receiver(&db, &rx, 1).await;
    rx.wait_for(3, Duration::from_secs(10)).await;

    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let mut second = spawn(cfg.path());
    let took = commit_to_receiver(&db, &rx, 2).await;
    eprintln!("kill -9 + restart: commit → receiver {took:?}");
    assert!(took <= TAKEOVER_BOUND, "took {took:?}");
    rx.wait_for(6, Duration::from_secs(10)).await;
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') FROM walhook.delivery_states",
        "6",
        10,
    )
    .await;
    assert_nothing_lost(&rx, 6);
    second.start_kill().unwrap();
    second.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_owner_moves_its_subscriptions_to_the_survivor_in_seconds() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    // Slow answers: some requests are in flight at the kill and are sent again.
    let rx = Receiver::scripted(|_, _| Answer::Slow(Duration::from_millis(50))).await;
    let delivery = fast_delivery("").replace("lease = \"3s\"", "lease = \"60s\"");
    let cfg = write_config(&db, &delivery, &subscriptions(&rx, 3));
    let mut owner = spawn(cfg.path());
    wait_streaming(&db).await;
    wait_value(&db, "SELECT count(*) FROM walhook.delivery_owners", "3", 30).await;
    let owner_worker = db.sql("SELECT DISTINCT worker FROM walhook.delivery_owners");
    let mut survivor = spawn(cfg.path());
    // The survivor is up (its ownership session holds its lock) and owns nothing.
    wait_value(
        &db,
        &format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = {}
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            walhook::outbox::queue::SESSION_LOCK_NS
        ),
        "2",
        30,
    )
    .await;
    // A survivor that has stood by for a while (its slot retries must not have backed off far).
    tokio::time::sleep(Duration::from_secs(4)).await;
    db.sql("INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 30) g");
    rx.wait_for(10, Duration::from_secs(20)).await;
    assert_eq!(
        db.sql("SELECT string_agg(DISTINCT worker::text, ',') FROM walhook.delivery_owners"),
        owner_worker,
        "the survivor took nothing from a live owner"
    );

    owner.start_kill().unwrap();
    owner.wait().await.unwrap();
    let took = commit_to_receiver(&db, &rx, 31).await;
    eprintln!("kill -9 of the owner: commit → receiver via the survivor {took:?}");
    assert!(took <= TAKEOVER_BOUND, "took {took:?}");
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') FROM walhook.delivery_states",
        "93",
        30,
    )
    .await;
    let again = assert_nothing_lost(&rx, 93);
    assert_ne!(
        db.sql("SELECT string_agg(DISTINCT worker::text, ',') FROM walhook.delivery_owners"),
        owner_worker
    );
    eprintln!("requests sent again after the kill (same event ids): {again}");
    // Only what was in flight or not yet recorded at the kill: per subscription, at most the
    // in-flight cap (16) plus as many finished and unrecorded.
    assert!(again <= 3 * 2 * 16, "{again} requests sent again");
    survivor.start_kill().unwrap();
    survivor.wait().await.unwrap();
}

/// Upgrading from version 3 keeps every delivery, and ownership follows the rules: a row of the
/// old kind (no session) is taken over on its lease alone; one whose owner's session lock is
/// gone is taken over at once; one whose owner holds its lock is left alone.
#[tokio::test]
async fn upgrade_keeps_deliveries_and_takeover_follows_sessions_then_leases() {
    let db = TestDb::new();
    let v3 = [
        include_str!("../../sql/001_outbox.sql"),
        include_str!("../../sql/002_delivery.sql"),
        include_str!("../../sql/003_owners.sql"),
    ]
    .map(|s| s.replace("{schema}", "walhook"))
    .join("\n");
    db.sql(&format!(
        "CREATE SCHEMA walhook;
         CREATE TABLE walhook.schema_migrations (
             version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
         {v3}
         INSERT INTO walhook.schema_migrations (version) VALUES (1), (2), (3);
         INSERT INTO walhook.subscriptions (id, source, table_name, events, url, secret)
         SELECT s, 'api', 'orders', '{{INSERT}}', 'http://127.0.0.1:9/' || s, 'k'
         FROM unnest(ARRAY['old', 'dead', 'live', 'free']) s;
         INSERT INTO walhook.deliveries (subscription_id, event_id, event, ordering_key, payload,
                                         commit_lsn, status, attempts)
         VALUES ('old', 'evt_1', 'INSERT', '[1]', '{{}}', 1, 'pending', 0),
                ('old', 'evt_2', 'INSERT', '[2]', '{{}}', 1, 'failed', 2),
                ('old', 'evt_3', 'INSERT', '[3]', '{{}}', 1, 'dead', 5);
         INSERT INTO walhook.delivery_owners (subscription_id, worker, lease_until)
         VALUES ('old', gen_random_uuid(), now() + interval '1 hour')"
    ));
    let mut client = db.client().await;
    let schema = walhook::outbox::Schema::new("walhook");
    assert_eq!(
        walhook::outbox::migrate(&mut client, &schema)
            .await
            .unwrap(),
        [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    );
    assert_eq!(
        db.sql("SELECT string_agg(event_id || ':' || status || ':' || attempts || ':' || sequence, ',' ORDER BY id) FROM walhook.delivery_states"),
        "evt_1:pending:0:1,evt_2:failed:2:2,evt_3:dead:5:3"
    );
    // A failed row recorded before version 12 is marked attempted, as every failed row is
    // (sql/015): claims find it below the delivered cursor.
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.deliveries WHERE status = 'failed' AND last_attempt_at IS NOT NULL"),
        "1"
    );
    // Numbering continues after what was kept.
    assert_eq!(
        db.sql("SELECT subscription_id || ':' || last_sequence FROM walhook.sequences"),
        "old:3"
    );
    // Another owner's sessions: 'live' is held by a session that stays, 'dead' by one that ends.
    let ns = walhook::outbox::queue::SESSION_LOCK_NS;
    let live_owner = db.client().await;
    live_owner
        .execute("SELECT pg_advisory_lock($1, 777)", &[&ns])
        .await
        .unwrap();
    db.sql(
        "INSERT INTO walhook.delivery_owners (subscription_id, worker, lease_until, session_lock)
         VALUES ('live', gen_random_uuid(), now() + interval '1 hour', 777),
                ('dead', gen_random_uuid(), now() + interval '1 hour', 778)",
    );
    let queue = walhook::outbox::queue::Queue::new(&schema);
    let me = uuid::Uuid::new_v4();
    client
        .execute("SELECT pg_advisory_lock($1, 779)", &[&ns])
        .await
        .unwrap();
    let lease = Duration::from_secs(30);
    let mut taken = queue.take_over(&client, me, lease, 779, 1).await.unwrap();
    taken.sort();
    assert_eq!(taken, ["dead", "free"]);
    // The old row's lease runs out: now it is taken too; a live session's row never is.
    db.sql("UPDATE walhook.delivery_owners SET lease_until = now() - interval '1 second' WHERE subscription_id = 'old'");
    assert_eq!(
        queue.take_over(&client, me, lease, 779, 1).await.unwrap(),
        ["old"]
    );
    let mut mine = queue.renew_all(&client, me, lease, 779, 1).await.unwrap();
    mine.sort();
    assert_eq!(mine, ["dead", "free", "old"]);
    // The live owner's session ends: its subscription is free at once, lease or not.
    drop(live_owner);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let taken = queue.take_over(&client, me, lease, 779, 1).await.unwrap();
        if taken == ["live"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "'live' not taken over after its session ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(queue.disown_all(&client, me).await.unwrap(), 4);
}

/// Each delivery carries its subscription's sequence number, assigned once at enqueue
/// (consecutive per subscription, the same on a retry), and the API lists what follows a number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_carry_a_per_subscription_sequence_and_the_api_lists_after_one() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    // The first attempt of row 2 fails: its retry must carry the same number.
    let failed_once = std::sync::atomic::AtomicBool::new(false);
    let rx = Receiver::scripted(move |r, _| {
        let row_2 = r.json()["record"]["id"] == 2 && r.path == "/s0";
        if row_2 && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Answer::Status(500)
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let port = crate::support::free_port();
    let delivery = format!(
        "{}\n[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"t\"\n",
        fast_delivery("retry_schedule = [\"0s\", \"0s\"]")
    );
    let daemon =
        crate::support::daemon::Daemon::start(&db, &delivery, &subscriptions(&rx, 2)).await;
    db.sql("INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 5) g");
    db.sql("INSERT INTO orders VALUES (6, 'new'); INSERT INTO orders VALUES (7, 'new')");
    // 7 rows × 2 subscriptions, plus the failed first attempt.
    rx.wait_for(15, Duration::from_secs(30)).await;
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') FROM walhook.delivery_states",
        "14",
        20,
    )
    .await;
    let mut seen: HashMap<(String, i64), HashSet<String>> = HashMap::new();
    for r in rx.snapshot() {
        let row = r.json()["record"]["id"].as_i64().unwrap();
        seen.entry((r.path.clone(), row))
            .or_default()
            .insert(r.header("x-walhook-sequence").to_string());
    }
    for sub in ["/s0", "/s1"] {
        for row in 1..=7 {
            // Rows are stored in commit order, so row n is the subscription's n-th delivery.
            let want: HashSet<String> = [row.to_string()].into();
            assert_eq!(seen[&(sub.to_string(), row)], want, "{sub} row {row}");
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let list = |after: &str| {
        let url = format!(
            "http://127.0.0.1:{port}/api/rest/_webhooks/s0/deliveries?after_sequence={after}&limit=2"
        );
        async move {
            let v: serde_json::Value = reqwest::Client::new()
                .get(url)
                .bearer_auth("t")
                .header("X-Project-ID", "test-project")
                .header("environment", "master")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .map(|t| serde_json::from_str(&t).unwrap())
                .unwrap();
            v
        }
    };
    let page = list("4").await;
    let seqs: Vec<i64> = page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [5, 6], "{page}");
    assert_eq!(page["nextAfterSequence"], 6);
    let page = list("6").await;
    assert_eq!(page["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(page["deliveries"][0]["sequence"], 7);
    assert!(page["nextAfterSequence"].is_null());
    daemon.stop().await;
}

/// Pumps that take their rows from memory do not read the outbox on a timer (it cost a quarter
/// of a core with 10,000 idle subscriptions); rows put back by another process (a CLI replay)
/// still reach them within a few polls, through the owner's one watermark reading per poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pumps_stop_claiming_and_a_replay_from_another_process_reaches_them() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    let rx = Receiver::ok().await;
    // A 1 s poll: a pump in memory reads the outbox by itself after 45 s at the earliest.
    // Generous timeouts: a loaded machine answering late must not turn into redeliveries.
    let delivery = fast_delivery("")
        .replace("poll_interval = \"100ms\"", "poll_interval = \"1s\"")
        .replace(
            "timeout = \"1s\"\nlease = \"3s\"",
            "timeout = \"10s\"\nlease = \"30s\"",
        );
    assert!(
        delivery.contains("poll_interval = \"1s\"") && delivery.contains("lease = \"30s\""),
        "{delivery}"
    );
    let subs = subscriptions(&rx, 5);
    let d = Daemon::start(&db, &delivery, &subs).await;
    db.sql("INSERT INTO orders VALUES (1, 'new')");
    rx.wait_for(5, Duration::from_secs(30)).await;
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') FROM walhook.delivery_states",
        "5",
        30,
    )
    .await;
    // The claims settle once every pump takes its rows from memory; before, each pump read
    // the outbox every poll (5 claims a second here).
    let claims = || d.handles.metrics.outbox_claims_total();
    let settled = d
        .claims_settled(Duration::from_secs(3), Duration::from_secs(20))
        .await;
    // New rows still come from memory, without a claim.
    db.sql("INSERT INTO orders VALUES (2, 'new')");
    rx.wait_for(10, Duration::from_secs(30)).await;
    assert_eq!(claims(), settled, "rows handed over were read back");

    // Another process puts a delivered row back: the pump reads the outbox and sends it again.
    let id = db.sql(
        "SELECT id FROM walhook.delivery_states WHERE subscription_id = 's3' ORDER BY id LIMIT 1",
    );
    let cfg = write_config(&db, &delivery, &subs);
    let replayed = Instant::now();
    crate::support::bin::succeeds(
        crate::support::bin::command(["deliveries", "replay", "--subscription", "s3"])
            .arg("--delivery")
            .arg(format!("del_{id}"))
            .arg("--config")
            .arg(cfg.path()),
    )
    .await;
    let reqs = rx.wait_for(11, Duration::from_secs(20)).await;
    let again: Vec<_> = reqs.iter().filter(|r| r.path == "/s3").collect();
    assert_eq!(again.len(), 3, "s3 got its two rows and the replay");
    assert_eq!(
        again[2].json()["id"],
        again[0].json()["id"],
        "the same event again"
    );
    eprintln!(
        "replay by another process delivered after {:?}",
        replayed.elapsed()
    );
    assert!(
        replayed.elapsed() < Duration::from_secs(20),
        "the replay waited for the backstop ({:?})",
        replayed.elapsed()
    );
    // s3's pump reads the outbox (the row), then once more (nothing else: back to memory),
    // and perhaps on a poll tick while the row is out; the other four pumps read nothing (at
    // one claim per poll each, they alone would add 12 before the claims stay still for 3 s).
    let after = d
        .claims_settled(Duration::from_secs(3), Duration::from_secs(20))
        .await;
    assert!(
        (1..=6).contains(&(after - settled)),
        "{} claims after the replay",
        after - settled
    );
    d.stop().await;
}
