//! Opt-in batching (`batch = { max_events, max_wait }`, issue "Delivery options" item 3) against
//! a running `walhook run` and loopback receivers: the body is `{"events":[<payload>,...]}` with
//! the stored payloads byte for byte, signed as one body; a key's events stay in commit order
//! inside and across batches while some batches fail; a failed batch is retried whole, every
//! delivery in it recording the same attempt; a partial batch waits `max_wait`, no longer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::daemon::{fast_delivery, wait_value, Daemon};
use crate::support::receiver::{hmac_hex, Answer, Receiver, Request};
use crate::support::TestDb;

const SECRET: &str = "batch-secret";

fn subscription(id: &str, url: &str, batch: &str) -> String {
    format!(
        "[[subscriptions]]\nid = \"{id}\"\ntable = \"orders\"\n\
         events = [\"INSERT\", \"UPDATE\", \"DELETE\"]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n\
         batch = {batch}\n"
    )
}

fn orders(db: &TestDb) {
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, n int NOT NULL DEFAULT 0)");
}

/// The documented batch id: `bat_` + 24 hex of SHA-256(subscription, NUL + each event id).
fn batch_id(sub: &str, ids: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(sub.as_bytes());
    for id in ids {
        h.update([0u8]);
        h.update(id.as_bytes());
    }
    format!("bat_{}", hex::encode(&h.finalize()[..12]))
}

/// The events of a batch request, as JSON values.
fn events(r: &Request) -> Vec<Value> {
    r.json()["events"]
        .as_array()
        .expect("a batch body has an events array")
        .clone()
}

fn event_ids(r: &Request) -> Vec<String> {
    events(r)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_the_stored_payloads_in_commit_order_signed_as_one_body() {
    let db = TestDb::new();
    orders(&db);
    let rx = Receiver::ok().await;
    let d = Daemon::start(
        &db,
        &fast_delivery(""),
        &subscription(
            "b",
            &format!("{}/in", rx.url),
            "{ max_events = 5, max_wait = \"100ms\" }",
        ),
    )
    .await;
    // One transaction of 12 rows: batches of 5, 5 and 2 (distinct keys, so no key waits).
    db.sql("INSERT INTO orders (id) SELECT g FROM generate_series(1, 12) g");
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') FROM walhook.delivery_states",
        "12",
        30,
    )
    .await;
    let got = rx.snapshot();
    let mut all_ids = Vec::new();
    for r in &got {
        let ids = event_ids(r);
        assert!(!ids.is_empty() && ids.len() <= 5, "{} events", ids.len());
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "commit order inside a batch: {ids:?}"
        );
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(
            r.header("x-archie-signature"),
            format!("sha256={}", hmac_hex(SECRET, &r.body))
        );
        assert_eq!(r.header("x-webhook-signature"), hmac_hex(SECRET, &r.body));
        assert_eq!(r.header("x-archie-event"), "BATCH");
        assert_eq!(r.header("x-walhook-batch-size"), ids.len().to_string());
        assert_eq!(r.header("x-archie-delivery"), batch_id("b", &ids));
        assert_eq!(r.header("x-walhook-delivery-id"), "");
        // Byte for byte: the stored payloads, in the order of the body.
        let stored = db.sql(&format!(
            "SELECT string_agg(payload, ',' ORDER BY array_position(ARRAY[{}], event_id))
             FROM walhook.delivery_states WHERE event_id IN ({})",
            ids.iter()
                .map(|i| format!("'{i}'"))
                .collect::<Vec<_>>()
                .join(","),
            ids.iter()
                .map(|i| format!("'{i}'"))
                .collect::<Vec<_>>()
                .join(",")
        ));
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            format!("{{\"events\":[{stored}]}}")
        );
        all_ids.extend(ids);
    }
    assert_eq!(got.len(), 3, "12 events in batches of 5, 5 and 2");
    // Batches of distinct keys may be in flight together and arrive in either order; every
    // event arrives once, and inside a batch in commit order (event ids sort in commit order).
    let in_commit_order =
        db.sql("SELECT string_agg(event_id, ',' ORDER BY sequence) FROM walhook.delivery_states");
    let mut sorted = all_ids.clone();
    sorted.sort();
    assert_eq!(sorted.join(","), in_commit_order);
    assert_eq!(
        db.sql("SELECT count(*) || ' ' || min(http_status) || ' ' || max(http_status) FROM walhook.all_attempts"),
        "12 200 200",
        "one attempt recorded per delivery"
    );
    let metrics = d.handles.metrics.render(&Default::default());
    assert!(
        metrics.contains("walhook_delivery_batch_size_count{subscription=\"b\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("walhook_delivery_batch_size_sum{subscription=\"b\"} 12"),
        "{metrics}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_retried_whole() {
    let db = TestDb::new();
    orders(&db);
    let rx = Receiver::scripted(|_, i| Answer::Status(if i == 0 { 503 } else { 200 })).await;
    let d = Daemon::start(
        &db,
        &fast_delivery("retry_schedule = [\"0s\", \"300ms\"]\nbreaker_failures = 100"),
        &subscription(
            "b",
            &format!("{}/in", rx.url),
            "{ max_events = 10, max_wait = \"100ms\" }",
        ),
    )
    .await;
    db.sql("INSERT INTO orders (id) SELECT g FROM generate_series(1, 6) g");
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered' AND attempts = 2) FROM walhook.delivery_states",
        "6",
        30,
    )
    .await;
    let got = rx.snapshot();
    assert_eq!(got.len(), 2, "one failed batch, one retry");
    assert_eq!(event_ids(&got[0]).len(), 6);
    // The same events in the same order: the same body, batch id and signature.
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(
        got[0].header("x-archie-delivery"),
        got[1].header("x-archie-delivery")
    );
    assert_eq!(
        got[1].header("x-archie-signature"),
        format!("sha256={}", hmac_hex(SECRET, &got[1].body))
    );
    // Every delivery of the batch recorded the failed attempt, identically.
    assert_eq!(
        db.sql(
            "SELECT count(*) || ' ' || count(DISTINCT (attempted_at, duration_ms, response_body))
             FROM walhook.all_attempts WHERE http_status = 503"
        ),
        "6 1"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.all_attempts WHERE http_status = 200"),
        "6"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_events_stay_in_commit_order_across_failing_batches() {
    let db = TestDb::new();
    orders(&db);
    db.sql("INSERT INTO orders (id) SELECT g FROM generate_series(1, 5) g");
    // Every third request fails: batches fail at varying points of every key's history.
    let script = |_: &Request, i: usize| Answer::Status(if i % 3 == 1 { 500 } else { 200 });
    let rx = Receiver::scripted(script).await;
    let d = Daemon::start(
        &db,
        &fast_delivery("retry_schedule = [\"0s\", \"50ms\", \"50ms\", \"50ms\", \"50ms\", \"50ms\", \"50ms\", \"50ms\", \"50ms\"]\nbreaker_failures = 1000"),
        &subscription(
            "b",
            &format!("{}/in", rx.url),
            "{ max_events = 7, max_wait = \"20ms\" }",
        ),
    )
    .await;
    // 30 commits, each bumping every key: 150 events, 30 per key.
    let client = db.client().await;
    for _ in 0..30 {
        client
            .batch_execute("UPDATE orders SET n = n + 1")
            .await
            .unwrap();
    }
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') FROM walhook.delivery_states",
        "150",
        60,
    )
    .await;
    let got = rx.snapshot();
    let mut per_key: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut failed_events = 0;
    for (i, r) in got.iter().enumerate() {
        let evs = events(r);
        assert!(!evs.is_empty() && evs.len() <= 7);
        if i % 3 == 1 {
            failed_events += evs.len();
            continue;
        }
        for e in evs {
            let id = e["record"]["id"].as_i64().unwrap();
            per_key
                .entry(id)
                .or_default()
                .push(e["record"]["n"].as_i64().unwrap());
        }
    }
    assert!(failed_events > 0, "some batches failed");
    for id in 1..=5 {
        assert_eq!(
            per_key.get(&id),
            Some(&(1..=30).collect::<Vec<i64>>()),
            "key {id}: accepted exactly once each, in commit order"
        );
    }
    // Every event of a failed batch recorded that attempt.
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.all_attempts WHERE http_status = 500"),
        failed_events.to_string()
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_waits_max_wait_and_no_longer() {
    let db = TestDb::new();
    orders(&db);
    let rx = Receiver::ok().await;
    let d = Daemon::start(
        &db,
        &fast_delivery(""),
        &subscription(
            "b",
            &format!("{}/in", rx.url),
            "{ max_events = 100, max_wait = \"1s\" }",
        ),
    )
    .await;
    let client = db.client().await;
    // Five commits trickle in over about 200 ms: one batch, sent a second after the first.
    let t0 = Instant::now();
    for i in 1..=5 {
        client
            .batch_execute(&format!("INSERT INTO orders (id) VALUES ({i})"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t_last = Instant::now();
    let got = rx.wait_for(1, Duration::from_secs(20)).await;
    let first = &got[0];
    let waited = first.at.duration_since(t0);
    assert!(
        waited >= Duration::from_secs(1),
        "sent after {waited:?}, before max_wait"
    );
    assert!(
        first.at.duration_since(t_last) < Duration::from_millis(1000 + 1500),
        "sent {:?} after the last commit: far beyond max_wait",
        first.at.duration_since(t_last)
    );
    assert!(
        event_ids(first).len() >= 2,
        "the trickle was batched: {}",
        event_ids(first).len()
    );
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') FROM walhook.delivery_states",
        "5",
        20,
    )
    .await;
    let total: usize = rx.snapshot().iter().map(|r| event_ids(r).len()).sum();
    assert_eq!(total, 5);
    d.stop().await;
}

#[tokio::test]
async fn the_api_sets_shows_clears_and_checks_batch() {
    let api = crate::api::start(true).await;
    let r = api
        .create(crate::api::body(
            json!({"batch": {"max_events": 50, "max_wait": "20ms"}}),
        ))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        r.json()["batch"],
        json!({"max_events": 50, "max_wait": "20ms"})
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        api.db.sql(&format!(
            "SELECT batch_max_events || ' ' || batch_max_wait_ms FROM walhook.subscriptions WHERE id = '{id}'"
        )),
        "50 20"
    );
    let p = api
        .call(
            Method::PATCH,
            &format!("/api/rest/_webhooks/{id}"),
            Some(r#"{"batch": {"max_events": 3}}"#),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    assert_eq!(
        p.json()["batch"],
        json!({"max_events": 3, "max_wait": "50ms"})
    );
    let p = api
        .call(
            Method::PATCH,
            &format!("/api/rest/_webhooks/{id}"),
            Some(r#"{"batch": null}"#),
        )
        .await;
    assert_eq!(p.json()["batch"], Value::Null, "{}", p.text);
    for (body, status, want) in [
        (
            json!({"batch": {"max_events": 0}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch: max_events must be a whole number from 1 to 1000",
        ),
        (
            json!({"batch": {"max_events": 10, "max_wait": "11s"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch: max_wait must be at most 10s",
        ),
        (
            json!({"batch": {"max_events": 10, "wait": "1s"}}),
            StatusCode::BAD_REQUEST,
            "batch: unknown field \"wait\"; batch: expected",
        ),
        (
            json!({"batch": 10}),
            StatusCode::BAD_REQUEST,
            "batch: expected",
        ),
        (
            json!({"batch": {"max_events": 10}, "format": "slack"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "use it with format = \"json\"",
        ),
    ] {
        let r = api.create(crate::api::body(body.clone())).await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
        let error = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(want), "{body}: {}", r.text);
        assert_eq!(r.json()["field"], "batch", "{body}: {}", r.text);
    }
}
