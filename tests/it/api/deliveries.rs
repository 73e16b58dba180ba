//! Deliveries: listing, replay, probes and metrics, and the CLI twins.

use std::sync::atomic::Ordering;

use reqwest::{Method, StatusCode};
use serde_json::json;
use walhook::metrics::{Attempt, Outcome};

use crate::support::receiver::{hmac_hex, Answer, Receiver};

use super::*;

#[tokio::test]
async fn replay_puts_a_dead_letter_back_to_pending_with_the_same_event_id() {
    let api = start(true).await;
    let id = api.create(body(json!({}))).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = api.create(body(json!({}))).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dead = api.delivery(&id, "evt_00000000000000aa00000001", "dead", "");
    let foreign = api.delivery(&other, "evt_x", "dead", "");
    let base = format!("/api/rest/_webhooks/{id}");

    let r = api
        .call(
            Method::POST,
            &format!("{base}/deliveries/del_{dead}/replay"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let d = &r.json()["delivery"];
    assert_eq!(d["id"], format!("del_{dead}"));
    assert_eq!(d["eventId"], "evt_00000000000000aa00000001");
    assert_eq!(
        (d["status"].clone(), d["attempts"].clone()),
        (json!("pending"), json!(0))
    );
    assert!(d["finishedAt"].is_null() && d["lastError"].is_null());
    let row = api.db.sql(&format!(
        "SELECT status, attempts, event_id, next_attempt_at <= now(), last_error IS NULL, finished_at IS NULL
         FROM walhook.delivery_states WHERE id = {dead}"
    ));
    assert_eq!(row, "pending|0|evt_00000000000000aa00000001|t|t|t");

    // Another subscription's delivery, or an unknown one: 404.
    for p in [format!("del_{foreign}"), "del_999999".into(), "42".into()] {
        let r = api
            .call(Method::POST, &format!("{base}/deliveries/{p}/replay"), None)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{p}: {}", r.text);
    }
    // Unfinished (queued, in flight or waiting to retry): refused and left as it was, never
    // reset under the worker that may be sending it.
    for status in ["pending", "failed"] {
        let unfinished = api.delivery(&id, &format!("evt_{status}"), status, "");
        let r = api
            .call(
                Method::POST,
                &format!("{base}/deliveries/del_{unfinished}/replay"),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        assert!(
            r.text.contains("not finished"),
            "the conflict says why: {}",
            r.text
        );
        let row = api.db.sql(&format!(
            "SELECT status, attempts FROM walhook.delivery_states WHERE id = {unfinished}"
        ));
        assert_eq!(row, format!("{status}|5"));
    }

    // Bulk: all dead letters, or those dead-lettered since a time.
    let old = api.delivery(&id, "evt_old", "dead", "");
    api.db.sql(&format!(
        "UPDATE walhook.deliveries SET finished_at = now() - interval '2 days' WHERE id = {old}"
    ));
    api.delivery(&id, "evt_new", "dead", "");
    let since = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let r = api
        .call(
            Method::POST,
            &format!("{base}/replay"),
            Some(&json!({"since": since}).to_string()),
        )
        .await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!({"replayed": 1}))
    );
    let r = api
        .call(Method::POST, &format!("{base}/replay"), None)
        .await;
    assert_eq!(r.json(), json!({"replayed": 1}), "the old one is left");
    let r = api
        .call(Method::POST, &format!("{base}/replay"), Some("{}"))
        .await;
    assert_eq!(r.json(), json!({"replayed": 0}));
    let r = api
        .call(
            Method::POST,
            &format!("{base}/replay"),
            Some(r#"{"since": 1}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        api.db.sql(&format!(
            "SELECT status FROM walhook.delivery_states WHERE id = {foreign}"
        )),
        "dead"
    );
    let r = api
        .call(Method::POST, "/api/rest/_webhooks/wh_nope/replay", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deliveries_listing_filters_and_paginates_newest_first() {
    let api = start(true).await;
    let id = api.create(body(json!({}))).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ids = Vec::new();
    for i in 0..5 {
        let status = if i % 2 == 0 { "dead" } else { "delivered" };
        ids.push(api.delivery(&id, &format!("evt_{i}"), status, ""));
    }
    let base = format!("/api/rest/_webhooks/{id}/deliveries");
    let r = api
        .call(Method::GET, &format!("{base}?limit=2"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    let page: Vec<&str> = v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(page, ["evt_4", "evt_3"]);
    assert_eq!(v["nextCursor"], format!("del_{}", ids[3]));
    let d = &v["deliveries"][0];
    for k in ["event", "lastError", "nextAttemptAt", "finishedAt"] {
        assert!(d.get(k).is_some(), "{k}: {d}");
    }
    // The second page, from the cursor the first one answered (asserted above).
    let second_page = || async {
        let r = api
            .call(
                Method::GET,
                &format!("{base}?limit=2&cursor=del_{}", ids[3]),
                None,
            )
            .await;
        let page: Vec<String> = r.json()["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["eventId"].as_str().unwrap().to_string())
            .collect();
        page
    };
    assert_eq!(second_page().await, ["evt_2", "evt_1"]);
    // The cursor's own delivery pruned between two pages: the page is the same.
    api.db.sql(&format!(
        "DELETE FROM walhook.deliveries WHERE id = {}",
        ids[3]
    ));
    assert_eq!(
        second_page().await,
        ["evt_2", "evt_1"],
        "after the cursor's row was pruned"
    );
    let r = api
        .call(Method::GET, &format!("{base}?status=dead"), None)
        .await
        .json();
    assert_eq!(r["deliveries"].as_array().unwrap().len(), 3);
    assert!(r["nextCursor"].is_null());
    for q in ["status=nope", "limit=0", "limit=x", "cursor=7"] {
        let r = api.call(Method::GET, &format!("{base}?{q}"), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.text);
    }
    let r = api
        .call(Method::GET, "/api/rest/_webhooks/wh_nope/deliveries", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn health_readiness_and_metrics_move() {
    let api = start(true).await;
    let r = api.send(Method::GET, "/healthz", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api.send(Method::GET, "/readyz", &[], None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.json()["reason"].as_str().unwrap().contains("slot"));
    api.state.streaming.store(true, Ordering::Relaxed);
    let r = api.send(Method::GET, "/readyz", &[], None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let id = api.create(body(json!({}))).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let scrape = || async {
        let r = api.send(Method::GET, "/metrics", &[], None).await;
        assert_eq!(r.status, StatusCode::OK);
        r.text
    };
    let before = scrape().await;
    assert!(
        before.contains(&format!(
            "walhook_outbox_pending{{subscription=\"{id}\"}} 0\n"
        )),
        "{before}"
    );
    assert!(
        before.contains(&format!(
            "walhook_outbox_oldest_pending_seconds{{subscription=\"{id}\"}} 0.0\n"
        )),
        "{before}"
    );
    assert!(before.contains("walhook_source_streaming 1\n"));
    assert!(
        !before.contains("\nwalhook_slot_lag_bytes "),
        "no slot yet: {before}"
    );

    api.delivery(&id, "evt_p", "pending", "");
    api.delivery(&id, "evt_d", "dead", "");
    // The pending one was enqueued 90 s ago; the dead one, older, is finished and not counted.
    api.db.sql(
        "UPDATE walhook.deliveries SET created_at = now() - CASE event_id
             WHEN 'evt_p' THEN interval '90 seconds' ELSE interval '1 hour' END",
    );
    api.state.metrics.attempt(&id, Attempt::Success);
    api.state.metrics.finished(&id, Outcome::Delivered);
    api.state.metrics.add_changes(3);
    let slot = &api.state.slot.clone();
    api.db.sql(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ));
    let after = scrape().await;
    api.db
        .sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    assert!(
        after.contains(&format!(
            "walhook_outbox_pending{{subscription=\"{id}\"}} 1\n"
        )),
        "{after}"
    );
    assert!(
        after.contains(&format!(
            "walhook_dead_letters{{subscription=\"{id}\"}} 1\n"
        )),
        "{after}"
    );
    let age: f64 = after
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "walhook_outbox_oldest_pending_seconds{{subscription=\"{id}\"}} "
            ))
        })
        .unwrap_or_else(|| panic!("no oldest-pending sample: {after}"))
        .parse()
        .unwrap();
    assert!((90.0..120.0).contains(&age), "oldest pending {age} s");
    assert!(after.contains(&format!(
        "walhook_deliveries_total{{subscription=\"{id}\",outcome=\"delivered\"}} 1\n"
    )));
    assert!(after.contains(&format!(
        "walhook_delivery_attempts_total{{subscription=\"{id}\",result=\"success\"}} 1\n"
    )));
    assert!(after.contains("walhook_changes_decoded_total 3\n"));
    // Both slot figures, as byte counts: the slot was just created, so it has confirmed and
    // keeps at most the WAL written since (nothing is required here beyond a number >= 0).
    for name in ["walhook_slot_lag_bytes", "walhook_slot_retained_bytes"] {
        let value = after
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} sample: {after}"));
        let bytes: i64 = value
            .parse()
            .unwrap_or_else(|e| panic!("{name} {value:?}: {e}"));
        assert!(bytes >= 0, "{name} {bytes}");
        assert!(after.contains(&format!("# TYPE {name} gauge\n")), "{after}");
    }
    assert!(
        !before.contains("\nwalhook_slot_retained_bytes "),
        "no slot yet: {before}"
    );
    assert!(after.contains("# HELP walhook_outbox_pending "), "{after}");

    // Prometheus text unless the scraper asks for OpenMetrics.
    for (accept, content_type, eof) in [
        (
            "text/plain",
            "text/plain; version=0.0.4; charset=utf-8",
            false,
        ),
        (
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            true,
        ),
    ] {
        let r = api
            .http
            .get(format!("{}/metrics", api.base))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], content_type);
        let text = r.text().await.unwrap();
        assert_eq!(text.ends_with("# EOF\n"), eof, "{text}");
        assert!(text.contains("walhook_changes_decoded_total 3\n"), "{text}");
    }
}

#[tokio::test]
async fn cli_twins_list_and_replay_deliveries() {
    let api = start(true).await;
    let id = api.create(body(json!({}))).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dead = api.delivery(&id, "evt_cli", "dead", "");
    let ok_id = api.delivery(&id, "evt_ok", "delivered", "");
    let cfg = crate::support::write_config(&format!(
        "[source]\nurl = \"{}\"\n[project]\nid = \"{PROJECT}\"\n\
             [delivery]\nallow_http = true\nallow_private_networks = true\n",
        api.db.url()
    ));
    let run = |args: Vec<String>| {
        let cfg = cfg.path().to_path_buf();
        async move {
            let out = crate::support::bin::command(&args)
                .arg("--config")
                .arg(cfg)
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            (out.status.success(), stdout, stderr)
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (ok, out, err) = run(s(&["deliveries", "list", "--subscription", &id])).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(&format!(
            "del_{ok_id}\tevt_ok\tINSERT\tdelivered\thttp=500\tattempts=5"
        )),
        "{out}"
    );
    assert!(
        lines[1].contains("evt_cli") && lines[1].contains("error=HTTP 500"),
        "{out}"
    );
    let (ok, out, _) = run(s(&[
        "deliveries",
        "list",
        "--subscription",
        &id,
        "--status",
        "dead",
    ]))
    .await;
    assert!(ok && out.lines().count() == 1, "{out}");

    let (ok, out, err) = run(s(&[
        "deliveries",
        "replay",
        "--subscription",
        &id,
        "--delivery",
        &format!("del_{dead}"),
    ]))
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        format!("replayed del_{dead} (evt_cli): pending, due now")
    );
    assert_eq!(
        api.db.sql(&format!(
            "SELECT status FROM walhook.delivery_states WHERE id = {dead}"
        )),
        "pending"
    );
    api.db.sql(&format!(
        "UPDATE walhook.deliveries SET status = 'dead', finished_at = now() WHERE id = {dead}"
    ));
    let (ok, out, _) = run(s(&[
        "deliveries",
        "replay",
        "--subscription",
        &id,
        "--dead",
        "--since",
        "2000-01-01T00:00:00Z",
    ]))
    .await;
    assert!(ok);
    assert_eq!(out.trim(), format!("replayed 1 dead letter(s) of {id}"));

    let (ok, _, err) = run(s(&["deliveries", "list", "--subscription", "nope"])).await;
    assert!(
        !ok && err.contains("no subscription with id \"nope\""),
        "{err}"
    );
    let (ok, _, err) = run(s(&[
        "deliveries",
        "replay",
        "--subscription",
        &id,
        "--delivery",
        "del_999999",
    ]))
    .await;
    assert!(!ok && err.contains("no delivery del_999999"), "{err}");
    let (ok, _, _) = run(s(&["deliveries", "replay", "--subscription", &id])).await;
    assert!(!ok, "--delivery or --dead is required");

    // send-test: a signed PING to the subscription's URL; exit status follows the answer.
    let receiver = Receiver::scripted(|_, i| Answer::Status(if i == 0 { 204 } else { 503 })).await;
    crate::support::assert_loopback(&receiver.url);
    api.db.sql(&format!(
        "INSERT INTO walhook.subscriptions (id, source, table_name, events, url, secret)
         VALUES ('pinged', 'api', 'orders', '{{INSERT}}', '{}/p', 'whsec_your_signing_secret')",
        receiver.url
    ));
    let (ok, out, err) = run(s(&["send-test", "--subscription", "pinged"])).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("pinged http=204 duration_ms="), "{out}");
    let ping = &receiver.snapshot()[0];
    assert_eq!(ping.json()["event"], "PING");
    assert_eq!(
        ping.header("X-Archie-Signature"),
        format!(
            "sha256={}",
            hmac_hex("whsec_your_signing_secret", &ping.body)
        )
    );
    let (ok, out, _) = run(s(&["send-test", "--subscription", "pinged"])).await;
    assert!(
        !ok && out.contains("http=503") && out.contains("error="),
        "{out}"
    );
    assert!(!out.contains("whsec_"), "{out}");
    assert_eq!(
        api.db
            .sql("SELECT count(*) FROM walhook.delivery_states WHERE subscription_id = 'pinged'"),
        "0"
    );
}
