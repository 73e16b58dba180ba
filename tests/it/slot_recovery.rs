//! The self-healing slot (issue #18): a slot invalidated by `max_slot_wal_keep_size`, dropped by
//! hand, or recreated by someone else is reported (log line, `/readyz`, API, metric, `walhook
//! check`) while the daemon stays up; `walhook slot recover`, the API call or `on_slot_lost =
//! "recover"` brings it back: every subscription gets a RESYNC marker, then the current rows of
//! its table (its filter applied), then changes stream again. The retained-WAL warning fires
//! before the cap is reached.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use walhook::embedded_pg::PgServer;

use crate::support::bin::{self, Walhook};
use crate::support::daemon::fast_delivery;
use crate::support::receiver::{Receiver, Request};
use crate::support::write_config;

const TOKEN: &str = "slot-token";

fn sub(id: &str, table: &str, url: &str, extra: &str) -> String {
    format!(
        "[[subscriptions]]\nid = \"{id}\"\ntable = \"{table}\"\n\
         events = [\"INSERT\", \"UPDATE\", \"DELETE\"]\nurl = \"{url}/{id}\"\nsecret = \"whsec_slot\"\n{extra}\n"
    )
}

/// A config whose `[source]` carries `source_extra` (e.g. `on_slot_lost`), with the API on port 0.
fn config(url: &str, slot: &str, source_extra: &str, subs: &str) -> String {
    config_with(url, slot, source_extra, "", subs)
}

/// [`config`] with `delivery_extra` in `[delivery]` (e.g. `enabled = false`).
fn config_with(
    url: &str,
    slot: &str,
    source_extra: &str,
    delivery_extra: &str,
    subs: &str,
) -> String {
    format!(
        "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\n{source_extra}\n[project]\nid = \"test-project\"\n{}\n{subs}",
        fast_delivery(&format!(
            "{delivery_extra}\n[api]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
        ))
    )
}

struct Run {
    child: Walhook,
    http: reqwest::Client,
    base: String,
}

impl Run {
    /// `walhook run` on `cfg`, logging to a fresh file named after `name` (each run its own, so
    /// that the API address read from it is this run's).
    async fn spawn(cfg: &Path, name: &str) -> Run {
        let log = bin::log_path(name);
        let log = log.as_path();
        let mut cmd = bin::with_config("run", cfg);
        cmd.stdout(Stdio::null());
        let mut child = Walhook::spawn_logging(cmd, log);
        let addr = child.api_addr().await;
        let _ = rustls::crypto::ring::default_provider().install_default();
        Run {
            child,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: format!("http://{addr}"),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .header("X-Project-ID", "test-project")
            .header("environment", "master")
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn post(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .header("X-Project-ID", "test-project")
            .header("environment", "master")
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The console's overview page, signed in with the management token.
    async fn console_overview(&self) -> String {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let resp = http
            .post(format!("{}/console/sign-in", self.base))
            .header("cookie", "walhook_signin=presign-slot-test")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf=presign-slot-test&token={TOKEN}"))
            .send()
            .await
            .unwrap();
        let session = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.strip_prefix("walhook_session="))
            .and_then(|c| c.split(';').next())
            .unwrap_or_else(|| panic!("no session cookie: {resp:?}"))
            .to_string();
        http.get(format!("{}/console", self.base))
            .header("cookie", format!("walhook_session={session}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Polls `/readyz` until its status is `want`; returns the body.
    async fn wait_ready(&self, want: u16, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (status, body) = self.get("/readyz").await;
            if status == want {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz: wanted {want}, last {status} {body}; log:\n{}",
                self.child.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The broken state is reported everywhere: log, /readyz, the API, the metric.
    async fn assert_broken(&mut self, state: &str) {
        self.child
            .wait_log(&format!("is {state}:"), Duration::from_secs(30))
            .await;
        assert_eq!(
            self.child.log_count(&format!("is {state}:")),
            1,
            "one log line; log:\n{}",
            self.child.log_tail(30)
        );
        let body = self.wait_ready(503, 20).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        let reason = v["reason"].as_str().unwrap();
        assert!(reason.contains(&format!("is {state}:")), "{reason}");
        assert!(reason.contains("walhook slot recover"), "{reason}");
        assert!(
            reason.contains("changes committed after checkpoint"),
            "{reason}"
        );
        let (status, body) = self.get("/api/rest/_slot").await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["state"], state, "{v}");
        assert_eq!(v["ready"], false, "{v}");
        assert!(v["missingSince"]["lsn"].is_string(), "{v}");
        let (_, metrics) = self.get("/metrics").await;
        assert!(
            metrics.contains(&format!("walhook_slot_state{{state=\"{state}\"}} 1")),
            "{metrics}"
        );
        assert!(
            metrics.contains("walhook_slot_state{state=\"ok\"} 0"),
            "{metrics}"
        );
        let page = self.console_overview().await;
        assert!(
            page.contains(&format!("is {state}:")) && page.contains("id=\"slot-broken\""),
            "{page}"
        );
    }
}

/// Requests with event `event` sent to `path`.
fn to(reqs: &[Request], path: &str, event: &str) -> Vec<Value> {
    reqs.iter()
        .filter(|r| r.path == path && r.header("x-archie-event") == event)
        .map(Request::json)
        .collect()
}

/// Waits until `done(requests)` holds.
async fn wait_until(rx: &Receiver, secs: u64, what: &str, done: impl Fn(&[Request]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let reqs = rx.snapshot();
        if done(&reqs) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not received in {secs} s; got {:?}",
            reqs.iter()
                .map(|r| (r.path.clone(), String::from_utf8_lossy(&r.body).to_string()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The marker reached `path` before any READ row, and has the documented shape.
fn assert_marker_first(reqs: &[Request], path: &str, table: &str, reason: &str) {
    let first_marker = reqs
        .iter()
        .position(|r| r.path == path && r.header("x-archie-event") == "RESYNC")
        .unwrap_or_else(|| panic!("no RESYNC to {path}"));
    let first_read = reqs
        .iter()
        .position(|r| r.path == path && r.header("x-archie-event") == "READ")
        .unwrap_or_else(|| panic!("no READ to {path}"));
    assert!(first_marker < first_read, "the marker comes first");
    let m = reqs[first_marker].json();
    assert_eq!(m["event"], "RESYNC");
    assert_eq!(m["table"], table);
    assert_eq!(m["project_id"], "test-project");
    assert_eq!(m["record"], serde_json::json!({}));
    assert_eq!(m["data"], serde_json::json!({}));
    assert_eq!(m["changed_fields"], serde_json::json!([]));
    assert_eq!(m["resync"]["reason"], reason);
    assert!(m["resync"]["missing_since_lsn"].is_string(), "{m}");
    assert!(m["id"].as_str().unwrap().starts_with("evt_resync_"), "{m}");
}

fn records(v: &[Value]) -> Vec<Value> {
    let mut r: Vec<Value> = v.iter().map(|e| e["record"].clone()).collect();
    r.sort_by_key(|r| r["id"].as_i64());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidated_slot_warns_then_is_reported_and_recovered_by_the_cli() {
    // Own server: the cap is cluster-wide and this test writes ~250 MB of WAL.
    let pg = PgServer::start(&[("max_slot_wal_keep_size", "64MB")]).expect("own server");
    let db = pg.create_database().unwrap();
    let sql = |s: &str| pg.psql(&db, s).unwrap_or_else(|e| panic!("{s}: {e}"));
    sql("CREATE TABLE items(id int PRIMARY KEY, name text);
         CREATE TABLE orders(id int PRIMARY KEY, status text);
         CREATE TABLE filler(id int, pad text)");
    let rx = Receiver::ok().await;
    let subs = format!(
        "{}{}",
        sub("items", "items", &rx.url, ""),
        sub("paid", "orders", &rx.url, "filter = { status = \"paid\" }")
    );
    let cfg = write_config(&config(
        &pg.url(&db),
        &db,
        "slot_wal_warn_fraction = 0.5",
        &subs,
    ));

    let mut run = Run::spawn(cfg.path(), &format!("slot-{}-1", std::process::id())).await;
    run.child
        .wait_log("streaming", Duration::from_secs(30))
        .await;
    sql("INSERT INTO items VALUES (1, 'one')");
    wait_until(&rx, 30, "the first insert", |r| {
        to(r, "/items", "INSERT").len() == 1
    })
    .await;
    run.child.stop().await;

    // 1. Past half the cap while walhook is stopped: the next start warns before streaming.
    sql("INSERT INTO filler SELECT g, repeat('x', 1000) FROM generate_series(1, 45000) g");
    sql("TRUNCATE filler");
    let mut run = Run::spawn(cfg.path(), &format!("slot-{}-2", std::process::id())).await;
    let warned = run
        .child
        .wait_log("of max_slot_wal_keep_size", Duration::from_secs(30))
        .await;
    assert!(
        warned.contains("PostgreSQL invalidates it at 100%"),
        "{warned}"
    );
    let (_, metrics) = run.get("/metrics").await;
    let fraction: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "walhook_slot_wal_retained_fraction{{slot=\"{db}\"}} "
            ))
        })
        .unwrap_or_else(|| panic!("no retained fraction in {metrics}"))
        .parse()
        .unwrap();
    assert!((0.5..1.0).contains(&fraction), "{fraction}");
    run.child
        .wait_log("streaming", Duration::from_secs(30))
        .await;
    run.child.stop().await;

    // 2. Changes during the gap, then far past the cap: the slot is invalidated.
    sql("UPDATE items SET name = 'one, renamed' WHERE id = 1;
         INSERT INTO items VALUES (2, 'two'), (3, 'three');
         DELETE FROM items WHERE id = 3;
         INSERT INTO orders VALUES (1, 'paid'), (2, 'open')");
    for _ in 0..4 {
        sql("INSERT INTO filler SELECT g, repeat('x', 1000) FROM generate_series(1, 50000) g");
        sql("TRUNCATE filler");
        sql("SELECT pg_switch_wal()");
    }
    sql("CHECKPOINT");
    let status = sql(&format!(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{db}'"
    ));
    assert_eq!(status, "lost", "the slot is invalidated");

    // 3. walhook stays up, not ready, and says so everywhere.
    let mut run = Run::spawn(cfg.path(), &format!("slot-{}-3", std::process::id())).await;
    run.assert_broken("lost").await;
    let check = bin::with_config("check", cfg.path())
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("FAIL") && l.contains("is lost:")),
        "{out}"
    );
    let status = bin::command(["slot", "status", "--config"])
        .arg(cfg.path())
        .output()
        .await
        .unwrap();
    assert!(!status.status.success());

    // 4. `walhook slot recover`: markers, then the current rows (filter applied), then streaming.
    let recover = bin::command(["slot", "recover", "--config"])
        .arg(cfg.path())
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&recover.stdout);
    assert!(
        recover.status.success(),
        "{out}\n{}\nlog:\n{}",
        String::from_utf8_lossy(&recover.stderr),
        run.child.log_tail(30)
    );
    assert!(out.contains("markers: 2 stored, 2 delivered"), "{out}");
    wait_until(&rx, 60, "markers and backfill rows", |r| {
        to(r, "/items", "READ").len() >= 2 && !to(r, "/paid", "READ").is_empty()
    })
    .await;
    let reqs = rx.snapshot();
    assert_marker_first(&reqs, "/items", "items", "lost");
    assert_marker_first(&reqs, "/paid", "orders", "lost");
    assert_eq!(to(&reqs, "/items", "RESYNC").len(), 1);
    assert_eq!(
        records(&to(&reqs, "/items", "READ")),
        vec![
            serde_json::json!({"id": 1, "name": "one, renamed"}),
            serde_json::json!({"id": 2, "name": "two"}),
        ],
        "row 3, deleted during the gap, cannot be replayed"
    );
    assert_eq!(
        records(&to(&reqs, "/paid", "READ")),
        vec![serde_json::json!({"id": 1, "status": "paid"})],
        "the subscription's filter applies"
    );
    run.wait_ready(200, 30).await;
    let (_, body) = run.get("/api/rest/_slot").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "ok", "{v}");
    assert_eq!(v["lastRecovery"]["reason"], "lost", "{v}");
    assert_eq!(
        v["lastRecovery"]["backfills"].as_array().unwrap().len(),
        2,
        "{v}"
    );

    sql("INSERT INTO items VALUES (4, 'four')");
    wait_until(&rx, 30, "a change after the recovery", |r| {
        to(r, "/items", "INSERT")
            .iter()
            .any(|e| e["record"] == serde_json::json!({"id": 4, "name": "four"}))
    })
    .await;
    run.child.stop().await;
}

/// Stops the daemon and drops the test's slot (slots are cluster-wide on the shared server).
async fn stop_and_drop(child: Walhook, db: &crate::support::TestDb) {
    child.stop().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = db.sql(&format!(
            "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots
             WHERE slot_name = '{}' AND NOT active",
            db.name
        ));
        let still = db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.name
        ));
        if still == "0" {
            let _ = left;
            return;
        }
        assert!(Instant::now() < deadline, "slot {} still active", db.name);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_slot_is_reported_and_recovered_through_the_api() {
    let db = crate::support::TestDb::new();
    db.sql("CREATE TABLE items(id int PRIMARY KEY, name text)");
    let rx = Receiver::ok().await;
    let subs = sub("items", "items", &rx.url, "");
    // First without delivery: row 1 waits in the outbox.
    let quiet = write_config(&config_with(
        &db.url(),
        &db.name,
        "",
        "enabled = false",
        &subs,
    ));
    let cfg = write_config(&config(&db.url(), &db.name, "", &subs));
    let mut run = Run::spawn(quiet.path(), &format!("slot-{}-4", std::process::id())).await;
    run.child
        .wait_log("streaming", Duration::from_secs(30))
        .await;
    // A healthy slot has nothing to recover.
    let (status, body) = run.post("/api/rest/_slot/recover").await;
    assert_eq!(status, 409, "{body}");
    db.sql("INSERT INTO items VALUES (1, 'one')");
    crate::support::daemon::wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_states",
        "1",
        30,
    )
    .await;
    run.child.stop().await;

    db.sql(&format!("SELECT pg_drop_replication_slot('{}')", db.name));
    db.sql("INSERT INTO items VALUES (2, 'two')");
    let mut run = Run::spawn(cfg.path(), &format!("slot-{}-5", std::process::id())).await;
    run.assert_broken("missing").await;
    // Up, not ready, and still delivering what the outbox holds.
    wait_until(&rx, 30, "row 1 from the outbox", |r| {
        to(r, "/items", "INSERT").len() == 1
    })
    .await;
    run.wait_ready(503, 5).await;

    let (status, body) = run.post("/api/rest/_slot/recover").await;
    assert_eq!(status, 202, "{body}");
    wait_until(&rx, 60, "marker and backfill rows", |r| {
        to(r, "/items", "READ").len() >= 2
    })
    .await;
    let reqs = rx.snapshot();
    assert_marker_first(&reqs, "/items", "items", "missing");
    assert_eq!(
        records(&to(&reqs, "/items", "READ")),
        vec![
            serde_json::json!({"id": 1, "name": "one"}),
            serde_json::json!({"id": 2, "name": "two"}),
        ]
    );
    run.wait_ready(200, 30).await;
    db.sql("INSERT INTO items VALUES (3, 'three')");
    wait_until(&rx, 30, "a change after the recovery", |r| {
        to(r, "/items", "INSERT").len() == 2
    })
    .await;
    stop_and_drop(run.child, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_recreated_by_someone_else_is_moved_and_recovered_automatically() {
    let db = crate::support::TestDb::new();
    db.sql("CREATE TABLE items(id int PRIMARY KEY, name text)");
    let rx = Receiver::ok().await;
    let subs = sub("items", "items", &rx.url, "");
    let cfg = write_config(&config(&db.url(), &db.name, "", &subs));
    let mut run = Run::spawn(cfg.path(), &format!("slot-{}-6", std::process::id())).await;
    run.child
        .wait_log("streaming", Duration::from_secs(30))
        .await;
    db.sql("INSERT INTO items VALUES (1, 'one')");
    wait_until(&rx, 30, "the first insert", |r| {
        to(r, "/items", "INSERT").len() == 1
    })
    .await;
    run.child.stop().await;

    // Dropped and recreated by hand: the change in between is in no slot.
    db.sql(&format!("SELECT pg_drop_replication_slot('{}')", db.name));
    db.sql("INSERT INTO items VALUES (2, 'two')");
    db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
        db.name
    ));
    let status = bin::command(["slot", "status", "--config"])
        .arg(cfg.path())
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(!status.status.success(), "{out}");
    assert!(out.contains("is moved:"), "{out}");

    // on_slot_lost = "recover": reported, then recovered without a hand.
    let cfg2 = write_config(&config(
        &db.url(),
        &db.name,
        "on_slot_lost = \"recover\"",
        &subs,
    ));
    let mut run = Run::spawn(cfg2.path(), &format!("slot-{}-7", std::process::id())).await;
    run.child
        .wait_log("is moved:", Duration::from_secs(30))
        .await;
    wait_until(&rx, 60, "marker and backfill rows", |r| {
        to(r, "/items", "READ").len() >= 2
    })
    .await;
    let reqs = rx.snapshot();
    assert_marker_first(&reqs, "/items", "items", "moved");
    assert_eq!(
        records(&to(&reqs, "/items", "READ")),
        vec![
            serde_json::json!({"id": 1, "name": "one"}),
            serde_json::json!({"id": 2, "name": "two"}),
        ]
    );
    run.wait_ready(200, 30).await;
    stop_and_drop(run.child, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_dropped_while_running_is_detected_at_the_reconnect() {
    let db = crate::support::TestDb::new();
    db.sql("CREATE TABLE items(id int PRIMARY KEY, name text)");
    let rx = Receiver::ok().await;
    let cfg = write_config(&config(
        &db.url(),
        &db.name,
        "",
        &sub("items", "items", &rx.url, ""),
    ));
    let mut run = Run::spawn(cfg.path(), &format!("slot-{}-8", std::process::id())).await;
    run.child
        .wait_log("streaming", Duration::from_secs(30))
        .await;
    db.sql("INSERT INTO items VALUES (1, 'one')");
    wait_until(&rx, 30, "the first insert", |r| {
        to(r, "/items", "INSERT").len() == 1
    })
    .await;
    run.wait_ready(200, 30).await;

    // Taken away from the running daemon: its walsender ended, the slot dropped.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        db.sql(&format!(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots
             WHERE slot_name = '{}' AND active",
            db.name
        ));
        if db
            .pg
            .psql(
                &db.name,
                &format!("SELECT pg_drop_replication_slot('{}')", db.name),
            )
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the slot could not be dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.sql("INSERT INTO items VALUES (2, 'two')");
    run.assert_broken("missing").await;
    // Nothing was recreated behind the operator's back.
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.name
        )),
        "0"
    );
    bin::succeeds(bin::command(["slot", "recover", "--config"]).arg(cfg.path())).await;
    wait_until(&rx, 60, "the backfill", |r| {
        to(r, "/items", "READ").len() >= 2
    })
    .await;
    run.wait_ready(200, 30).await;
    stop_and_drop(run.child, &db).await;
}
