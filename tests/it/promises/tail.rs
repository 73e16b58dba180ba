//! README: `walhook tail --subscription ID` prints, live, what that one subscription would
//! receive, and nothing of the others.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

use crate::support::bin::{self, Walhook};
use crate::support::{TestDb, DELIVERY_OFF};

use super::subscription;

async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("a line within 15 s")
        .unwrap()
        .expect("tail still running");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_subscription_streams_only_that_subscriptions_payloads() {
    let db = TestDb::new();
    db.sql(
        "CREATE TABLE orders (id int PRIMARY KEY, status text);
         CREATE TABLE other (id int PRIMARY KEY);",
    );
    // "wanted" sees paid orders only; "others" sees every order and the other table.
    let subs = format!(
        "{}filter = {{ status = \"paid\" }}\n{}{}",
        subscription("wanted", "orders", "https://127.0.0.1:9/w", "whsec_x"),
        subscription("others", "orders", "https://127.0.0.1:9/o", "whsec_x"),
        subscription("other_table", "other", "https://127.0.0.1:9/t", "whsec_x"),
    );
    let cfg = crate::support::write_config(&format!(
        "[source]\nurl = \"{}\"\n[project]\nid = \"p\"\n{DELIVERY_OFF}{subs}",
        db.url()
    ));
    let mut cmd = bin::command(["tail", "--subscription", "wanted", "--config"]);
    cmd.arg(cfg.path()).stdout(Stdio::piped());
    let mut tail = Walhook::spawn_logging(cmd, &bin::log_path(&format!("tail-sub-{}", db.name)));
    tail.wait_log("tailing", Duration::from_secs(20)).await;
    let mut lines = BufReader::new(tail.child.stdout.take().unwrap()).lines();

    // Changes only the other subscriptions want come first: had tail printed them, they would be
    // the first lines.
    db.sql("INSERT INTO other VALUES (1)");
    db.sql("INSERT INTO orders VALUES (1, 'new')");
    db.sql("INSERT INTO orders VALUES (2, 'paid')");
    db.sql("UPDATE orders SET status = 'paid' WHERE id = 1");
    db.sql("DELETE FROM orders WHERE id = 2");
    let mut got = Vec::new();
    for _ in 0..3 {
        let v = next_json(&mut lines).await;
        assert_eq!(v["subscription"], "wanted", "{v}");
        got.push(format!(
            "{} {}",
            v["payload"]["event"].as_str().unwrap(),
            v["payload"]["record"]["id"]
        ));
    }
    assert_eq!(got, ["INSERT 2", "UPDATE 1", "DELETE 2"]);
    assert!(tail.stop().await.success());
}

/// `tail` and `check` see what `run` routes: a subscription created through the API (a row in
/// the outbox) is tailed by its id, and `check` counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_and_check_see_api_subscriptions() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    let mut client = db.client().await;
    walhook::outbox::migrate(&mut client, &walhook::outbox::Schema::new("walhook"))
        .await
        .unwrap();
    crate::support::assert_loopback("https://127.0.0.1:9/api");
    db.sql(
        "INSERT INTO walhook.subscriptions (id, source, table_name, events, url, secret)
         VALUES ('wh_api', 'api', 'orders', '{INSERT}', 'https://127.0.0.1:9/api', 'whsec_api')",
    );
    let cfg = crate::support::write_config(&format!(
        "[source]\nurl = \"{}\"\n[project]\nid = \"p\"\n{DELIVERY_OFF}",
        db.url()
    ));
    let out = bin::with_config("check", cfg.path())
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("api: 1 subscription(s)"), "{report}");

    let mut cmd = bin::command(["tail", "--subscription", "wh_api", "--config"]);
    cmd.arg(cfg.path()).stdout(Stdio::piped());
    let mut tail = Walhook::spawn_logging(cmd, &bin::log_path(&format!("tail-api-{}", db.name)));
    tail.wait_log("tailing", Duration::from_secs(20)).await;
    let mut lines = BufReader::new(tail.child.stdout.take().unwrap()).lines();
    db.sql("INSERT INTO orders VALUES (7, 'new')");
    let v = next_json(&mut lines).await;
    assert_eq!(v["subscription"], "wh_api", "{v}");
    assert_eq!(v["payload"]["record"]["id"], 7, "{v}");
    assert!(tail.stop().await.success());
}
