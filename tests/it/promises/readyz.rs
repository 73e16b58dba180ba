//! README: `/readyz` is "slot streaming and outbox reachable"; "When Postgres restarts or a
//! connection drops, it reconnects by itself (backoff 250 ms doubling to 30 s)". The outbox
//! database sits behind a loopback proxy the test can cut: /readyz turns 503 with a reason
//! while it is down, the log shows the doubling retry delays, and all is well once it is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::daemon::wait_value;
use crate::support::{TestDb, DELIVERY_OFF};

use super::{drop_slot, run_streaming, subscription};

/// A TCP proxy on 127.0.0.1 to a local port; while down it cuts every connection and refuses
/// (accepts and closes) new ones.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (u, c) = (up.clone(), conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                c.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Proxy {
            port,
            up,
            conns,
            task,
        }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
        self.task.abort();
    }
}

async fn readyz(http: &reqwest::Client, base: &str) -> (u16, serde_json::Value) {
    match http.get(format!("{base}/readyz")).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or_default())
        }
        Err(e) => panic!("/readyz: {e}"),
    }
}

/// Polls /readyz until its status is `want`; returns the last body.
async fn wait_ready(
    http: &reqwest::Client,
    base: &str,
    want: u16,
    log: impl Fn() -> String,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz(http, base).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} {body} after 30 s; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `retry_in_ms` of each reconnect warning in `log`, in order.
fn retry_delays(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("ingest interrupted; reconnecting"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("retry_in_ms="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_the_outbox_down_and_recovers_with_backoff() {
    let source = TestDb::new();
    let outbox = TestDb::new();
    source.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    let proxy = Proxy::start(outbox.pg.port()).await;
    let outbox_url = outbox.url().replace(
        &format!(":{}/", outbox.pg.port()),
        &format!(":{}/", proxy.port),
    );
    let text = crate::support::config_text(
        &source.url(),
        &source.name,
        "p",
        &format!(
            "{DELIVERY_OFF}[outbox]\nurl = \"{outbox_url}\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\ntoken = \"t\"\n"
        ),
        &subscription("orders", "orders", "https://127.0.0.1:9/h", "whsec_x"),
    );
    let (mut child, _cfg) = run_streaming(&format!("readyz-{}", source.name), &text, &[]).await;
    let base = format!("http://{}", child.api_addr().await);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    wait_ready(&http, &base, 200, || child.log_tail(30)).await;

    proxy.down();
    // A change to store while the outbox is gone: ingest must notice and reconnect.
    source.sql("INSERT INTO orders VALUES (1, 'during the outage')");
    let body = wait_ready(&http, &base, 503, || child.log_tail(30)).await;
    assert_eq!(body["status"], "not ready", "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason == "the outbox database does not answer"
            || reason == "the replication slot is not streaming",
        "a reason: {body}"
    );
    // The reconnect delays double (250 ms, 500 ms, 1 s, … each ±20 %).
    child
        .wait_log_count(
            "ingest interrupted; reconnecting",
            4,
            Duration::from_secs(30),
        )
        .await;
    let delays = retry_delays(&child.log());
    assert!(delays.len() >= 4, "{delays:?}");
    assert!((200..=300).contains(&delays[0]), "first delay {delays:?}");
    for w in delays.windows(2).take(3) {
        assert!(
            w[1] as f64 >= w[0] as f64 * 2.0 * 0.8 / 1.2,
            "each delay about doubles: {delays:?}"
        );
    }
    // Still not ready while down, and the process keeps running.
    assert_eq!(readyz(&http, &base).await.0, 503);

    proxy.up();
    wait_ready(&http, &base, 200, || child.log_tail(30)).await;
    // The change made during the outage is stored once the outbox is back.
    wait_value(
        &outbox,
        "SELECT string_agg(payload::jsonb->'record'->>'status', ',') FROM walhook.delivery_states",
        "during the outage",
        30,
    )
    .await;
    assert!(child.stop().await.success());
    drop_slot(&source, &source.name);
}
