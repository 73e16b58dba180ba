//! The `walhook` binary as an operator runs it: `tail` and `check`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::bin::{self, Walhook};
use crate::support::TestDb;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A config whose subscriptions are never delivered to (the commands under test do not
/// deliver), unless `subs` brings its own `[delivery]`.
fn write_config(db: &TestDb, extra_source: &str, subs: &str) -> tempfile::NamedTempFile {
    let delivery = if subs.contains("[delivery]") {
        ""
    } else {
        crate::support::DELIVERY_OFF
    };
    crate::support::write_config(&format!(
        "[source]\nurl = \"{}\"\n{extra_source}\n[project]\nid = \"cli\"\n{delivery}{subs}",
        db.url()
    ))
}

const ORDERS_SUB: &str = "[[subscriptions]]\nid = \"orders\"\ntable = \"orders\"\n\
    events = [\"INSERT\", \"UPDATE\", \"DELETE\"]\nurl = \"https://127.0.0.1:9/h\"\nsecret = \"${CLI_TEST_SECRET}\"\n";

#[tokio::test]
async fn tail_prints_committed_changes_and_stops_cleanly_on_sigterm() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders(id int PRIMARY KEY, status text)");
    let cfg = write_config(&db, "", ORDERS_SUB);
    let mut cmd = bin::with_config("tail", cfg.path());
    cmd.env("CLI_TEST_SECRET", "whsec_x").stdout(Stdio::piped());
    let mut tail = Walhook::spawn_logging(cmd, &bin::log_path(&format!("tail-{}", db.name)));
    tail.wait_log("tailing", Duration::from_secs(20)).await;
    let mut stdout = BufReader::new(tail.child.stdout.take().unwrap()).lines();
    let client = db.client().await;
    let mut latencies = Vec::new();
    for i in 0..5 {
        let t0 = Instant::now();
        client
            .execute("INSERT INTO orders VALUES ($1, 'new')", &[&i])
            .await
            .unwrap();
        let line = tokio::time::timeout(Duration::from_secs(10), stdout.next_line())
            .await
            .expect("a line within 10 s")
            .unwrap()
            .unwrap();
        latencies.push(t0.elapsed());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["subscription"], "orders");
        assert_eq!(v["payload"]["event"], "INSERT");
        assert_eq!(v["payload"]["record"]["id"].to_string(), i.to_string());
        assert_eq!(v["payload"]["project_id"], "cli");
    }
    // A figure, not an assertion: timing belongs to benchmarks (see the note / README).
    eprintln!("tail latency commit -> line: {latencies:?}");

    // SIGTERM: clean exit, and the temporary slot disappears with the connection.
    let status = tail.stop().await;
    assert!(status.success(), "{status}");
    let slots = db.sql(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE database = '{}'",
        db.name
    ));
    assert_eq!(slots, "0");
}

#[tokio::test]
async fn tail_with_unknown_subscription_fails_naming_it() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders(id int PRIMARY KEY)");
    let cfg = write_config(&db, "", ORDERS_SUB);
    let out = bin::command(["tail", "--subscription", "nope", "--config"])
        .arg(cfg.path())
        .env("CLI_TEST_SECRET", "whsec_x")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no subscription with id \"nope\""), "{err}");
}

#[tokio::test]
async fn config_errors_name_the_variable() {
    let db = TestDb::new();
    let cfg = write_config(&db, "", ORDERS_SUB);
    let out = bin::with_config("check", cfg.path())
        .env_remove("CLI_TEST_SECRET")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CLI_TEST_SECRET is not set") && err.contains("line 15"),
        "{err}"
    );
    // A fatal error is printed once, and without colour codes when stderr is not a terminal.
    assert_eq!(
        err.matches("CLI_TEST_SECRET is not set").count(),
        1,
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "{err}");
}

#[tokio::test]
async fn json_log_format_writes_one_object_per_line() {
    let db = TestDb::new();
    let cfg = write_config(&db, "", "");
    let out = bin::with_config("migrate", cfg.path())
        .env("WALHOOK_LOG_FORMAT", "json")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.contains("applied outbox migration")),
        "{err}"
    );
}

async fn check(db: &TestDb, extra_source: &str) -> (bool, String) {
    check_with(db, extra_source, ORDERS_SUB).await
}

async fn check_with(db: &TestDb, extra_source: &str, subs: &str) -> (bool, String) {
    let cfg = write_config(db, extra_source, subs);
    let out = bin::with_config("check", cfg.path())
        .env("CLI_TEST_SECRET", "whsec_x")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn check_reports_readiness_and_changes_nothing() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders(id int PRIMARY KEY, status text)");
    let (ok, out) = check(&db, "").await;
    assert!(ok, "{out}");
    assert!(out.contains("ok    wal_level = logical"), "{out}");
    assert!(out.contains("ok    server version"), "{out}");
    assert!(
        out.contains("REPLICA IDENTITY DEFAULT: walhook will set it to FULL"),
        "{out}"
    );
    assert!(out.contains("slot walhook does not exist yet"), "{out}");
    assert!(out.contains("no blocking problems"), "{out}");

    let (ok, out) = check(&db, "manage_replica_identity = false").await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL  table public.orders") && out.contains("REPLICA IDENTITY FULL;"),
        "{out}"
    );
    assert!(out.contains("1 blocking problem(s)"), "{out}");

    // Read-only: nothing was created or altered.
    assert_eq!(
        db.sql("SELECT relreplident FROM pg_class WHERE relname = 'orders'"),
        "d"
    );
    assert_eq!(db.sql("SELECT count(*) FROM pg_publication"), "0");

    db.sql("DROP TABLE orders; CREATE TABLE orders(id int PRIMARY KEY)");
    let cfg_sub = ORDERS_SUB.to_string() + "select = [\"id\", \"status\"]\n";
    let (ok, stdout) = check_with(&db, "", &cfg_sub).await;
    assert!(!ok);
    assert!(stdout.contains("no column \"status\""), "{stdout}");
}

#[tokio::test]
async fn a_wrong_password_stops_run_with_the_servers_message() {
    use crate::support::pg::{SCRAM_USER, TEST_PASSWORD};
    let db = TestDb::new();
    let wrong = format!("{TEST_PASSWORD}-wrong");
    let f = crate::support::write_config(&format!(
        "[source]\nurl = \"{}\"\n[project]\nid = \"cli\"\n",
        db.pg.url_as(SCRAM_USER, &wrong, &db.name)
    ));
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        bin::with_config("run", f.path()).output(),
    )
    .await
    .expect("a wrong password is not retried forever")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("password authentication failed") && err.contains("28P01"),
        "{err}"
    );
    assert!(
        !err.contains(&wrong),
        "the password is never printed: {err}"
    );
}

#[tokio::test]
async fn run_serves_the_api_health_and_metrics_when_a_token_is_set() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    // The API binds port 0 and logs the address it got: no port is chosen, released and raced.
    let f = crate::support::write_config(&crate::support::config_text(
        &db.url(),
        &db.name,
        "cli",
        &format!(
            "{}[api]\nlisten = \"127.0.0.1:0\"\ntoken = \"${{CLI_API_TOKEN}}\"\n",
            crate::support::DELIVERY_OFF
        ),
        ORDERS_SUB,
    ));
    let mut cmd = bin::with_config("run", f.path());
    cmd.env("CLI_TEST_SECRET", "s3cret-value")
        .env("CLI_API_TOKEN", "tok-123")
        .stdout(Stdio::null());
    let mut child = Walhook::spawn_logging(cmd, &bin::log_path(&format!("api-{}", db.name)));
    let addr = child.api_addr().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await;
        if ready.as_ref().is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "not ready: {ready:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let unauthorized = http
        .get(format!("{base}/api/rest/_webhooks"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let list = http
        .get(format!("{base}/api/rest/_webhooks"))
        .bearer_auth("tok-123")
        .header("X-Project-ID", "cli")
        .header("environment", "master")
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    let body = list.text().await.unwrap();
    assert!(
        body.contains("\"orders\"") && body.contains("\"source\":\"config\""),
        "{body}"
    );
    assert!(
        !body.contains("s3cret-value"),
        "no secret in responses: {body}"
    );
    db.sql("INSERT INTO orders VALUES (1, 'new')");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains("walhook_changes_decoded_total 1\n") {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = child.log();
    assert!(
        !log.contains("s3cret-value") && !log.contains("tok-123"),
        "no secret in the log: {log}"
    );
    assert!(child.stop().await.success());
}
