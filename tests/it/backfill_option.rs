//! The subscription option `backfill = true`: a config.toml subscription seen for the first time
//! (at start or on SIGHUP) and an API subscription created with `"backfill": true` are backfilled
//! once; restarts and reloads never start a second backfill; a table the backfill cannot read
//! (no primary key) is refused at creation and nothing is stored.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::backfill::{config_path, items, rows_jsonb, spawn, stop, sub, wait_distinct, Api};
use crate::support::daemon::wait_value;
use crate::support::receiver::Receiver;
use crate::support::TestDb;

/// `POST /api/rest/_webhooks` with `body`.
async fn create(api: &Api, body: Value) -> (u16, Value) {
    let resp = api
        .http
        .post(format!("{}/api/rest/_webhooks", api.base))
        .bearer_auth(crate::backfill::TOKEN)
        .header("X-Project-ID", "test-project")
        .header("environment", "master")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

const CHECKED: &str = "backfill = true: subscriptions checked";

/// Every READ request per path, checked against `to_jsonb` of the rows: `(path, ids)`.
fn reads_by_path(
    rx: &Receiver,
    want: &std::collections::HashMap<i64, Value>,
) -> Vec<(String, HashSet<i64>)> {
    let mut out: Vec<(String, HashSet<i64>)> = Vec::new();
    for r in rx.snapshot() {
        let v = r.json();
        if v["event"] != "READ" {
            continue;
        }
        let id = v["record"]["id"].as_i64().unwrap();
        assert_eq!(v["record"], want[&id], "{}: row {id}", r.path);
        match out.iter_mut().find(|(p, _)| *p == r.path) {
            Some((_, ids)) => {
                ids.insert(id);
            }
            None => out.push((r.path.clone(), HashSet::from([id]))),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_option_backfills_a_new_subscription_once() {
    let db = TestDb::new();
    items(&db, 300);
    let want = rows_jsonb(&db, "items");
    let rx = Receiver::ok().await;
    db.sql("CREATE TABLE nopk (a int, b text); ALTER TABLE nopk REPLICA IDENTITY FULL");
    let subs = sub("once", "items", &rx.url, "backfill = true")
        + &sub("plain", "items", &rx.url, "")
        + &sub("nopk", "nopk", &rx.url, "backfill = true");
    let (child, _api) = spawn(&db, &subs, "opt").await;
    wait_value(
        &db,
        "SELECT string_agg(subscription_id || ' ' || state || ' ' || rows_done || ' ' || \
         (rows_estimated IS NOT NULL)::text || ' ' || on_create::text, ',') \
         FROM walhook.backfills WHERE subscription_id = 'once'",
        "once done 300 true true",
        60,
    )
    .await;
    // A table the backfill cannot read: the subscription streams, its backfill failed, saying why.
    wait_value(
        &db,
        "SELECT state || ' ' || (error LIKE '%has no primary key%')::text FROM walhook.backfills \
         WHERE subscription_id = 'nopk'",
        "failed true",
        30,
    )
    .await;
    wait_distinct(&rx, 300, 60).await;
    // Only the subscription with the option; every row once, equal to to_jsonb.
    let got = reads_by_path(&rx, &want);
    assert_eq!(
        got.len(),
        1,
        "{:?}",
        got.iter().map(|g| &g.0).collect::<Vec<_>>()
    );
    assert_eq!((got[0].0.as_str(), got[0].1.len()), ("/once", 300));

    // A restart does not start a second one: the start-up check ran, then a new row streams.
    child.stop().await;
    let (mut child, _api) = spawn(&db, &subs, "opt").await;
    child
        .wait_log_count(CHECKED, 2, Duration::from_secs(30))
        .await;
    db.sql("INSERT INTO items (id, status) VALUES (1000, 'after restart')");
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_states WHERE ordering_key = '[1000]'",
        "2",
        30,
    )
    .await;
    assert_eq!(
        db.sql(
            "SELECT count(*) || ' ' || count(*) FILTER (WHERE on_create) FROM walhook.backfills"
        ),
        "2 2"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.delivery_states WHERE event = 'READ'"),
        "300"
    );

    // SIGHUP with a new subscription that has the option: it gets its backfill (the row added
    // since included); the first one still none more.
    let mut text = std::fs::read_to_string(config_path(&db, "opt")).unwrap();
    text.push_str(&sub("later", "items", &rx.url, "backfill = true"));
    std::fs::write(config_path(&db, "opt"), text).unwrap();
    child.signal(libc::SIGHUP);
    wait_value(
        &db,
        "SELECT string_agg(subscription_id || ' ' || state || ' ' || rows_done, ',' ORDER BY id) \
         FROM walhook.backfills",
        "nopk failed 0,once done 300,later done 301",
        60,
    )
    .await;
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_states WHERE status <> 'delivered'",
        "0",
        60,
    )
    .await;
    let want = rows_jsonb(&db, "items");
    let got = reads_by_path(&rx, &want);
    let summary: Vec<(&str, usize)> = got.iter().map(|(p, ids)| (p.as_str(), ids.len())).collect();
    assert_eq!(summary, [("/later", 301), ("/once", 300)]);
    stop(child, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_create_with_backfill_backfills_once() {
    let db = TestDb::new();
    items(&db, 250);
    db.sql(
        "CREATE TABLE nopk (a int, b text); ALTER TABLE nopk REPLICA IDENTITY FULL;
         INSERT INTO nopk VALUES (1, 'x')",
    );
    let want = rows_jsonb(&db, "items");
    let rx = Receiver::ok().await;
    // A config subscription on another table only, so the daemon has something to stream.
    let (child, api) = spawn(&db, &sub("cfg", "nopk", &rx.url, ""), "apiopt").await;
    let body = |table: &str, backfill: Value| {
        json!({
            "projectId": "test-project", "environment": "master",
            "table": table, "events": ["INSERT", "UPDATE", "DELETE"],
            "url": format!("{}/api", rx.url), "secret": "whsec_api", "backfill": backfill,
        })
    };
    let (status, refused) = create(&api, body("nopk", json!(true))).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["field"], "backfill", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("has no primary key"),
        "{refused}"
    );
    let (status, bad) = create(&api, body("items", json!("yes"))).await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["field"], "backfill", "{bad}");
    // Nothing stored by the refused requests.
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.subscriptions WHERE source = 'api'"),
        "0"
    );
    assert_eq!(db.sql("SELECT count(*) FROM walhook.backfills"), "0");

    let (status, created) = create(&api, body("items", json!(true))).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["backfill"]["webhookId"], id.as_str(), "{created}");
    let bid = created["backfill"]["id"].as_str().unwrap().to_string();
    assert!(bid.starts_with("bf_"), "{created}");
    wait_distinct(&rx, 250, 60).await;
    let got = reads_by_path(&rx, &want);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.as_str(), got[0].1.len()), ("/api", 250));
    let (status, one) = api
        .send(reqwest::Method::GET, &format!("{id}/backfills/{bid}"), None)
        .await;
    assert_eq!(status, 200, "{one}");
    // Done once its last chunk is stored (the receiver may see the rows a moment earlier).
    wait_value(
        &db,
        &format!(
            "SELECT state FROM walhook.backfills WHERE id = {}",
            &bid[3..]
        ),
        "done",
        30,
    )
    .await;
    // A PATCH cannot ask for it (it applies at creation); the error says what to do instead.
    let (status, patch) = api
        .send(
            reqwest::Method::PATCH,
            &id,
            Some(json!({ "backfill": true })),
        )
        .await;
    assert_eq!(status, 422, "{patch}");
    assert!(
        patch["error"].as_str().unwrap().contains("/backfill"),
        "{patch}"
    );

    // A restart starts nothing more: a new row streams, and still one backfill.
    child.stop().await;
    let (child, _api) = spawn(&db, &sub("cfg", "nopk", &rx.url, ""), "apiopt").await;
    db.sql("INSERT INTO items (id, status) VALUES (1000, 'after restart')");
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_states WHERE ordering_key = '[1000]'",
        "1",
        30,
    )
    .await;
    assert_eq!(
        db.sql(
            "SELECT count(*) || ' ' || count(*) FILTER (WHERE on_create) FROM walhook.backfills"
        ),
        "1 1"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.delivery_states WHERE event = 'READ'"),
        "250"
    );
    stop(child, &db).await;
}
