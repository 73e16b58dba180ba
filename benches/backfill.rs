//! Backfill benchmark: a W1-shaped `orders` table (uuid key, numeric, text, timestamptz, jsonb)
//! of 1,000,000 rows (`BACKFILL_BENCH_ROWS`) sent as READ events through to a fast loopback
//! receiver, beside the limit measured in the same run on the same server:
//! `COPY (SELECT to_jsonb(t) FROM orders t) TO STDOUT` drained to nowhere.
//!
//! 1. The limit: the COPY above, timed (the rows rendered as JSON and read, nothing else).
//! 2. `target/release/walhook run` with delivery on and two subscriptions of `orders`: `orders`
//!    (one request per row) and `orders_batched` (`batch.max_events = 100`). Once it streams,
//!    `POST …/backfill` for each in turn (`chunk_size` from `BACKFILL_BENCH_CHUNK`, default
//!    5000), each timed from the request until the backfill is `done` (every chunk stored in the
//!    outbox) and until the receiver has every row and the outbox shows every delivery of the
//!    subscription `delivered`. walhook's peak RSS (VmHWM), and CPU time per process.
//!
//! Before the runs: 640 MB of WAL and a checkpoint ([`support::warm_wal`]), as in the e2e bench.
//!
//! `BACKFILL_BENCH_SHARED_BUFFERS` sets the server's `shared_buffers` (default: Postgres's own).
//!
//! Needs the release binary: run through `bash bench/backfill.sh`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use walhook::embedded_pg::PgServer;

mod support;
use support::*;

const TOKEN: &str = "bench-token";
const MAX_IN_FLIGHT: usize = 64;
const TIMEOUT: Duration = Duration::from_secs(1800);
/// How a READ event shows in a body (the payload is compact JSON).
const READ: &str = "\"event\":\"READ\"";
/// The batched subscription's batch size.
const BATCH: usize = 100;

fn main() {
    support::run("backfill", bench());
}

fn env_num(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A receiver that answers 200 at once and counts requests.
/// A receiver counting the events it is sent: one per request, or each `READ` of a batch body
/// (`{"events": [...]}`) for the batched subscription's path.
async fn receiver(single: Arc<AtomicU64>, batched: Arc<AtomicU64>) -> anyhow::Result<String> {
    let app = axum::Router::new()
        .route(
            "/batched",
            axum::routing::post(move |body: axum::body::Bytes| {
                let batched = batched.clone();
                async move {
                    let n = body
                        .windows(READ.len())
                        .filter(|w| *w == READ.as_bytes())
                        .count();
                    batched.fetch_add(n as u64, Ordering::Relaxed);
                    "ok"
                }
            }),
        )
        .fallback(move || {
            let single = single.clone();
            async move {
                single.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    while !ready()? {
        anyhow::ensure!(t.elapsed() < timeout, "{what}: not after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn bench() -> anyhow::Result<()> {
    let rows = env_num("BACKFILL_BENCH_ROWS", 1_000_000);
    let chunk = env_num("BACKFILL_BENCH_CHUNK", 5000);
    // The server's buffer cache (Postgres's default, 128 MB, unless set): the chunks are read
    // in key order, so a table larger than the cache is read from the OS page cache row by row.
    let shared_buffers = std::env::var("BACKFILL_BENCH_SHARED_BUFFERS").ok();
    let settings: Vec<(&str, &str)> = shared_buffers
        .as_deref()
        .map(|v| ("shared_buffers", v))
        .into_iter()
        .collect();
    let pg = PgServer::start(&settings)?;
    println!(
        "server: shared_buffers {}",
        pg.psql("postgres", "SHOW shared_buffers")?
    );
    let db = setup_db(&pg, &[])?;
    let t = Instant::now();
    psql_file(
        &pg,
        &db,
        &format!(
            "INSERT INTO orders (total, status, customer_id, meta)
             SELECT g + (g % 100) / 100.0, 'new', 'cust-' || (g % 5000),
                    jsonb_build_object('sku', 'sku-'||g, 'qty', g % 7)
             FROM generate_series(1, {rows}) g;
             VACUUM ANALYZE orders;"
        ),
    )?;
    println!(
        "postgres on port {}; {rows} rows in orders in {:.1} s",
        pg.port(),
        t.elapsed().as_secs_f64()
    );
    // Every stored delivery is written to the WAL. On a fresh cluster each 16 MB
    // segment is first created and filled with zeros by the writing backend (a third of the
    // outbox writer's time in a profile); a server that has been running reuses old segments,
    // as the e2e bench's runs do after the same warm-up.
    warm_wal(&pg, &db)?;

    // 1. The limit.
    let (client, conn) = tokio_postgres::connect(&pg.url(&db), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let t = Instant::now();
    let stream = client
        .copy_out("COPY (SELECT to_jsonb(t) FROM orders t) TO STDOUT")
        .await?;
    futures_util::pin_mut!(stream);
    let mut bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        bytes += chunk?.len();
    }
    let copy_secs = t.elapsed().as_secs_f64();
    let copy_rate = rows as f64 / copy_secs;
    println!("COPY to_jsonb: {copy_secs:.2} s, {copy_rate:.0} rows/s ({bytes} bytes)");

    // 2. The backfills: one request per row, then the same rows batched.
    let single = Arc::new(AtomicU64::new(0));
    let batched = Arc::new(AtomicU64::new(0));
    let url = receiver(single.clone(), batched.clone()).await?;
    let port = scale_rx::free_port()?;
    let cfg = tempfile::NamedTempFile::new()?;
    let subscription = |id: &str, path: &str, extra: &str| {
        format!(
            "[[subscriptions]]\nid = \"{id}\"\ntable = \"orders\"\n\
             events = [\"INSERT\", \"UPDATE\", \"DELETE\"]\nurl = \"{url}{path}\"\nsecret = \"s\"\n{extra}\n"
        )
    };
    std::fs::write(
        cfg.path(),
        format!(
            "[source]\nurl = \"{}\"\nslot = \"walhook\"\npublication = \"walhook\"\n\n\
             [project]\nid = \"bench\"\n\n\
             [delivery]\nallow_http = true\nallow_private_networks = true\n\
             max_in_flight = {MAX_IN_FLIGHT}\n\n\
             [api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n\n{}{}",
            pg.url(&db),
            subscription("orders", "/hook", ""),
            subscription(
                "orders_batched",
                "/batched",
                &format!("batch = {{ max_events = {BATCH}, max_wait = \"50ms\" }}")
            ),
        ),
    )?;
    // `WALHOOK_LOG=info,walhook::ingest::backfill=debug` logs each chunk's timings.
    let log = std::env::temp_dir().join("walhook-backfill-bench.log");
    let child = spawn_walhook(cfg.path(), &log, "WALHOOK_LOG", "bench/backfill.sh")?;
    let pid = child.id();
    wait_for("walhook streams", Duration::from_secs(60), || {
        Ok(std::fs::read_to_string(&log)?.contains("streaming"))
    })
    .await?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let run = Run {
        pg: &pg,
        db: &db,
        port,
        rows,
        chunk,
        pid,
        log: &log,
    };
    let one = run.backfill("orders", &single).await?;
    let many = run.backfill("orders_batched", &batched).await?;
    stop_walhook(child)?;
    for (name, r) in [("one request per row", &one), ("batched", &many)] {
        println!("CPU time during the backfill, {name} (utime+stime, top processes):");
        for l in &r.cpu {
            println!("  {l}");
        }
    }
    println!("\n| measure ({rows} rows, chunk_size {chunk}) | value |");
    println!("|---|---|");
    println!("| COPY (SELECT to_jsonb(t) FROM orders t) TO STDOUT (the limit) | {copy_rate:.0} rows/s ({copy_secs:.2} s) |");
    for (name, r) in [
        ("one request per row", &one),
        (&*format!("`batch.max_events = {BATCH}`"), &many),
    ] {
        for (what, d) in [
            ("stored in the outbox", r.stored),
            ("delivered (receiver 2xx, marked delivered)", r.delivered),
        ] {
            let rate = rows as f64 / d.as_secs_f64();
            println!(
                "| backfill {what}, {name} | {rate:.0} rows/s ({:.2} s), {:.2} of the limit |",
                d.as_secs_f64(),
                rate / copy_rate
            );
        }
    }
    println!(
        "| walhook peak RSS | {} MB |",
        one.peak_kib.max(many.peak_kib) / 1024
    );
    Ok(())
}

/// One walhook process's backfills, one subscription at a time.
struct Run<'a> {
    pg: &'a PgServer,
    db: &'a str,
    port: u16,
    rows: i64,
    chunk: i64,
    pid: u32,
    log: &'a std::path::Path,
}

struct Timed {
    stored: Duration,
    delivered: Duration,
    peak_kib: u64,
    cpu: Vec<String>,
}

impl Run<'_> {
    /// Backfills `subscription`, timed from the request until the backfill is `done` (every
    /// chunk stored) and until `count` has every row and the outbox shows each of the
    /// subscription's deliveries `delivered`.
    async fn backfill(&self, subscription: &str, count: &AtomicU64) -> anyhow::Result<Timed> {
        let (pg, db, rows) = (self.pg, self.db, self.rows);
        let cpu_before = cpu_snapshot();
        let http = reqwest::Client::new();
        let t = Instant::now();
        let resp = http
            .post(format!(
                "http://127.0.0.1:{}/api/rest/_webhooks/{subscription}/backfill",
                self.port
            ))
            .bearer_auth(TOKEN)
            .header("X-Project-ID", "bench")
            .header("environment", "master")
            .header("content-type", "application/json")
            .body(format!("{{\"chunk_size\": {}}}", self.chunk))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().as_u16() == 202,
            "start: {}",
            resp.text().await?
        );
        let mut stored = None;
        let mut peak = 0u64;
        loop {
            peak = peak.max(proc_kib(self.pid, "VmHWM:").unwrap_or(0));
            if stored.is_none() {
                let state = pg.psql(
                    db,
                    &format!(
                        "SELECT state FROM walhook.backfills WHERE subscription_id = '{subscription}'"
                    ),
                )?;
                anyhow::ensure!(
                    state == "running" || state == "done",
                    "backfill {state}; log {}",
                    self.log.display()
                );
                if state == "done" {
                    stored = Some(t.elapsed());
                }
            }
            if stored.is_some() && count.load(Ordering::Relaxed) >= rows as u64 {
                let left = pg.psql(
                    db,
                    &undelivered_sql(&format!("subscription_id = '{subscription}'")),
                )?;
                if left == "0" {
                    break;
                }
            }
            anyhow::ensure!(t.elapsed() < TIMEOUT, "not delivered after {TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let delivered = t.elapsed();
        Ok(Timed {
            stored: stored.unwrap_or(delivered),
            delivered,
            peak_kib: peak.max(proc_kib(self.pid, "VmHWM:").unwrap_or(0)),
            cpu: cpu_top(&cpu_before, &cpu_snapshot(), 6),
        })
    }
}
