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
