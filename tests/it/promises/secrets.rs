//! README: "Secrets are never logged." A daemon at `WALHOOK_LOG=debug` delivers (Archie and
//! Standard with a rotation), fails a delivery to dead letter, serves the API (create and patch
//! with secrets, a test send) and reloads on SIGHUP with new secrets; then its whole log is
//! scanned for every secret it was given: signing secrets, the previous secret, the database
//! password in `source.url`, the API token.

use std::time::Duration;

use serde_json::json;

use crate::support::bin::Walhook;
use crate::support::pg::{SCRAM_USER, TEST_PASSWORD};
use crate::support::receiver::{Answer, Receiver};
use crate::support::TestDb;

use super::drop_slot;

const TOKEN: &str = "api-token-5f1c0e7d";
const GOOD: &str = "whsec_good-archie-secret-91f2";
const GOOD_RELOADED: &str = "whsec_reloaded-archie-secret-77aa";
// Standard Webhooks secrets: whsec_ + base64 of the key; the base64 part is a secret too.
const BAD_STD: &str = "whsec_YmFkLXN0YW5kYXJkLWtleS1ieXRlcy0wMQ==";
const BAD_PREVIOUS: &str = "whsec_YmFkLXByZXZpb3VzLWtleS1ieXRlcy0wMg==";
const API_CREATED: &str = "whsec_api-created-secret-3c9b";
const API_PATCHED: &str = "whsec_api-patched-secret-d41e";

fn config(db: &TestDb, ok_url: &str, fail_url: &str, good_secret: &str) -> String {
    let subs = format!(
        "[[subscriptions]]\nid = \"good\"\ntable = \"orders\"\nevents = [\"INSERT\"]\n\
         url = \"{ok_url}/good\"\nsecret = \"{good_secret}\"\n\
         [[subscriptions]]\nid = \"bad\"\ntable = \"orders\"\nevents = [\"INSERT\"]\n\
         url = \"{fail_url}/bad\"\nsecret = \"{BAD_STD}\"\nsignature = \"standard\"\n\
         previous_secret = \"{BAD_PREVIOUS}\"\nprevious_secret_expires_at = \"2999-01-01T00:00:00Z\"\n"
    );
    crate::support::config_text(
        &db.pg.url_as(SCRAM_USER, TEST_PASSWORD, &db.name),
        &db.name,
        "p",
        "[delivery]\nallow_http = true\nallow_private_networks = true\n\
         poll_interval = \"100ms\"\nretry_schedule = [\"0s\"]\n\
         [api]\nlisten = \"127.0.0.1:0\"\ntoken = \"${SECRETS_TEST_TOKEN}\"\n",
        &subs,
    )
}

async fn api(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .header("X-Project-ID", "p")
        .header("environment", "master");
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(json!(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_the_daemons_log() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    let ok = Receiver::ok().await;
    let failing = Receiver::scripted(|_, _| Answer::Status(500)).await;
    let cfg = crate::support::write_config(&config(&db, &ok.url, &failing.url, GOOD));
    let mut cmd = crate::support::bin::with_config("run", cfg.path());
    cmd.env("SECRETS_TEST_TOKEN", TOKEN)
        .env("WALHOOK_LOG", "debug")
        .stdout(std::process::Stdio::null());
    let mut child = Walhook::spawn_logging(
        cmd,
        &crate::support::bin::log_path(&format!("secrets-{}", db.name)),
    );
    child.wait_log("streaming", Duration::from_secs(30)).await;
    let base = format!("http://{}", child.api_addr().await);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();

    // A delivery, and a failed one dead-lettered after its only attempt.
    db.sql("INSERT INTO orders VALUES (1, 'first')");
    ok.wait_for(1, Duration::from_secs(20)).await;
    crate::support::daemon::wait_value(
        &db,
        "SELECT status FROM walhook.delivery_states WHERE subscription_id = 'bad'",
        "dead",
        20,
    )
    .await;

    // The API: create with a secret and a previous secret, patch the secret, a test send.
    let (status, created) = api(
        &http,
        &base,
        reqwest::Method::POST,
        "/api/rest/_webhooks",
        Some(json!({
            "projectId": "p", "environment": "master", "table": "orders", "events": ["INSERT"],
            "url": format!("{}/api", ok.url), "secret": API_CREATED,
        })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (status, patched) = api(
        &http,
        &base,
        reqwest::Method::PATCH,
        &format!("/api/rest/_webhooks/{id}"),
        Some(json!({ "secret": API_PATCHED, "environment": "master" })),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    let (status, pinged) = api(
        &http,
        &base,
        reqwest::Method::POST,
        &format!("/api/rest/_webhooks/{id}/test"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{pinged}");

    // SIGHUP with a new secret for "good".
    crate::support::rewrite_config(
        cfg.path(),
        &config(&db, &ok.url, &failing.url, GOOD_RELOADED),
    );
    child.signal(libc::SIGHUP);
    child
        .wait_log("config reloaded", Duration::from_secs(20))
        .await;
    db.sql("INSERT INTO orders VALUES (2, 'second')");
    crate::support::daemon::wait_value(
        &db,
        "SELECT string_agg(status, ',' ORDER BY subscription_id) FROM walhook.delivery_states
         WHERE payload::jsonb->'record'->>'id' = '2'",
        "dead,delivered,delivered",
        20,
    )
    .await;
    let good = ok
        .snapshot()
        .into_iter()
        .filter(|r| r.path == "/good")
        .collect::<Vec<_>>();
    assert_eq!(
        good.last().unwrap().header("x-archie-signature"),
        format!(
            "sha256={}",
            crate::support::receiver::hmac_hex(GOOD_RELOADED, &good.last().unwrap().body)
        ),
        "the reload took effect"
    );
    let log_file = child.log_file().to_path_buf();
    assert!(child.stop().await.success());

    let log = std::fs::read_to_string(log_file).unwrap();
    let encoded_password = TEST_PASSWORD.replace('@', "%40");
    let mut secrets = vec![
        TOKEN,
        GOOD,
        GOOD_RELOADED,
        BAD_STD,
        BAD_PREVIOUS,
        API_CREATED,
        API_PATCHED,
        TEST_PASSWORD,
        &encoded_password,
    ];
    let bare: Vec<&str> = secrets
        .iter()
        .filter_map(|s| s.strip_prefix("whsec_"))
        .collect();
    secrets.extend(bare);
    assert!(log.lines().count() > 50, "a debug log was written:\n{log}");
    for s in secrets {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(s)).collect();
        assert!(
            hits.is_empty(),
            "secret {s:?} in the log:\n{}",
            hits.join("\n")
        );
    }
    drop_slot(&db, &db.name);
}
