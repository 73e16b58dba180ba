//! `walhook demo`: walhook doing its whole job on this machine, with no configuration.
//!
//! It starts a throw-away PostgreSQL (initdb in a temporary directory, `wal_level=logical`, a
//! free port; as the `postgres` OS user when run as root), creates a demo table, starts a
//! receiver on 127.0.0.1 that verifies every `X-Archie-Signature` over the raw body, runs the
//! same pipeline as `walhook run` (ingest → outbox → delivery) against it, makes a few
//! INSERT/UPDATE/DELETE and prints what the receiver got.
//!
//! Guarantees:
//! - nothing outside the temporary directory is touched; the server and its directory are gone
//!   when the demo returns (or, if the process is killed, when the embedded server's guardian
//!   notices);
//! - the exit status is non-zero when anything is missing, late or wrongly signed, with one
//!   message saying what and what to do.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use walhook::app::Handles;
use walhook::config::Config;
use walhook::embedded_pg::PgServer;

/// The demo subscription's signing secret (printed: it protects nothing).
pub const SECRET: &str = "whsec_walhook_demo";
const DATABASE: &str = "demo";
const PATH: &str = "/webhooks/orders";

/// The changes the demo makes, each committed on its own.
const CHANGES: [&str; 5] = [
    "INSERT INTO orders (total, status, customer_id) VALUES (99.50, 'pending', 'cust-001')",
    "INSERT INTO orders (total, status, customer_id) VALUES (25.00, 'pending', 'cust-002')",
    "UPDATE orders SET status = 'paid' WHERE id = 1",
    "UPDATE orders SET total = 27.50, status = 'paid' WHERE id = 2",
    "DELETE FROM orders WHERE id = 2",
];

/// One request as the demo receiver saw it.
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    signature_ok: bool,
}

pub struct Options {
    /// How long to wait for every delivery.
    pub timeout: Duration,
}

/// Runs the demo, printing to stdout. Returns an error (and prints nothing misleading) when a
/// step fails; the caller prints it and exits non-zero.
pub async fn run(opts: Options, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    let started = Instant::now();
    say(
        &mut out,
        "starting a throw-away PostgreSQL (initdb into a temporary directory, wal_level=logical)",
    );
    let pg = tokio::task::spawn_blocking(|| PgServer::start(&[]))
        .await
        .context("starting PostgreSQL")?
        // The error says which package to install when the binaries are missing.
        .map_err(anyhow::Error::from)?;
    pg.psql("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
    pg.psql(
        DATABASE,
        "CREATE TABLE orders (id serial PRIMARY KEY, total numeric(12,2), status text, customer_id text)",
    )?;
    let version = pg.psql(DATABASE, "SHOW server_version")?;
    let version = version.split(' ').next().unwrap_or_default();
    let data_dir = pg.socket_dir().parent().unwrap_or(pg.socket_dir());
    say(
        &mut out,
        &format!(
            "PostgreSQL {version} on 127.0.0.1:{}, started in {:.1} s; data directory {} (removed at the end)",
            pg.port(),
            started.elapsed().as_secs_f64(),
            data_dir.display()
        ),
    );
    say(
        &mut out,
        "created table orders (id serial PRIMARY KEY, total numeric(12,2), status text, customer_id text)",
    );

    let (tx, rx) = mpsc::unbounded_channel();
    let receiver_stop = CancellationToken::new();
    let receiver_addr = start_receiver(tx, receiver_stop.clone()).await?;
    say(
        &mut out,
        &format!(
            "receiver on http://{receiver_addr}{PATH}, verifying X-Archie-Signature with the secret {SECRET:?}"
        ),
    );

    let config = Config::parse(
        &config_toml(&pg.url(DATABASE), receiver_addr),
        "demo config",
    )?;
    let pipeline_cancel = cancel.child_token();
    let handles = Handles::default();
    let streaming = handles.streaming.clone();
    let pipeline = walhook::app::run_with(None, config, pipeline_cancel.clone(), handles);
    tokio::pin!(pipeline);
    let script = script(&pg, &mut out, rx, &opts, &cancel, &streaming);
    let result = tokio::select! {
        r = &mut pipeline => match r {
            Ok(()) if cancel.is_cancelled() => Err(anyhow::anyhow!("interrupted")),
            Ok(()) => Err(anyhow::anyhow!("the pipeline stopped unexpectedly")),
            Err(e) => Err(anyhow::Error::from(e).context("the pipeline failed")),
        },
        r = script => {
            pipeline_cancel.cancel();
            // The pipeline reports its last position to the slot and stops.
            match tokio::time::timeout(Duration::from_secs(15), &mut pipeline).await {
                Ok(Err(e)) => tracing::warn!(error = %e, "pipeline stopped with an error"),
                Err(_) => tracing::warn!("pipeline did not stop within 15 s"),
                Ok(Ok(())) => {}
            }
            r
        }
    };
    receiver_stop.cancel();
    // Connection tasks end a moment after their clients are dropped; stopping the server under
    // them would log a spurious "connection ended with an error".
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Stop the server and remove its directory before returning (also on error).
    tokio::task::spawn_blocking(move || drop(pg)).await.ok();
    if result.is_ok() {
        say(
            &mut out,
            "stopped the pipeline and the receiver; removed the throw-away PostgreSQL",
        );
    }
    result
}

fn say(out: &mut impl Write, msg: &str) {
    let _ = writeln!(out, "demo: {msg}");
    let _ = out.flush();
}

/// The demo's config: one subscription to every change of `orders`, delivered to the local
/// receiver (plain HTTP to a loopback address, which the defaults refuse).
fn config_toml(db_url: &str, receiver: SocketAddr) -> String {
    format!(
        r#"[source]
url = "{db_url}"

[project]
id = "demo"
environment = "master"

[delivery]
allow_http = true
allow_private_networks = true

[api]
listen = "127.0.0.1:0"

[[subscriptions]]
id = "demo-orders"
table = "orders"
events = ["INSERT", "UPDATE", "DELETE"]
url = "http://{receiver}{PATH}"
secret = "{SECRET}"
"#
    )
}

async fn script(
    pg: &PgServer,
    out: &mut impl Write,
    mut rx: mpsc::UnboundedReceiver<Received>,
    opts: &Options,
    cancel: &CancellationToken,
    streaming: &AtomicBool,
) -> anyhow::Result<()> {
    let url = pg.url(DATABASE);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .context("connecting to the demo database")?;
    tokio::spawn(conn);

    // The slot must exist before the changes, or they would not be streamed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !streaming.load(Ordering::Relaxed) {
        if Instant::now() > deadline {
            bail!("the pipeline did not start streaming within 30 s (run with WALHOOK_LOG=info to see why)");
        }
        tokio::select! {
            _ = cancel.cancelled() => bail!("interrupted"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    say(
        out,
        &format!(
            "walhook is streaming from slot \"walhook\"; making {} changes, each in its own transaction:",
            CHANGES.len()
        ),
    );
    let t0 = Instant::now();
    for sql in CHANGES {
        client.batch_execute(sql).await.context(sql)?;
        let _ = writeln!(out, "  {sql};");
    }
    say(
        out,
        "what the receiver got, in arrival order (walhook keeps commit order per row, not across rows):",
    );

    let mut seen = HashSet::new();
    let mut bad = 0usize;
    let mut last = t0.elapsed();
    let deadline = tokio::time::Instant::now() + opts.timeout;
    while seen.len() < CHANGES.len() {
        let r = tokio::select! {
            _ = cancel.cancelled() => bail!("interrupted"),
            r = tokio::time::timeout_at(deadline, rx.recv()) => r,
        };
        let Ok(Some(r)) = r else {
            bail!(
                "timed out after {} s: the receiver got {} of {} deliveries; outbox: {}",
                opts.timeout.as_secs(),
                seen.len(),
                CHANGES.len(),
                outbox_summary(&client).await
            );
        };
        let id = header(&r.headers, "x-archie-delivery");
        if !seen.insert(id.clone()) {
            let _ = writeln!(out, "(a redelivery of {id}: deduplicated by its id)");
            continue;
        }
        last = t0.elapsed();
        print_delivery(out, seen.len(), &r);
        if !r.signature_ok {
            bad += 1;
        }
    }
    let _ = writeln!(out);
    if bad > 0 {
        bail!(
            "{} changes → {} deliveries received, {bad} with an INVALID signature",
            CHANGES.len(),
            seen.len()
        );
    }
    say(
        out,
        &format!(
            "{} changes → {} signed deliveries received, all signatures valid, in {}",
            CHANGES.len(),
            seen.len(),
            if last < Duration::from_secs(1) {
                format!("{} ms", last.as_millis())
            } else {
                format!("{:.1} s", last.as_secs_f64())
            }
        ),
    );
    Ok(())
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(missing)")
        .to_string()
}

fn print_delivery(out: &mut impl Write, n: usize, r: &Received) {
    let _ = writeln!(out, "\n── delivery {n} of {} ──", CHANGES.len());
    let _ = writeln!(out, "POST {}", r.path);
    for name in [
        "Content-Type",
        "User-Agent",
        "X-Archie-Event",
        "X-Archie-Delivery",
        "X-Archie-Signature",
    ] {
        let _ = writeln!(out, "{name}: {}", header(&r.headers, name));
    }
    let body = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned());
    let _ = writeln!(out, "{body}");
    let _ = writeln!(
        out,
        "{}",
        if r.signature_ok {
            "signature OK"
        } else {
            "signature INVALID"
        }
    );
    let _ = out.flush();
}

/// Counts of the outbox rows by status, and the last error, for a timeout message.
async fn outbox_summary(client: &tokio_postgres::Client) -> String {
    let counts = client
        .query(
            "SELECT status, count(*) FROM walhook.deliveries GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await;
    let mut s = match counts {
        Ok(rows) if rows.is_empty() => "no deliveries stored".to_string(),
        Ok(rows) => rows
            .iter()
            .map(|r| format!("{} {}", r.get::<_, i64>(1), r.get::<_, String>(0)))
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("unreadable ({e})"),
    };
    if let Ok(Some(r)) = client
        .query_opt(
            "SELECT last_error FROM walhook.deliveries WHERE last_error IS NOT NULL ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
    {
        s.push_str(&format!("; last error: {}", r.get::<_, String>(0)));
    }
    s
}

#[derive(Clone)]
struct ReceiverState {
    tx: mpsc::UnboundedSender<Received>,
}

/// Starts the demo receiver on 127.0.0.1:0: it checks `X-Archie-Signature` (and the unprefixed
/// `X-Webhook-Signature`) against HMAC-SHA256 of the raw body, answers 200 or 401, and hands
/// every request to the script.
async fn start_receiver(
    tx: mpsc::UnboundedSender<Received>,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("starting the demo receiver")?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .fallback(receive)
        .with_state(ReceiverState { tx });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(addr)
}

async fn receive(
    State(state): State<ReceiverState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let signature_ok = verify(&headers, &body, SECRET);
    let _ = state.tx.send(Received {
        path: uri.path().to_string(),
        headers,
        body,
        signature_ok,
    });
    if signature_ok {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// `X-Archie-Signature: sha256=<hex>` must be HMAC-SHA256(secret, raw body), compared in
/// constant time, and `X-Webhook-Signature` the same hex without the prefix.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &str) -> bool {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let Some(sig) = get("x-archie-signature").and_then(|s| s.strip_prefix("sha256=")) else {
        return false;
    };
    if get("x-webhook-signature") != Some(sig) {
        return false;
    }
    let Ok(sig) = hex::decode(sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(archie: &str, raw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-archie-signature", archie.parse().unwrap());
        h.insert("x-webhook-signature", raw.parse().unwrap());
        h
    }

    #[test]
    fn verifies_hmac_sha256_of_the_raw_body() {
        // Expected value computed with Python's hmac module (the seed's verification code).
        let body = br#"{"id":"evt_abc123def456","total":99.50}"#;
        let hex = "c6fe0130a6141bc8fc38af27d2d2a9ee4eccd2fb32678b4ac29071d9e1d58748";
        assert!(verify(
            &headers(&format!("sha256={hex}"), hex),
            body,
            SECRET
        ));
        // Re-serialised JSON (99.5) is other bytes: refused.
        assert!(!verify(
            &headers(&format!("sha256={hex}"), hex),
            br#"{"id":"evt_abc123def456","total":99.5}"#,
            SECRET
        ));
        assert!(!verify(&headers(hex, hex), body, SECRET));
        assert!(!verify(&headers("sha256=zz", "zz"), body, SECRET));
        assert!(!verify(&HeaderMap::new(), body, SECRET));
    }
}
