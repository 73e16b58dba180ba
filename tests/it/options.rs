//! Delivery options (issue "Delivery options"): static headers, `signature_header`, CloudEvents,
//! body templates, `X-Walhook-Delivery-Id` and `rate_limit`, against a running `walhook run`
//! and loopback receivers; the bodies are checked by the receivers' own code: the CloudEvents
//! Python SDK, and the Archivus and Evomi documents' verification functions (seeds 001, 002,
//! 004), run as they are in `tests/verify/`.
//!
//! Needs `python3` with the `cloudevents` package, and `node` (`.ci/run` installs them).

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::daemon::{fast_delivery, Daemon};
use crate::support::receiver::{hmac_hex, Answer, Receiver, Request};
use crate::support::TestDb;

const SECRET: &str = "options-secret";

fn subscription(id: &str, url: &str, extra: &str) -> String {
    format!(
        "[[subscriptions]]\nid = \"{id}\"\ntable = \"orders\"\n\
         events = [\"INSERT\", \"UPDATE\", \"DELETE\"]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n{extra}\n"
    )
}

fn orders(db: &TestDb) {
    db.sql(
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric(12,2), status text);
         ALTER TABLE orders REPLICA IDENTITY FULL",
    );
}

/// What the daemon must send as `X-Walhook-Delivery-Id` (documented derivation).
fn delivery_id(sub: &str, event_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(sub.as_bytes());
    h.update([0u8]);
    h.update(event_id.as_bytes());
    format!("del_{}", hex::encode(&h.finalize()[..12]))
}

/// Runs a verifier script with `input` on stdin; returns (exit code, stdout lines).
fn run_script(program: &str, script: &str, input: &Value) -> (i32, Vec<String>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/verify")
        .join(script);
    let mut child = std::process::Command::new(program)
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} is required (.ci/run installs it): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "{script} failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (code, stdout.lines().map(str::to_string).collect())
}

fn headers_json(r: &Request) -> Value {
    r.headers
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_signature_header_and_delivery_ids_arrive_exactly() {
    let db = TestDb::new();
    orders(&db);
    // The first request to `custom` fails: its retry must carry the same delivery id.
    let custom = Receiver::scripted(|_, i| Answer::Status(if i == 0 { 500 } else { 200 })).await;
    let plain = Receiver::ok().await;
    std::env::set_var("WALHOOK_OPTIONS_TEST_TOKEN", "t0ken-from-env");
    let subs = format!(
        "{}{}",
        subscription(
            "custom",
            &format!("{}/in", custom.url),
            "headers = { Authorization = \"Bearer ${WALHOOK_OPTIONS_TEST_TOKEN}\", X-Tenant = \"acme\" }\n\
             signature_header = \"X-Archivus-Signature\"",
        ),
        subscription("plain", &format!("{}/in", plain.url), ""),
    );
    let d = Daemon::start(&db, &fast_delivery(""), &subs).await;
    db.sql("INSERT INTO orders VALUES (1, 99.50, 'new')");

    let got = custom.wait_for(2, Duration::from_secs(30)).await;
    let other = plain.wait_for(1, Duration::from_secs(30)).await;
    let event_id =
        db.sql("SELECT event_id FROM walhook.delivery_states WHERE subscription_id = 'custom'");
    for r in &got {
        assert_eq!(r.header("authorization"), "Bearer t0ken-from-env");
        assert_eq!(r.header("x-tenant"), "acme");
        assert_eq!(
            r.header("x-archivus-signature"),
            format!("sha256={}", hmac_hex(SECRET, &r.body))
        );
        assert!(r.headers.get("x-archie-signature").is_none());
        assert_eq!(r.header("x-archie-delivery"), event_id);
        assert_eq!(
            r.header("x-walhook-delivery-id"),
            delivery_id("custom", &event_id)
        );
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
    }
    // Retried: same body, same delivery id.
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(
        got[0].header("x-walhook-delivery-id"),
        got[1].header("x-walhook-delivery-id")
    );
    // The other subscription: same event and body, its own delivery id, no custom headers.
    let o = &other[0];
    assert_eq!(o.body, got[0].body);
    assert_eq!(o.header("x-archie-delivery"), event_id);
    assert_eq!(
        o.header("x-walhook-delivery-id"),
        delivery_id("plain", &event_id)
    );
    assert_ne!(
        o.header("x-walhook-delivery-id"),
        got[0].header("x-walhook-delivery-id")
    );
    assert_eq!(
        o.header("x-archie-signature"),
        format!("sha256={}", hmac_hex(SECRET, &o.body))
    );
    assert!(
        o.headers.get("authorization").is_none() && o.headers.get("x-archivus-signature").is_none()
    );

    // Stored as written (the value is a secret like `secret`), expanded from the environment.
    assert_eq!(
        db.sql("SELECT headers::text || ' ' || signature_header FROM walhook.subscriptions WHERE id = 'custom'"),
        r#"[["Authorization", "Bearer t0ken-from-env"], ["X-Tenant", "acme"]] X-Archivus-Signature"#
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_are_accepted_by_the_python_sdk_and_signed() {
    let db = TestDb::new();
    orders(&db);
    let rx = Receiver::ok().await;
    let d = Daemon::start(
        &db,
        &fast_delivery(""),
        &subscription("ce", &format!("{}/ce", rx.url), "format = \"cloudevents\""),
    )
    .await;
    db.sql("INSERT INTO orders VALUES (42, 99.50, 'new')");
    db.sql("UPDATE orders SET status = 'paid' WHERE id = 42");
    let reqs = rx.wait_for(2, Duration::from_secs(30)).await;
    let payloads: Vec<String> = db
        .sql("SELECT string_agg(payload::text, E'\\n' ORDER BY id) FROM walhook.delivery_states")
        .lines()
        .map(str::to_string)
        .collect();
    for (r, kind) in reqs.iter().zip(["insert", "update"]) {
        assert_eq!(r.header("content-type"), "application/cloudevents+json");
        assert_eq!(
            r.header("x-archie-signature"),
            format!("sha256={}", hmac_hex(SECRET, &r.body))
        );
        let body: Value = r.json();
        let archie = body["data"].clone();
        let event_id = archie["id"].as_str().unwrap().to_string();
        // `data` is the stored Archie payload (same bytes: it ends the body unchanged).
        let text = std::str::from_utf8(&r.body).unwrap();
        assert!(
            payloads
                .iter()
                .any(|p| serde_json::from_str::<Value>(p).unwrap() == archie
                    && text.ends_with(&format!(
                        "\"data\":{}}}",
                        serde_json::to_string(&archie).unwrap()
                    ))),
            "{text}"
        );
        assert!(
            text.contains("\"total\":99.50"),
            "numbers unchanged: {text}"
        );
        let (code, out) = run_script(
            "python3",
            "cloudevents_verify.py",
            &json!({"headers": headers_json(r), "body_b64": b64(&r.body)}),
        );
        assert_eq!(code, 0, "the SDK refused it: {out:?}");
        let parsed: Value = serde_json::from_str(&out[0]).unwrap();
        let a = &parsed["attributes"];
        assert_eq!(a["specversion"], "1.0");
        assert_eq!(a["id"], event_id.as_str());
        assert_eq!(a["source"], "walhook/test-project/master");
        assert_eq!(a["type"], format!("walhook.orders.{kind}"));
        assert_eq!(a["subject"], "42");
        assert_eq!(a["datacontenttype"], "application/json");
        let time = chrono::DateTime::parse_from_rfc3339(a["time"].as_str().unwrap()).unwrap();
        let commit =
            chrono::DateTime::parse_from_rfc3339(archie["timestamp"].as_str().unwrap()).unwrap();
        assert_eq!(time, commit);
        // Python reads numeric 99.50 as the float 99.5; everything else is the same.
        let normalized: Value =
            serde_json::from_str(&archie.to_string().replace("99.50", "99.5")).unwrap();
        assert_eq!(parsed["data"], normalized);
    }
    d.stop().await;
}

/// README's templates for receivers written for Archivus and Evomi.
const ARCHIVUS: &str = r#"template = '{"id":{{ id }},"type":{{ table ~ "." ~ event|lower }},"timestamp":{{ timestamp }},"data":{{ record }}}'
signature_header = "X-Archivus-Signature""#;
const EVOMI: &str = r#"template = '{"event":{{ event|lower }},"timestamp":{{ timestamp }},"data":{{ record }}}'
signature_header = "X-Evomi-Signature""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archivus_and_evomi_templates_verify_with_the_documents_code() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for t in [ARCHIVUS, EVOMI] {
        // Indented in README (a list item's code block): compared line by line.
        let shown = t.lines().all(|l| readme.lines().any(|r| r.trim() == l));
        assert!(shown, "README must show the template as tested:\n{t}");
    }
    let db = TestDb::new();
    db.sql(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, note text);
         ALTER TABLE orders REPLICA IDENTITY FULL",
    );
    let arch = Receiver::ok().await;
    let evo = Receiver::ok().await;
    let subs = format!(
        "{}{}",
        subscription(
            "archivus",
            &format!("{}/webhooks/archivus", arch.url),
            ARCHIVUS
        ),
        subscription("evomi", &format!("{}/webhooks/evomi", evo.url), EVOMI),
    );
    let d = Daemon::start(&db, &fast_delivery(""), &subs).await;
    db.sql(r#"INSERT INTO orders VALUES (7, 'paid', 'a "quoted" <note> é')"#);
    let a = &arch.wait_for(1, Duration::from_secs(30)).await[0];
    let e = &evo.wait_for(1, Duration::from_secs(30)).await[0];
    let (event_id, ts) = {
        let row = db.sql("SELECT payload::jsonb->>'id' || ' ' || (payload::jsonb->>'timestamp') FROM walhook.delivery_states LIMIT 1");
        let (i, t) = row.split_once(' ').unwrap();
        (i.to_string(), t.to_string())
    };
    let record = r#"{"id":7,"status":"paid","note":"a \"quoted\" <note> é"}"#;
    assert_eq!(
        std::str::from_utf8(&a.body).unwrap(),
        format!(
            r#"{{"id":"{event_id}","type":"orders.insert","timestamp":"{ts}","data":{record}}}"#
        )
    );
    assert_eq!(
        std::str::from_utf8(&e.body).unwrap(),
        format!(r#"{{"event":"insert","timestamp":"{ts}","data":{record}}}"#)
    );
    assert!(
        a.headers.get("x-archie-signature").is_none()
            && e.headers.get("x-archie-signature").is_none()
    );

    let (_, out) = run_script(
        "python3",
        "archivus_verify.py",
        &json!({"body_b64": b64(&a.body), "signature": a.header("x-archivus-signature"), "secret": SECRET}),
    );
    assert_eq!(out, ["true", "orders.insert"]);
    let (_, out) = run_script(
        "node",
        "evomi_verify.js",
        &json!({"body_b64": b64(&e.body), "headers": headers_json(e), "secret": SECRET}),
    );
    assert_eq!(out, ["true", "insert"]);
    // The verifiers are not pushovers: another secret fails.
    let (_, out) = run_script(
        "python3",
        "archivus_verify.py",
        &json!({"body_b64": b64(&a.body), "signature": a.header("x-archivus-signature"), "secret": "other"}),
    );
    assert_eq!(out[0], "false");
    let (_, out) = run_script(
        "node",
        "evomi_verify.js",
        &json!({"body_b64": b64(&e.body), "headers": headers_json(e), "secret": "other"}),
    );
    assert_eq!(out[0], "false");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_while_another_subscription_runs_at_full_speed() {
    let db = TestDb::new();
    orders(&db);
    let limited = Receiver::ok().await;
    let free = Receiver::ok().await;
    let subs = format!(
        "{}{}",
        subscription(
            "limited",
            &format!("{}/l", limited.url),
            "rate_limit = \"20/s\""
        ),
        subscription("free", &format!("{}/f", free.url), ""),
    );
    let d = Daemon::start(&db, &fast_delivery("max_in_flight = 16"), &subs).await;
    const ROWS: usize = 300;
    db.sql(&format!(
        "INSERT INTO orders SELECT g, g, 'new' FROM generate_series(1, {ROWS}) g"
    ));
    // The unlimited subscription is not held back by its neighbour.
    let all_free = free.wait_for(ROWS, Duration::from_secs(30)).await;
    let first = limited.wait_for(1, Duration::from_secs(30)).await[0].at;
    let free_took = all_free
        .last()
        .unwrap()
        .at
        .saturating_duration_since(all_free[0].at);
    assert!(
        free_took < Duration::from_secs(5),
        "free took {free_took:?}"
    );
    // Measure 10 s from the first limited request.
    let window = Duration::from_secs(10);
    tokio::time::sleep_until((first + window + Duration::from_millis(500)).into()).await;
    let reqs = limited.snapshot();
    let in_window = reqs
        .iter()
        .filter(|r| r.at.duration_since(first) < window)
        .count();
    eprintln!("rate_limit 20/s: {in_window} requests in 10 s");
    // 20/s over 10 s is 200 (+ the bucket's credit of 5 at t = 0); ±10 %.
    assert!(
        (180..=220).contains(&in_window),
        "{in_window} requests in 10 s at 20/s"
    );
    assert!(reqs.len() < ROWS, "the limit held nothing back");
    // Waiting consumed no attempt: every finished delivery took one attempt, and the backlog
    // is pending in the outbox.
    assert_eq!(
        db.sql("SELECT count(*) FILTER (WHERE attempts > 1) || ' ' || count(*) FILTER (WHERE status = 'pending') FROM walhook.delivery_states WHERE subscription_id = 'limited'")
            .split(' ').next().unwrap(),
        "0"
    );
    let pending: usize = db
        .sql("SELECT count(*) FROM walhook.delivery_states WHERE subscription_id = 'limited' AND status <> 'delivered'")
        .parse()
        .unwrap();
    assert!(pending > 0 && pending <= ROWS - in_window, "{pending}");
    let metrics = d.handles.metrics.render(&Default::default());
    let waits = metric(
        &metrics,
        "walhook_rate_limit_waits_total{subscription=\"limited\"}",
    );
    assert!(waits >= 150.0, "{waits}\n{metrics}");
    let waited = metric(
        &metrics,
        "walhook_rate_limit_wait_seconds_total{subscription=\"limited\"}",
    );
    assert!(waited > 1.0, "{waited}");
    assert!(!metrics.contains("walhook_rate_limit_waits_total{subscription=\"free\"}"));
    d.stop().await;
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn config_refuses_walhooks_own_headers_and_bad_templates() {
    let db = TestDb::new();
    let text = |extra: &str| {
        crate::support::daemon::config_text(
            &db,
            &fast_delivery(""),
            &subscription("s", "http://127.0.0.1:9/h", extra),
        )
    };
    let err = |extra: &str| {
        walhook::config::Config::parse(&text(extra), "walhook.toml")
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let e = err("headers = { X-Archie-Signature = \"sha256=forged\" }");
    assert!(
        e.contains(
            "subscriptions[0] (id \"s\").headers: X-Archie-Signature is set by walhook itself"
        ),
        "{e}"
    );
    assert!(!e.contains("forged"), "{e}");
    let e = err("headers = { Content-Type = \"text/plain\" }");
    assert!(e.contains("Content-Type is set by walhook itself"), "{e}");
    let e = err("signature_header = \"X-Walhook-Signature\"");
    assert!(
        e.contains(".signature_header: X-Walhook-Signature is one of walhook's own headers"),
        "{e}"
    );
    let e = err("template = '{\"id\": \"{{ id }}\"}'");
    assert!(
        e.contains(".template: on a sample event: the template did not render valid JSON"),
        "{e}"
    );
    let e = err("template = '{{ id '");
    assert!(e.contains(".template: syntax error"), "{e}");
    let e = err("rate_limit = \"50/d\"");
    assert!(e.contains(".rate_limit: expected"), "{e}");
    let e = err("format = \"slack\"\ntemplate = '{}'");
    assert!(
        e.contains(".template: a template renders the body itself"),
        "{e}"
    );
}

#[tokio::test]
async fn the_api_masks_header_values_and_refuses_bad_options() {
    let api = crate::api::start(true).await;
    let r = api
        .create(crate::api::body(json!({
            "headers": {"Authorization": "Bearer api-t0ken", "X-Tenant": "acme"},
            "signature_header": "X-Archivus-Signature",
            "template": "{\"id\":{{ id }},\"data\":{{ record }}}",
            "rate_limit": "50/s",
        })))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(!r.text.contains("api-t0ken"), "{}", r.text);
    let w = r.json();
    assert_eq!(
        w["headers"],
        json!({"Authorization": "***", "X-Tenant": "***"})
    );
    assert_eq!(w["signature_header"], "X-Archivus-Signature");
    assert_eq!(w["rate_limit"], "50/s");
    assert_eq!(w["template"], "{\"id\":{{ id }},\"data\":{{ record }}}");
    let id = w["id"].as_str().unwrap().to_string();
    let got = api
        .call(Method::GET, &format!("/api/rest/_webhooks/{id}"), None)
        .await;
    assert!(!got.text.contains("api-t0ken"), "{}", got.text);
    assert_eq!(got.json()["webhook"]["headers"]["Authorization"], "***");
    let listed = api.call(Method::GET, "/api/rest/_webhooks", None).await;
    assert!(!listed.text.contains("api-t0ken"), "{}", listed.text);
    // PATCH keeps headers it does not mention, and null clears.
    let p = api
        .call(
            Method::PATCH,
            &format!("/api/rest/_webhooks/{id}"),
            Some(r#"{"rate_limit": null}"#),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    assert_eq!(p.json()["rate_limit"], Value::Null);
    assert_eq!(
        api.db.sql(&format!(
            "SELECT headers::text FROM walhook.subscriptions WHERE id = '{id}'"
        )),
        r#"[["Authorization", "Bearer api-t0ken"], ["X-Tenant", "acme"]]"#
    );

    let refused: HashMap<&str, (Value, &str)> = HashMap::from([
        (
            "reserved",
            (
                json!({"headers": {"x-walhook-delivery-id": "del_forged"}}),
                "x-walhook-delivery-id is set by walhook itself",
            ),
        ),
        (
            "value",
            (
                json!({"headers": {"X-Key": "a\r\nb"}}),
                "header X-Key: the value may hold only visible ASCII",
            ),
        ),
        (
            "template",
            (
                json!({"template": "{\"id\": \"x{{ id }}\"}"}),
                "the template did not render valid JSON",
            ),
        ),
        ("syntax", (json!({"template": "{% for %}"}), "syntax error")),
        (
            "rate",
            (json!({"rate_limit": "fast"}), "rate_limit: expected"),
        ),
        (
            "sigheader",
            (
                json!({"signature_header": "webhook-signature"}),
                "one of walhook's own headers",
            ),
        ),
    ]);
    for (case, (overrides, want)) in refused {
        let field = overrides
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        let r = api.create(crate::api::body(overrides)).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{case}: {}",
            r.text
        );
        assert!(r.text.contains(want), "{case}: {}", r.text);
        assert_eq!(r.json()["field"], field.as_str(), "{case}: {}", r.text);
        assert!(!r.text.contains("del_forged"), "{}", r.text);
    }
}

/// The real binary at debug level, through failed attempts and retries: a header's value never
/// reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_values_never_reach_the_log() {
    let db = TestDb::new();
    orders(&db);
    let rx = Receiver::scripted(|_, i| Answer::Status(if i < 2 { 500 } else { 200 })).await;
    let text = crate::support::daemon::config_text(
        &db,
        &fast_delivery("retry_schedule = [\"0s\", \"100ms\", \"100ms\"]"),
        &subscription(
            "s",
            &format!("{}/in", rx.url),
            "headers = { Authorization = \"Bearer t0ken-for-the-log-test\" }",
        ),
    );
    let file = crate::support::write_config(&text);
    let mut cmd = crate::support::bin::with_config("run", file.path());
    cmd.env("WALHOOK_LOG", "debug")
        .stdout(std::process::Stdio::null());
    let log = crate::support::bin::log_path(&format!("options-log-{}", db.name));
    let mut w = crate::support::bin::Walhook::spawn_logging(cmd, &log);
    w.wait_log("streaming", Duration::from_secs(30)).await;
    db.sql("INSERT INTO orders VALUES (1, 1, 'x')");
    let reqs = rx.wait_for(3, Duration::from_secs(30)).await;
    assert_eq!(
        reqs[2].header("authorization"),
        "Bearer t0ken-for-the-log-test"
    );
    crate::support::daemon::wait_value(
        &db,
        "SELECT status FROM walhook.delivery_states",
        "delivered",
        30,
    )
    .await;
    w.stop().await;
    let text = std::fs::read_to_string(&log).unwrap();
    // The failures were logged (so the log is where a leak would show) ...
    assert!(text.contains("retrying"), "{text}");
    // ... and the token never was.
    assert!(!text.contains("t0ken-for-the-log-test"), "{text}");
}

/// `select` limits what leaves through the chat formats too: a key column that is not selected
/// never appears in a Slack or Discord message, not even as the `Key` field; with the key
/// column selected, the key is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_limits_the_key_of_chat_messages() {
    let db = TestDb::new();
    db.sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, iban text, status text);
         ALTER TABLE accounts REPLICA IDENTITY FULL",
    );
    let slack = Receiver::ok().await;
    let discord = Receiver::ok().await;
    let slack_keyed = Receiver::ok().await;
    let sub = |id: &str, url: &str, extra: &str| {
        format!(
            "[[subscriptions]]\nid = \"{id}\"\ntable = \"accounts\"\n\
             events = [\"INSERT\", \"UPDATE\", \"DELETE\"]\nurl = \"{url}\"\n\
             secret = \"{SECRET}\"\n{extra}\n"
        )
    };
    let d = Daemon::start(
        &db,
        &fast_delivery(""),
        &format!(
            "{}{}{}",
            sub(
                "slack",
                &slack.url,
                "format = \"slack\"\nselect = [\"status\"]"
            ),
            sub(
                "discord",
                &discord.url,
                "format = \"discord\"\nselect = [\"status\"]"
            ),
            sub(
                "keyed",
                &slack_keyed.url,
                "format = \"slack\"\nselect = [\"id\", \"status\"]"
            ),
        ),
    )
    .await;
    db.sql("INSERT INTO accounts VALUES (987654321, 'DE89370400440532013000', 'new')");
    db.sql("UPDATE accounts SET status = 'frozen' WHERE id = 987654321");
    db.sql("DELETE FROM accounts WHERE id = 987654321");
    let t = Duration::from_secs(15);
    for (name, rx) in [("slack", &slack), ("discord", &discord)] {
        let reqs = rx.wait_for(3, t).await;
        assert_eq!(reqs.len(), 3, "{name}");
        for r in &reqs {
            let body = String::from_utf8(r.body.to_vec()).unwrap();
            assert!(!body.contains("987654321"), "{name}: {body}");
            assert!(!body.contains("DE89"), "{name}: {body}");
            assert!(body.contains("(not in select)"), "{name}: {body}");
        }
    }
    let keyed = slack_keyed.wait_for(3, t).await;
    let first = keyed[0].json();
    assert_eq!(
        first["blocks"][0]["fields"][2]["text"], "*Key*\n987654321",
        "{first}"
    );
    assert_eq!(
        first["text"], "INSERT on accounts (key 987654321)",
        "{first}"
    );
    for r in &keyed {
        let body = String::from_utf8(r.body.to_vec()).unwrap();
        assert!(!body.contains("DE89"), "{body}");
    }
    d.stop().await;
}
