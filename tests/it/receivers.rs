//! The example receivers in `examples/receivers/` (Python and Node, standard library only):
//! they accept exactly the signatures walhook sends, refuse the rest with 401, and deduplicate
//! by event id; and the Python one verifies every delivery of a running `walhook run`.
//!
//! Needs `python3` and `node` (`.ci/run` installs them).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::support::TestDb;

fn example(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/receivers")
        .join(path)
}

struct Receiver {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    port: u16,
}

/// Starts a receiver on a free port and waits for its "listening on" line.
async fn start(kind: &str, scheme: &str, secret: &str) -> Receiver {
    let (program, script) = match kind {
        "python" => ("python3", example("python/receiver.py")),
        "node" => ("node", example("node/receiver.js")),
        _ => unreachable!(),
    };
    let mut child = Command::new(program)
        .arg(script)
        .env("WEBHOOK_SECRET", secret)
        .env("WEBHOOK_SIGNATURE", scheme)
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (install it: apt-get install -y python3 nodejs): {e}")
        });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("receiver started within 10 s")
        .unwrap()
        .expect("a first line");
    // "listening on http://127.0.0.1:PORT (signature scheme: ...)"
    let port = first
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {first}"));
    Receiver { child, lines, port }
}

impl Receiver {
    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .expect("a line within 10 s")
            .unwrap()
            .expect("receiver still running")
    }
}

/// POSTs `body` with `headers` over plain HTTP/1.1 and returns the status code.
async fn post(port: u16, headers: &[(&str, String)], body: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req = format!(
        "POST /webhooks/orders HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    resp.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {resp}"))
}

fn archie_headers(body: &str, secret: &str) -> Vec<(&'static str, String)> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let hex = hex::encode(mac.finalize().into_bytes());
    vec![
        ("X-Archie-Event", "INSERT".into()),
        ("X-Archie-Delivery", "evt_0000000001a2b3c400000000".into()),
        ("X-Archie-Signature", format!("sha256={hex}")),
        ("X-Webhook-Signature", hex),
    ]
}

fn standard_headers(
    id: &str,
    ts: i64,
    body: &str,
    secrets: &[&str],
) -> Vec<(&'static str, String)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let sigs: Vec<String> = secrets
        .iter()
        .map(|s| {
            let key = b64.decode(s.strip_prefix("whsec_").unwrap()).unwrap();
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
            mac.update(format!("{id}.{ts}.{body}").as_bytes());
            format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
        })
        .collect();
    vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", sigs.join(" ")),
    ]
}

// 99.50 must arrive as written: a receiver that re-serialised the JSON would see 99.5.
const BODY: &str = r#"{"id":"evt_0000000001a2b3c400000000","timestamp":"2025-12-15T15:00:00.000000Z","project_id":"p","environment":"master","table":"orders","event":"INSERT","record":{"id":1,"total":99.50,"status":"pending"},"data":{"id":1,"total":99.50,"status":"pending"},"changed_fields":[]}"#;

async fn archie_scheme(kind: &str) {
    let secret = "whsec_your_signing_secret";
    let mut r = start(kind, "archie", secret).await;
    assert_eq!(post(r.port, &archie_headers(BODY, secret), BODY).await, 200);
    assert_eq!(
        r.line().await,
        "signature OK  INSERT orders id=1  evt_0000000001a2b3c400000000"
    );
    // The same event again (a redelivery): acknowledged, not processed twice.
    assert_eq!(post(r.port, &archie_headers(BODY, secret), BODY).await, 200);
    assert!(r
        .line()
        .await
        .starts_with("duplicate  evt_0000000001a2b3c400000000"));
    // Wrong secret, tampered body, malformed and missing signatures: 401.
    let tampered = BODY.replace("99.50", "9.50");
    for (headers, body) in [
        (archie_headers(BODY, "another-secret"), BODY),
        (archie_headers(BODY, secret), tampered.as_str()),
        (vec![("X-Archie-Signature", "sha256=abc".to_string())], BODY),
        (vec![("X-Archie-Signature", "sha256=zz".to_string())], BODY),
        (vec![], BODY),
    ] {
        assert_eq!(post(r.port, &headers, body).await, 401, "{headers:?}");
        assert!(r.line().await.starts_with("signature INVALID"));
    }
    r.child.kill().await.unwrap();
}

async fn standard_scheme(kind: &str) {
    let current = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let previous = "whsec_cHJldmlvdXMtc2VjcmV0LWJ5dGVz";
    let mut r = start(kind, "standard", current).await;
    let now = chrono::Utc::now().timestamp();
    let id = "evt_0000000001a2b3c400000000";
    // During a rotation walhook sends two signatures; either may be the receiver's.
    let rotating = standard_headers(id, now, BODY, &[previous, current]);
    assert_eq!(post(r.port, &rotating, BODY).await, 200);
    assert!(r
        .line()
        .await
        .starts_with("signature OK  INSERT orders id=1"));
    for headers in [
        standard_headers(id, now, BODY, &[previous]),
        standard_headers(id, now - 3600, BODY, &[current]),
        standard_headers("evt_other", now, BODY, &[current])
            .into_iter()
            .map(|(k, v)| {
                if k == "webhook-id" {
                    (k, id.to_string())
                } else {
                    (k, v)
                }
            })
            .collect(),
        archie_headers(BODY, current),
    ] {
        assert_eq!(post(r.port, &headers, BODY).await, 401, "{headers:?}");
        assert!(r.line().await.starts_with("signature INVALID"));
    }
    r.child.kill().await.unwrap();
}

#[tokio::test]
async fn python_receiver_accepts_archie_signatures_refuses_bad_ones_and_dedups() {
    archie_scheme("python").await;
}

#[tokio::test]
async fn node_receiver_accepts_archie_signatures_refuses_bad_ones_and_dedups() {
    archie_scheme("node").await;
}

#[tokio::test]
async fn python_receiver_accepts_standard_webhooks_signatures() {
    standard_scheme("python").await;
}

#[tokio::test]
async fn node_receiver_accepts_standard_webhooks_signatures() {
    standard_scheme("node").await;
}

/// `walhook run` (the binary) delivering to the Python receiver: every change arrives once,
/// signed with the subscription's secret. Needs the delivery engine (issue 4).
#[tokio::test]
async fn python_receiver_verifies_every_delivery_of_a_running_walhook() {
    let secret = "whsec_receiver_e2e";
    let mut r = start("python", "archie", secret).await;
    let db = TestDb::new();
    db.sql(
        "CREATE TABLE orders (id serial PRIMARY KEY, total numeric(12,2), status text, customer_id text)",
    );
    let slot = format!("wh_{}", db.name);
    let cfg = crate::support::write_config(&format!(
        r#"[source]
url = "{url}"
slot = "{slot}"
[project]
id = "receivers"
[delivery]
allow_http = true
allow_private_networks = true
[api]
listen = "127.0.0.1:0"
[[subscriptions]]
id = "orders"
table = "orders"
events = ["INSERT", "UPDATE", "DELETE"]
url = "http://127.0.0.1:{port}/webhooks/orders"
secret = "${{RECEIVER_TEST_SECRET}}"
"#,
        url = db.url(),
        port = r.port
    ));
    let mut cmd = crate::support::bin::with_config("run", cfg.path());
    cmd.env("RECEIVER_TEST_SECRET", secret)
        .stdout(Stdio::null());
    let mut walhook = crate::support::bin::Walhook::spawn_logging(
        cmd,
        &crate::support::bin::log_path(&format!("receivers-{}", db.name)),
    );
    // Changes count only once the slot exists.
    let mut waited = 0;
    while db.sql(&crate::support::slot_streaming_sql(&slot)) != "1" {
        assert!(
            waited < 300,
            "walhook run did not start streaming within 30 s"
        );
        assert!(
            walhook.child.try_wait().unwrap().is_none(),
            "walhook run exited; log:\n{}",
            walhook.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    db.sql("INSERT INTO orders (total, status, customer_id) VALUES (99.50, 'pending', 'c1')");
    db.sql("INSERT INTO orders (total, status, customer_id) VALUES (10.00, 'pending', 'c2')");
    db.sql("UPDATE orders SET status = 'paid' WHERE id = 1");
    db.sql("DELETE FROM orders WHERE id = 2");
    let mut got = Vec::new();
    while got.len() < 4 {
        let line = tokio::time::timeout(Duration::from_secs(60), r.lines.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the receiver printed {got:?} and then nothing for 60 s; outbox: {}",
                    db.sql("SELECT string_agg(status || ' ' || coalesce(last_error, ''), '; ') FROM walhook.delivery_states")
                )
            })
            .unwrap()
            .expect("receiver still running");
        assert!(!line.starts_with("signature INVALID"), "{line}");
        if line.starts_with("signature OK") {
            got.push(line);
        }
    }
    let mut kinds: Vec<&str> = got
        .iter()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["DELETE", "INSERT", "INSERT", "UPDATE"], "{got:?}");
    let status = walhook.stop().await;
    assert!(status.success(), "{status}");
    r.child.kill().await.unwrap();
}
