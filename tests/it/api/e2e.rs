//! With `walhook run` in-process: live changes, delivery, replay, test sends; and the fuzz target.

use std::sync::atomic::Ordering;

use crate::support::daemon::{config_text, fast_delivery, wait_value, Daemon};
use crate::support::receiver::{hmac_hex, Answer, Receiver};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::*;

#[tokio::test]
async fn a_subscription_created_through_the_api_delivers_without_a_restart_and_replays() {
    let db = TestDb::new();
    // One attempt: a failure is dead-lettered at once.
    let delivery = fast_delivery("retry_schedule = [\"0s\"]\nbreaker_failures = 100");
    let config =
        walhook::config::Config::parse(&config_text(&db, &delivery, ""), "t.toml").unwrap();
    // No subscription at all at start; the daemon streams an empty publication.
    let daemon = Daemon::start(&db, &delivery, "").await;
    let receiver = Receiver::scripted(|_, i| Answer::Status(if i == 1 { 500 } else { 200 })).await;
    let api = start_on(
        db,
        "test-project",
        true,
        config.delivery.clone(),
        &daemon.handles,
    )
    .await;
    let db = &api.db;
    // A table the daemon has never heard of.
    db.sql("CREATE TABLE shipments(id int PRIMARY KEY, status text)");
    let secret = "whsec_your_signing_secret";
    let r = api
        .create(json!({
            "projectId": "test-project", "environment": "master", "table": "shipments",
            "events": ["INSERT"], "url": format!("{}/hook", receiver.url), "secret": secret,
        }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.json()["id"].as_str().unwrap().to_string();
    // The daemon follows: publication gains the table (after routing switched).
    wait_value(
        db,
        "SELECT count(*) FROM pg_publication_tables WHERE tablename = 'shipments'",
        "1",
        20,
    )
    .await;

    db.sql("INSERT INTO shipments VALUES (1, 'sent')");
    let got = receiver.wait_for(1, Duration::from_secs(20)).await;
    let first = &got[0];
    let payload = first.json();
    assert_eq!(payload["event"], "INSERT");
    assert_eq!(payload["table"], "shipments");
    assert_eq!(payload["project_id"], "test-project");
    assert_eq!(payload["record"], json!({"id": 1, "status": "sent"}));
    assert_eq!(
        first.header("X-Archie-Delivery"),
        payload["id"].as_str().unwrap()
    );
    assert_eq!(
        first.header("X-Archie-Signature"),
        format!("sha256={}", hmac_hex(secret, &first.body))
    );

    // The second change fails once and is dead-lettered; a replay delivers it again.
    db.sql("INSERT INTO shipments VALUES (2, 'sent')");
    wait_value(
        db,
        "SELECT count(*) FROM walhook.delivery_states WHERE status = 'dead'",
        "1",
        20,
    )
    .await;
    let dead = db.sql("SELECT id FROM walhook.delivery_states WHERE status = 'dead'");
    let r = api
        .call(
            Method::POST,
            &format!("/api/rest/_webhooks/{id}/deliveries/del_{dead}/replay"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let got = receiver.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(
        got[2].header("X-Archie-Delivery"),
        got[1].header("X-Archie-Delivery")
    );
    assert_eq!(got[2].body, got[1].body, "the same payload, byte for byte");
    assert_eq!(got[2].json()["record"]["id"], 2);
    wait_value(
        db,
        &format!("SELECT status FROM walhook.delivery_states WHERE id = {dead}"),
        "delivered",
        20,
    )
    .await;

    // The delivery counters moved: three attempts (one failed), and deliveries finished as
    // delivered twice (the first row, then the replayed one) and dead once.
    let m = api.send(Method::GET, "/metrics", &[], None).await.text;
    let line = |outcome: &str| {
        format!("walhook_deliveries_total{{subscription=\"{id}\",outcome=\"{outcome}\"}} ")
    };
    assert!(m.contains(&(line("delivered") + "2\n")), "{m}");
    assert!(m.contains(&(line("dead") + "1\n")), "{m}");
    let attempts = |result: &str| {
        format!("walhook_delivery_attempts_total{{subscription=\"{id}\",result=\"{result}\"}} ")
    };
    assert!(m.contains(&(attempts("success") + "2\n")), "{m}");
    assert!(m.contains(&(attempts("failure") + "1\n")), "{m}");
    assert!(m.contains("walhook_source_streaming 1\n"));
    assert_eq!(
        api.send(Method::GET, "/readyz", &[], None).await.status,
        StatusCode::OK
    );

    // A test send: a signed PING, nothing stored.
    let r = api
        .call(
            Method::POST,
            &format!("/api/rest/_webhooks/{id}/test"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (v["httpStatus"].clone(), v["error"].clone()),
        (json!(200), Value::Null)
    );
    assert!(v["durationMs"].is_u64());
    let ping = receiver
        .wait_for(4, Duration::from_secs(5))
        .await
        .pop()
        .unwrap();
    let p = ping.json();
    assert_eq!(
        (
            p["event"].clone(),
            p["record"].clone(),
            p["changed_fields"].clone()
        ),
        (json!("PING"), json!({}), json!([]))
    );
    assert!(p["id"].as_str().unwrap().starts_with("evt_ping_"));
    assert_eq!(ping.header("X-Archie-Event"), "PING");
    assert_eq!(
        ping.header("X-Archie-Signature"),
        format!("sha256={}", hmac_hex(secret, &ping.body))
    );
    assert_eq!(db.sql("SELECT count(*) FROM walhook.delivery_states"), "2");

    // Deleting it stops deliveries and unpublishes the table.
    let r = api
        .call(Method::DELETE, &format!("/api/rest/_webhooks/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    wait_value(
        db,
        "SELECT count(*) FROM pg_publication_tables WHERE tablename = 'shipments'",
        "0",
        20,
    )
    .await;
    // Its metric series go with it (the delivery supervisor forgets it at its next reading).
    let label = format!("subscription=\"{id}\"");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = api.send(Method::GET, "/metrics", &[], None).await.text;
        if !m.contains(&label) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "series of a deleted subscription are still exposed:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.sql("INSERT INTO shipments VALUES (3, 'late')");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 4);
    assert_eq!(db.sql("SELECT count(*) FROM walhook.delivery_states"), "0");
    daemon.stop().await;
}

/// Serves the API for a fuzzer (see bench/fuzz_api.sh): `WALHOOK_FUZZ_ADDR` (default
/// 127.0.0.1:18080), for `WALHOOK_FUZZ_SECS` seconds (default 600).
#[tokio::test]
#[ignore]
async fn serve_for_fuzzing() {
    let api = start(true).await;
    api.state.streaming.store(true, Ordering::Relaxed);
    // Known data for the fuzzer (bench/schemathesis.toml names it): webhook wh_fuzz, del_1.
    api.db.sql(
        "INSERT INTO walhook.subscriptions (id, source, table_name, events, url, secret)
         VALUES ('wh_fuzz', 'api', 'orders', '{INSERT}', 'https://127.0.0.1:9/h', 'whsec_your_signing_secret')",
    );
    let id = "wh_fuzz";
    assert_eq!(api.delivery(id, "evt_fuzz", "dead", ""), 1);
    let addr = std::env::var("WALHOOK_FUZZ_ADDR").unwrap_or_else(|_| "127.0.0.1:18080".into());
    let secs: u64 = std::env::var("WALHOOK_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    eprintln!("fuzz target listening on http://{addr} (webhook {id})");
    let cancel = api.cancel.clone();
    let server = tokio::spawn(walhook::api::serve(
        api.state.clone(),
        listener,
        cancel.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    cancel.cancel();
    server.await.unwrap().unwrap();
}

/// A subscription created through the API receives a change committed right after the 201, on a
/// table walhook never heard of: the answer waits until routing (and the publication) include
/// it. Before, a change committed while a reload was still running was never sent to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_right_after_the_201_is_delivered() {
    let db = TestDb::new();
    let delivery = fast_delivery("");
    let config =
        walhook::config::Config::parse(&config_text(&db, &delivery, ""), "t.toml").unwrap();
    // Many subscriptions make a reload take long enough for the race to show.
    db.sql("CREATE TABLE other(id int PRIMARY KEY)");
    let receiver = Receiver::ok().await;
    let others: String = (0..800)
        .map(|i| {
            format!(
                "[[subscriptions]]\nid = \"o{i}\"\ntable = \"other\"\nevents = [\"INSERT\"]\n\
                 url = \"{}/other\"\nsecret = \"k\"\n",
                receiver.url
            )
        })
        .collect();
    let daemon = Daemon::start(&db, &delivery, &others).await;
    let api = start_on(
        db,
        "test-project",
        true,
        config.delivery.clone(),
        &daemon.handles,
    )
    .await;
    let db = &api.db;
    for n in 1..=3 {
        db.sql(&format!("CREATE TABLE fresh{n}(id int PRIMARY KEY)"));
        let r = api
            .create(json!({
                "projectId": "test-project", "environment": "master", "table": format!("fresh{n}"),
                "events": ["INSERT"], "url": format!("{}/hook{n}", receiver.url), "secret": "k",
            }))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        // No waiting for the publication: the answer came after routing included it.
        db.sql(&format!("INSERT INTO fresh{n} VALUES ({n})"));
        let got = receiver.wait_for(n, Duration::from_secs(20)).await;
        assert_eq!(got[n - 1].path, format!("/hook{n}"));
        assert_eq!(got[n - 1].json()["record"], json!({ "id": n }));
    }
    daemon.stop().await;
}

/// An API subscription whose column was dropped is left out of routing, and says so in its view,
/// in /readyz and in /metrics; it does not hold back another subscription's PATCH nor its
/// deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_subscription_is_shown_left_out_and_holds_nobody_back() {
    let db = TestDb::new();
    let delivery = fast_delivery("");
    let config =
        walhook::config::Config::parse(&config_text(&db, &delivery, ""), "t.toml").unwrap();
    db.sql("CREATE TABLE a(id int PRIMARY KEY, x text); CREATE TABLE b(id int PRIMARY KEY)");
    let daemon = Daemon::start(&db, &delivery, "").await;
    let receiver = Receiver::ok().await;
    let api = start_on(
        db,
        "test-project",
        true,
        config.delivery.clone(),
        &daemon.handles,
    )
    .await;
    let db = &api.db;
    let mk = |table: &str, extra: Value| {
        let mut body = json!({
            "projectId": "test-project", "environment": "master", "table": table,
            "events": ["INSERT"], "url": format!("{}/{table}", receiver.url), "secret": "k",
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let broken = api.create(mk("a", json!({ "select": ["id", "x"] }))).await;
    assert_eq!(broken.status, StatusCode::CREATED, "{}", broken.text);
    let broken = broken.json()["id"].as_str().unwrap().to_string();
    let healthy = api.create(mk("b", json!({}))).await;
    let healthy = healthy.json()["id"].as_str().unwrap().to_string();

    db.sql("ALTER TABLE a DROP COLUMN x");
    // Another subscription's change goes through, and makes routing re-read everything.
    let r = api
        .call(
            Method::PATCH,
            &format!("/api/rest/_webhooks/{healthy}"),
            Some(&json!({ "url": format!("{}/b2", receiver.url) }).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    db.sql("INSERT INTO b VALUES (1)");
    let got = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].path, "/b2");

    let view = api
        .call(Method::GET, &format!("/api/rest/_webhooks/{broken}"), None)
        .await
        .json();
    assert_eq!(view["webhook"]["routing"]["state"], "left_out", "{view}");
    let reason = view["webhook"]["routing"]["reason"].as_str().unwrap();
    assert!(
        reason.contains('x'),
        "the reason names the column: {reason}"
    );
    let view = api
        .call(Method::GET, &format!("/api/rest/_webhooks/{healthy}"), None)
        .await
        .json();
    assert_eq!(view["webhook"]["routing"]["state"], "routed");
    assert_eq!(view["webhook"]["breaker"]["state"], "closed");

    let ready = api.send(Method::GET, "/readyz", &[], None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    assert_eq!(
        ready.json()["subscriptions_left_out"],
        json!([{ "subscription": broken, "reason": reason }])
    );
    let metrics = api.send(Method::GET, "/metrics", &[], None).await.text;
    assert!(
        metrics.contains(&format!(
            "walhook_subscription_left_out{{subscription=\"{broken}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(!metrics.contains(&format!(
        "walhook_subscription_left_out{{subscription=\"{healthy}\"}}"
    )));
    // Deleted, it is gone from routing's problems and nobody keeps owning it.
    let r = api
        .call(
            Method::DELETE,
            &format!("/api/rest/_webhooks/{broken}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    wait_value(
        db,
        &format!("SELECT count(*) FROM walhook.delivery_owners WHERE subscription_id = '{broken}'"),
        "0",
        20,
    )
    .await;
    let ready = api.send(Method::GET, "/readyz", &[], None).await;
    assert_eq!(ready.json()["subscriptions_left_out"], json!([]));
    daemon.stop().await;
}
