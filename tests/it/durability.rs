//! Durability acceptance tests for `walhook run`: SIGKILL at random moments, Postgres restarts
//! (fast and immediate) under a running daemon, idle slots under unpublished WAL churn, one
//! huge source transaction in bounded memory, a poison row, and a source transaction reaching
//! the outbox all at once.
//!
//! Every test runs the real binary with its stderr in a log file whose path is printed; the log
//! is dumped when an assertion fails. Delivery is off: the tests count outbox rows.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::support::bin::{Runs, Walhook};
use crate::support::{poll_value, sub, TestDb, DELIVERY_OFF};
use rand::Rng;
use walhook::config::Config;
use walhook::embedded_pg::{PgServer, StopMode};

const ALL: &str = r#"["INSERT", "UPDATE", "DELETE"]"#;

/// A daemon config with delivery off: these tests count outbox rows; nothing is sent.
fn config_text(url: &str, slot: &str, subs: &str) -> String {
    crate::support::config_text(url, slot, "p", DELIVERY_OFF, subs)
}

/// Generous for a loaded 2-core machine: a run that does not stream by then is a failure.
const STREAMING_WITHIN: Duration = Duration::from_secs(60);

async fn stop(child: Walhook) -> std::process::ExitStatus {
    child.stop().await
}

pub(crate) async fn wait_slot_active(pg: &PgServer, db: &str, daemon: &Runs) {
    let ok = poll_value(
        pg,
        db,
        &crate::support::slot_streaming_sql(db),
        "1",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        ok,
        "slot never became active; log:\n{}",
        daemon.log_tail(40)
    );
}

/// `PgServer::stop`, failing the test instead of hanging when the server has not exited within
/// `limit`: a fast shutdown waits until every walsender's client confirmed the WAL sent to it,
/// which walhook cannot do while its outbox, on the same server, refuses new connections.
pub(crate) async fn stop_within(pg: &mut PgServer, mode: StopMode, limit: Duration, daemon: &Runs) {
    let dir = pg.psql("postgres", "SHOW data_directory").unwrap();
    let pid: i32 = std::fs::read_to_string(format!("{dir}/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("postmaster pid");
    let exited = || {
        // The postmaster is our child: once it exits it stays a zombie until `stop` reaps it.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    };
    let sig = match mode {
        StopMode::Fast => libc::SIGINT,
        StopMode::Immediate => libc::SIGQUIT,
    };
    // SAFETY: signalling the server this test started.
    unsafe { libc::kill(pid, sig) };
    let deadline = Instant::now() + limit;
    while !exited() {
        if Instant::now() > deadline {
            // SAFETY: as above; immediate shutdown, so that dropping the server does not hang.
            unsafe { libc::kill(pid, libc::SIGQUIT) };
            pg.stop(StopMode::Immediate).unwrap();
            panic!(
                "Postgres {mode:?} shutdown did not finish within {limit:?}; walhook log:\n{}",
                daemon.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.stop(mode).unwrap();
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL at random moments during a W1-shaped load: the outbox equals an uninterrupted
//    reference run, id for id and byte for byte.
// ---------------------------------------------------------------------------------------------

const W1_TXNS: usize = 50;
const W1_ROWS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let db = TestDb::new();
    db.sql(
        "CREATE TABLE orders(id uuid PRIMARY KEY DEFAULT gen_random_uuid(), total numeric(12,2), \
         status text, customer_id text, created_at timestamptz DEFAULT now(), meta jsonb)",
    );
    let subs = [
        sub("all", "orders", ALL, ""),
        sub(
            "paid",
            "orders",
            r#"["UPDATE"]"#,
            r#"filter = { status = "paid" }"#,
        ),
    ]
    .concat();
    let text = config_text(&db.url(), &db.name, &subs);
    let daemon = Runs::new(&db.name, &text);
    let mut child = daemon.spawn();
    wait_slot_active(db.pg, &db.name, &daemon).await;

    // The reference: an uninterrupted in-process pipeline over the same WAL.
    let config = Config::parse(&text, "durability.toml").unwrap();
    let mut reference = crate::support::start(&config)
        .await
        .expect("reference pipeline");

    let client = db.client().await;
    let load = tokio::spawn(async move {
        for _ in 0..W1_TXNS {
            client
                .batch_execute(&format!(
                    "INSERT INTO orders(total, status, customer_id, meta) \
                     SELECT (g % 500) + 0.99, 'new', 'c' || (g % 50), \
                            jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g % 7)) \
                     FROM generate_series(1, {W1_ROWS}) g"
                ))
                .await
                .unwrap();
        }
        for _ in 0..W1_TXNS {
            // Half become 'paid' (matches the filtered subscription), half 'shipped'.
            client
                .batch_execute(&format!(
                    "UPDATE orders SET status = CASE WHEN total::int % 2 = 0 THEN 'paid' ELSE 'shipped' END \
                     WHERE id IN (SELECT id FROM orders WHERE status = 'new' LIMIT {W1_ROWS})"
                ))
                .await
                .unwrap();
        }
        for _ in 0..W1_TXNS {
            client
                .batch_execute(&format!(
                    "DELETE FROM orders WHERE id IN (SELECT id FROM orders LIMIT {W1_ROWS})"
                ))
                .await
                .unwrap();
        }
    });

    let mut rng = rand::thread_rng();
    let mut kills = 0;
    while kills < 10 || !load.is_finished() {
        // Every other kill lands while streaming (mid-COPY most likely), the rest anywhere,
        // including during startup (migrations, slot setup).
        if kills % 2 == 1 {
            daemon.wait_streaming(kills / 2 + 1, STREAMING_WITHIN).await;
        }
        let delay = rng.gen_range(100..=800);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.sigkill().await;
        kills += 1;
        child = daemon.spawn();
    }
    load.await.unwrap();
    let load_done = started.elapsed();
    eprintln!("[kill9] load finished after {load_done:?}, {kills} SIGKILLs during it");
    // walhook is still behind: a few more kills while it catches up.
    for _ in 0..5 {
        let delay = rng.gen_range(100..=800);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.sigkill().await;
        kills += 1;
        child = daemon.spawn();
    }

    // Drain the reference: every change of the load has been decoded once `changes` has all.
    let total_changes = 3 * W1_TXNS * W1_ROWS;
    let mut seen_changes = 0;
    while seen_changes < total_changes {
        match tokio::time::timeout(Duration::from_secs(60), reference.changes.recv()).await {
            Ok(Some(_)) => seen_changes += 1,
            _ => panic!("reference saw only {seen_changes} of {total_changes} changes"),
        }
    }
    let mut expected: HashMap<(String, String), String> = HashMap::new();
    while let Ok(r) = reference.rx.try_recv() {
        let prev = expected.insert((r.subscription.to_string(), r.event_id.clone()), r.body);
        assert!(prev.is_none(), "reference routed {} twice", r.event_id);
    }
    reference.stop().await;
    let paid = expected.keys().filter(|(s, _)| s == "paid").count();
    assert_eq!(expected.len() - paid, total_changes);
    assert!(paid > 0 && paid < W1_TXNS * W1_ROWS, "paid = {paid}");

    let want = expected.len().to_string();
    let caught_up = poll_value(
        db.pg,
        &db.name,
        "SELECT count(*) FROM walhook.delivery_states",
        &want,
        Duration::from_secs(120),
    )
    .await;
    // Let a late duplicate show itself, then look while the daemon still runs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let count = db.sql("SELECT count(*) FROM walhook.delivery_states");
    let distinct = db.sql(
        "SELECT count(*) FROM (SELECT DISTINCT subscription_id, event_id FROM walhook.delivery_states) d",
    );
    eprintln!(
        "[kill9] reference {} deliveries ({paid} paid); outbox {count} rows, {distinct} distinct; caught up: {caught_up}; {:?} total",
        expected.len(),
        started.elapsed()
    );
    let log = daemon.log_tail(60);
    let starts = daemon.streaming_starts();
    eprintln!("[kill9] {kills} SIGKILLs in all; {starts} instances reached streaming");
    assert!(stop(child).await.success());
    assert_eq!(count, distinct, "duplicates in the outbox; log:\n{log}");

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT subscription_id, event_id, payload FROM walhook.delivery_states",
            &[],
        )
        .await
        .unwrap();
    let mut got: HashMap<(String, String), String> = HashMap::new();
    for r in rows {
        got.insert((r.get(0), r.get(1)), r.get(2));
    }
    let want_keys: HashSet<_> = expected.keys().collect();
    let got_keys: HashSet<_> = got.keys().collect();
    let missing: Vec<_> = want_keys.difference(&got_keys).take(5).collect();
    let extra: Vec<_> = got_keys.difference(&want_keys).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "outbox differs from the reference: {} missing (e.g. {missing:?}), {} extra (e.g. {extra:?}); log:\n{log}",
        want_keys.difference(&got_keys).count(),
        got_keys.difference(&want_keys).count(),
    );
    let mut differing = 0;
    for (k, body) in &expected {
        if got[k] != *body {
            if differing == 0 {
                eprintln!(
                    "[kill9] payload differs for {k:?}:\n want {body}\n  got {}",
                    got[k]
                );
            }
            differing += 1;
        }
    }
    assert_eq!(differing, 0, "payloads differing from the reference");
    assert_eq!(count, want);
    eprintln!("[kill9] done in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 2. Postgres stops (fast, then immediate) while walhook streams; walhook resumes by itself.
// ---------------------------------------------------------------------------------------------

const RESTART_BATCHES: i64 = 30;
const RESTART_BATCH_ROWS: i64 = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fast_and_immediate_restarts_lose_and_duplicate_nothing() {
    let started = Instant::now();
    let mut pg = PgServer::start(&[]).expect("own server");
    let db = pg.create_database().unwrap();
    pg.psql(&db, "CREATE TABLE t(id int PRIMARY KEY, v text)")
        .unwrap();
    let subs = [sub("a", "t", ALL, ""), sub("ins", "t", r#"["INSERT"]"#, "")].concat();
    let daemon = Runs::new(&db, &config_text(&pg.url(&db), &db, &subs));
    let child = daemon.spawn();
    wait_slot_active(&pg, &db, &daemon).await;

    for b in 0..RESTART_BATCHES {
        let (lo, hi) = (b * RESTART_BATCH_ROWS + 1, (b + 1) * RESTART_BATCH_ROWS);
        pg.psql(
            &db,
            &format!("INSERT INTO t SELECT g, repeat('v', 100) FROM generate_series({lo}, {hi}) g"),
        )
        .unwrap_or_else(|e| panic!("batch {b}: {e}"));
        let mode = match b {
            9 => Some(StopMode::Fast),
            19 => Some(StopMode::Immediate),
            _ => None,
        };
        if let Some(mode) = mode {
            let stored = pg
                .psql(&db, "SELECT count(*) FROM walhook.delivery_states")
                .unwrap_or_default();
            stop_within(&mut pg, mode, Duration::from_secs(60), &daemon).await;
            eprintln!(
                "[restart] {mode:?} stop after {} rows inserted ({stored} deliveries stored)",
                hi
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            pg.restart().unwrap();
        }
    }
    let n = RESTART_BATCHES * RESTART_BATCH_ROWS;
    let caught_up = poll_value(
        &pg,
        &db,
        "SELECT count(*) FROM walhook.delivery_states",
        &(2 * n).to_string(),
        Duration::from_secs(90),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_sub = pg
        .psql(
            &db,
            "SELECT string_agg(s, ' ' ORDER BY s) FROM (SELECT format('%s:%s/%s/%s/%s/%s', subscription_id, \
             count(*), count(DISTINCT event_id), count(DISTINCT payload::jsonb->'record'->>'id'), \
             min((payload::jsonb->'record'->>'id')::int), max((payload::jsonb->'record'->>'id')::int)) AS s \
             FROM walhook.delivery_states GROUP BY subscription_id) g",
        )
        .unwrap_or_else(|e| e.to_string());
    eprintln!(
        "[restart] caught up: {caught_up}; per subscription count/distinct events/distinct ids/min/max: {per_sub}; {:?}",
        started.elapsed()
    );
    let log = daemon.log_tail(40);
    let alive = pg.psql(
        &db,
        &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{db}' AND active"),
    );
    assert!(
        stop(child).await.success(),
        "walhook did not stop cleanly; log:\n{log}"
    );
    let want = format!("a:{n}/{n}/{n}/1/{n} ins:{n}/{n}/{n}/1/{n}");
    assert_eq!(
        per_sub, want,
        "slot active at the end: {alive:?}; log:\n{log}"
    );
    assert!(
        daemon.log_tail(10_000).contains("reconnecting"),
        "walhook never noticed a restart?"
    );
    eprintln!("[restart] done in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 3. Unpublished WAL churn must not pin WAL behind an idle slot.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_in_unsubscribed_tables_does_not_pin_wal() {
    let started = Instant::now();
    // Own server: WAL from other tests' databases would count against the slot here.
    let pg = PgServer::start(&[]).expect("own server");
    let db = pg.create_database().unwrap();
    pg.psql(
        &db,
        "CREATE TABLE a(id int PRIMARY KEY); CREATE TABLE noise(id int, v text)",
    )
    .unwrap();
    let daemon = Runs::new(
        &db,
        &config_text(&pg.url(&db), &db, &sub("a", "a", ALL, "")),
    );
    let child = daemon.spawn();
    wait_slot_active(&pg, &db, &daemon).await;
    pg.psql(&db, "INSERT INTO a VALUES (1)").unwrap();
    assert!(
        poll_value(
            &pg,
            &db,
            "SELECT count(*) FROM walhook.delivery_states",
            "1",
            Duration::from_secs(20)
        )
        .await
    );

    let before = pg.psql(&db, "SELECT pg_current_wal_lsn()").unwrap();
    for i in 0..5 {
        pg.psql(
            &db,
            &format!(
                "INSERT INTO noise SELECT g, repeat('x', 1000) FROM generate_series({}, {}) g",
                i * 10_000 + 1,
                (i + 1) * 10_000
            ),
        )
        .unwrap();
    }
    let written = pg
        .psql(
            &db,
            &format!("SELECT pg_current_wal_lsn() - '{before}'::pg_lsn"),
        )
        .unwrap();
    let lag_sql = format!(
        "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = '{db}'"
    );
    let noise_done = Instant::now();
    let limit: i64 = 16 * 1024 * 1024;
    let mut lag: i64;
    loop {
        lag = pg.psql(&db, &lag_sql).unwrap().parse().unwrap();
        if lag < limit || noise_done.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = noise_done.elapsed();
    eprintln!(
        "[idle-wal] wrote {written} bytes of unpublished WAL; slot lag {lag} bytes ({:.1} MB) after {waited:?}",
        lag as f64 / 1048576.0
    );
    let log = daemon.log_tail(30);
    assert!(stop(child).await.success());
    assert!(
        lag < limit,
        "slot still {lag} bytes behind after {waited:?}; log:\n{log}"
    );
    eprintln!("[idle-wal] done in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 4. One huge source transaction goes through in bounded memory.
// ---------------------------------------------------------------------------------------------

/// Rows in the big transaction; `WALHOOK_BIG_TX_ROWS` overrides (used to choose the default).
fn big_tx_rows() -> i64 {
    std::env::var("WALHOOK_BIG_TX_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BIG_TX_ROWS)
}

const BIG_TX_ROWS: i64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_huge_transaction_is_ingested_in_bounded_memory() {
    let started = Instant::now();
    let n = big_tx_rows();
    eprintln!("[big-tx] N = {n}");
    let pg = PgServer::start(&[]).expect("own server");
    let db = pg.create_database().unwrap();
    pg.psql(
        &db,
        "CREATE TABLE big(id int PRIMARY KEY, total numeric(12,2), note text)",
    )
    .unwrap();
    let daemon = Runs::new(
        &db,
        &config_text(&pg.url(&db), &db, &sub("big", "big", r#"["INSERT"]"#, "")),
    );
    let child = daemon.spawn();
    wait_slot_active(&pg, &db, &daemon).await;
    let pid = child.child.id().unwrap();
    let rss_before = peak_rss_kib(pid);

    pg.psql(
        &db,
        &format!("INSERT INTO big SELECT g, g * 1.25, 'note ' || g FROM generate_series(1, {n}) g"),
    )
    .unwrap();
    let inserted = started.elapsed();
    let stored = poll_value(
        &pg,
        &db,
        "SELECT count(*) FROM walhook.checkpoint",
        "1",
        Duration::from_secs(240),
    )
    .await;
    let ingest = started.elapsed() - inserted;
    let peak = peak_rss_kib(pid);
    let count = pg
        .psql(&db, "SELECT count(*) FROM walhook.delivery_states")
        .unwrap();
    eprintln!(
        "[big-tx] N = {n}: stored {count} rows in {ingest:?} after the insert; walhook VmHWM {peak} kB ({:.1} MB; {rss_before} kB before the transaction)",
        peak as f64 / 1024.0
    );
    let log = daemon.log_tail(30);
    assert!(stop(child).await.success());
    assert!(
        stored,
        "the transaction never reached the outbox; log:\n{log}"
    );
    assert_eq!(count, n.to_string());
    assert!(
        peak <= 100 * 1024,
        "walhook's peak RSS {peak} kB exceeds 100 MB"
    );
    eprintln!("[big-tx] done in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 5. A poison row: a value far larger than any payload may be.
// ---------------------------------------------------------------------------------------------

/// A 300 MB bytea is never decoded into memory: the change is delivered without it, saying so
/// (`oversize`), later changes are delivered, the slot moves past it, and walhook's peak RSS
/// stays under 1 GB (the server sends the value as 600 MB of hex in one message, which walhook
/// receives once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_mb_value_is_delivered_as_an_explicit_oversize_change_in_bounded_memory() {
    let db = crate::support::TestDb::new();
    db.sql("CREATE TABLE blobs(id int PRIMARY KEY, note text, data bytea)");
    let rx = crate::support::receiver::Receiver::ok().await;
    let text = crate::support::config_text(
        &db.url(),
        &db.name,
        "p",
        "[delivery]\nallow_http = true\nallow_private_networks = true\n",
        &format!(
            "[[subscriptions]]\nid = \"b\"\ntable = \"blobs\"\nevents = [\"INSERT\"]\n\
             url = \"{}/blobs\"\nsecret = \"k\"\n",
            rx.url
        ),
    );
    let daemon = Runs::new(&db.name, &text);
    let child = daemon.spawn();
    wait_slot_active(db.pg, &db.name, &daemon).await;
    let pid = child.child.id().unwrap();
    // Repetitive bytes: TOAST compresses them, so the table and the WAL stay small; decoding
    // sends them whole.
    db.sql("INSERT INTO blobs SELECT 1, 'big', decode(repeat('ab', 300 * 1024 * 1024), 'hex')");
    db.sql("INSERT INTO blobs VALUES (2, 'after', '\\x00')");
    let after = db.sql("SELECT pg_current_wal_lsn()");
    let got = rx.wait_for(2, Duration::from_secs(180)).await;
    let peak = peak_rss_kib(pid);
    // Different keys: the two may arrive in either order.
    let by_id = |id: i64| {
        got.iter()
            .map(|r| r.json())
            .find(|v| v["record"]["id"] == id)
            .unwrap_or_else(|| panic!("row {id} not delivered"))
    };
    let big = by_id(1);
    assert_eq!(big["record"], serde_json::json!({"id": 1, "note": "big"}));
    assert_eq!(big["data"], big["record"]);
    assert_eq!(
        big["oversize"],
        serde_json::json!({
            "limit_bytes": 8 << 20,
            "payload_bytes": null,
            "omitted_columns": [{"column": "data", "bytes": 2 + 2 * 300 * 1024 * 1024}],
        })
    );
    assert_eq!(
        by_id(2)["record"],
        serde_json::json!({"id": 2, "note": "after", "data": "\\x00"})
    );
    let moved = poll_value(
        db.pg,
        &db.name,
        &format!(
            "SELECT confirmed_flush_lsn >= '{after}' FROM pg_replication_slots WHERE slot_name = '{}'",
            db.name
        ),
        "t",
        Duration::from_secs(30),
    )
    .await;
    assert!(moved, "the slot did not move past the big row");
    let log = daemon.log_tail(20);
    assert!(stop(child).await.success());
    assert!(
        log.contains("larger than delivery.max_payload_bytes"),
        "the log names the value left out:\n{log}"
    );
    eprintln!("[poison] walhook VmHWM {peak} kB");
    assert!(
        peak <= 1024 * 1024,
        "walhook's peak RSS {peak} kB exceeds 1 GB"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. A source transaction reaches the outbox all at once.
// ---------------------------------------------------------------------------------------------

/// Other sessions see a source transaction's deliveries all at once, with the checkpoint that
/// covers them: the COPYs (one per block of 4,096 ids) run inside one outbox transaction. BEGIN
/// shares a round trip with the first COPY's start; this fails if the COPY ever went first (each
/// COPY would then commit on its own, or the transaction would never commit). Own server: on
/// the shared one, its 30,000-row transaction would make other tests' slot creations wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_transaction_reaches_the_outbox_all_at_once() {
    let pg = PgServer::start(&[]).expect("own server");
    let db = pg.create_database().unwrap();
    pg.psql(&db, "CREATE TABLE orders(id int PRIMARY KEY, status text)")
        .unwrap();
    let daemon = Runs::new(
        &db,
        &config_text(&pg.url(&db), &db, &sub("a", "orders", ALL, "")),
    );
    let child = daemon.spawn();
    wait_slot_active(&pg, &db, &daemon).await;
    // A first transaction takes a block of ids and leaves most of it, so the next one opens
    // with ids in hand: BEGIN and the COPY then go out together.
    pg.psql(&db, "INSERT INTO orders VALUES (0, 'first')")
        .unwrap();
    let count = "SELECT count(*) FROM walhook.delivery_states";
    assert!(
        poll_value(&pg, &db, count, "1", STREAMING_WITHIN).await,
        "the first row was not stored; log:\n{}",
        daemon.log_tail(40)
    );
    let checkpoint = || {
        pg.psql(&db, "SELECT commit_lsn FROM walhook.checkpoint")
            .unwrap()
    };
    let first_checkpoint = checkpoint();
    const ROWS: i64 = 30_000;
    pg.psql(
        &db,
        &format!("INSERT INTO orders SELECT g, 'new' FROM generate_series(1, {ROWS}) g"),
    )
    .unwrap();
    let (client, conn) = tokio_postgres::connect(&pg.url(&db), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let deadline = Instant::now() + STREAMING_WITHIN;
    let mut seen = std::collections::BTreeSet::new();
    loop {
        // Polled without a pause, to catch any state between nothing and everything.
        let rows: i64 = client.query_one(count, &[]).await.unwrap().get(0);
        seen.insert(rows);
        if rows == ROWS + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ROWS} rows not stored in time; counts seen {seen:?}; log:\n{}",
            daemon.log_tail(40)
        );
    }
    assert!(
        seen.iter().all(|&n| n == 1 || n == ROWS + 1),
        "the outbox showed part of a source transaction: counts seen {seen:?}"
    );
    assert_ne!(
        checkpoint(),
        first_checkpoint,
        "the checkpoint moved with the rows"
    );
    assert!(stop(child).await.success());
}
