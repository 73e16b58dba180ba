//! Sustained-load benchmark (issue #11, "Sustained"): 2M deliveries through one subscription
//! with delivery keeping up; the outbox's size (tables + indexes + toast of every relation in
//! schema `walhook`) at the end must be within 2× its size after the first 200k deliveries, and
//! no statement of walhook's may block ingest for more than 100 ms.
//!
//! 1. Postgres with pg_stat_statements (and 640 MB of WAL written and checkpointed first, so
//!    that the run reuses WAL segments as a server that has been running does), `log_lock_waits = on`, `deadlock_timeout = 100ms` (every
//!    lock wait longer than 100 ms is logged as "still waiting for … after 100.x ms") and
//!    `log_min_duration_statement = 100ms`; the log line prefix names the application and pid.
//!    walhook connects as `postgres` (application `walhook`), the bench as role `bench`
//!    (application `sustained-bench`), so pg_stat_statements tells their statements apart.
//! 2. One INSERT subscription to a fast in-process receiver; `[delivery] max_in_flight = 64`,
//!    `[outbox] retention = SUSTAINED_RETENTION` (default 30s).
//! 3. Once walhook's slot is active, a generator commits `SUSTAINED_RATE / 100` rows every 10 ms
//!    (default 5000 rows/s) until `SUSTAINED_TOTAL` (default 2,000,000) rows are committed.
//! 4. Every second: rows committed, distinct rows received (a bitset over the row ids), lag,
//!    walhook's VmRSS and the outbox size; a progress line every 10 s.
//! 5. The outbox size after the first 200k received, at the end of the load (every row received),
//!    and after settling (one more retention period and retention tick, plus 5 s); the maximum.
//! 6. Lock waits > 100 ms and statements ≥ 100 ms from the server log, walhook's statements with
//!    the largest `max_exec_time`, commit → receiver latency over the whole run, the outbox's
//!    largest relations.
//!
//! Fails (exit 1, walhook stopped) unless every row is delivered within 120 s after the
//! generator stops. Needs the release binary: run through `bash bench/sustained.sh`. walhook's
//! log: `$TMPDIR/walhook-sustained.log` (`SUSTAINED_WALHOOK_LOG` sets its `WALHOOK_LOG`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walhook::embedded_pg::PgServer;

mod support;
use support::*;

const MAX_IN_FLIGHT: usize = 64;
const SLOT: &str = "walhook_sustained";
const BENCH_APP: &str = "sustained-bench";
/// "After the first 200k" deliveries.
const EARLY_MARK: u64 = 200_000;
/// How long the bench waits after the generator stops for every row to arrive.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// What the receiver saw. Rows are identified by their bigserial `id` (1..=total), so distinct
/// deliveries are counted with a bitset rather than a set of two million strings.
struct Rx {
    requests: AtomicU64,
    distinct: AtomicU64,
    duplicates: AtomicU64,
    /// Bodies without a parsable `timestamp` and `record.id` in 1..=total.
    bad: AtomicU64,
    seen: Vec<AtomicU64>,
    /// Commit → first arrival of each row, microseconds.
    latencies: Mutex<Vec<u32>>,
}

impl Rx {
    fn new(total: u64) -> Rx {
        Rx {
            requests: AtomicU64::new(0),
            distinct: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            seen: (0..total / 64 + 1).map(|_| AtomicU64::new(0)).collect(),
            latencies: Mutex::new(Vec::with_capacity(total as usize)),
        }
    }

    fn record(&self, body: &[u8]) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        #[derive(serde::Deserialize)]
        struct Rec {
            id: u64,
        }
        #[derive(serde::Deserialize)]
        struct Body<'a> {
            timestamp: &'a str,
            record: Rec,
        }
        let parsed = serde_json::from_slice::<Body>(body).ok().and_then(|b| {
            let ts = chrono::DateTime::parse_from_rfc3339(b.timestamp).ok()?;
            let micros = chrono::Utc::now()
                .signed_duration_since(ts)
                .num_microseconds()?;
            Some((b.record.id, micros.clamp(0, u32::MAX as i64) as u32))
        });
        let Some((id, micros)) =
            parsed.filter(|(id, _)| *id >= 1 && ((*id - 1) / 64) < self.seen.len() as u64)
        else {
            self.bad.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let (word, bit) = (((id - 1) / 64) as usize, 1u64 << ((id - 1) % 64));
        if self.seen[word].fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            self.latencies.lock().unwrap().push(micros);
            self.distinct.fetch_add(1, Ordering::Relaxed);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn main() {
    support::run("sustained", bench());
}

async fn receiver(rx: Arc<Rx>) -> anyhow::Result<String> {
    use axum::body::Bytes;
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let rx = rx.clone();
        async move {
            rx.record(&body);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn config(
    pg: &PgServer,
    db: &str,
    url: &str,
    retention: &str,
) -> anyhow::Result<tempfile::TempPath> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(
        file.path(),
        format!(
            "[source]\nurl = \"{}\"\nslot = \"{SLOT}\"\npublication = \"walhook\"\n\n\
             [project]\nid = \"bench\"\n\n\
             [outbox]\nretention = \"{retention}\"\n\n\
             [delivery]\nallow_http = true\nallow_private_networks = true\n\
             max_in_flight = {MAX_IN_FLIGHT}\n\n\
             [[subscriptions]]\nid = \"orders-insert\"\ntable = \"orders\"\n\
             events = [\"INSERT\"]\nurl = \"{url}\"\nsecret = \"s\"\n",
            pg.url(db)
        ),
    )?;
    Ok(file.into_temp_path())
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// The size of every relation in schema `walhook`, with its indexes and toast.
const OUTBOX_SIZE: &str = "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'walhook' AND c.relkind IN ('r', 'm')";

/// The outbox's largest relations as printable lines.
async fn relation_sizes(client: &tokio_postgres::Client, label: &str) {
    println!("outbox relations {label} (top 6 by total size):");
    if let Err(e) = relation_sizes_rows(client).await {
        println!("  (not read: {e})");
    }
    if let Ok(rows) = client
        .query(
            "SELECT p.relid::regclass::text, p.phase, p.heap_blks_scanned, p.heap_blks_total
             FROM pg_stat_progress_vacuum p",
            &[],
        )
        .await
    {
        for row in rows {
            let (rel, phase, done, total): (String, String, i64, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            println!("  vacuum running on {rel}: {phase}, {done} of {total} heap blocks scanned");
        }
    }
}

async fn relation_sizes_rows(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    println!(
        "  {:<34} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8}",
        "relation", "total", "heap", "indexes", "live", "dead", "vacuums"
    );
    for row in client
        .query(
            "SELECT c.relname::text, pg_total_relation_size(c.oid), pg_relation_size(c.oid),
                    pg_indexes_size(c.oid), coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0),
                    coalesce(s.autovacuum_count + s.vacuum_count, 0)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
             WHERE n.nspname = 'walhook' AND c.relkind IN ('r', 'm')
             ORDER BY 2 DESC, 1 LIMIT 6",
            &[],
        )
        .await?
    {
        let (name, total, heap, idx): (String, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let (live, dead, vacuums): (i64, i64, i64) = (row.get(4), row.get(5), row.get(6));
        println!(
            "  {name:<34} {:>7.2} M {:>7.2} M {:>7.2} M {live:>10} {dead:>10} {vacuums:>8}",
            mib(total),
            mib(heap),
            mib(idx)
        );
    }
    Ok(())
}

struct Sample {
    at: Duration,
    committed: u64,
    received: u64,
    rss_kib: u64,
    outbox: Option<i64>,
}

/// The server log's lines since `offset`.
fn log_lines(path: &Path, offset: u64) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let from = (offset as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..])
        .lines()
        .map(str::to_string)
        .collect()
}

/// The application name from a line with prefix `%m [%p] %a: ` (empty for background processes).
fn app_of(line: &str) -> &str {
    line.split_once("] ")
        .and_then(|(_, rest)| rest.split_once(": "))
        .map(|(app, _)| app)
        .unwrap_or("")
}

fn pid_of(line: &str) -> &str {
    line.split_once(" [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(pid, _)| pid)
        .unwrap_or("")
}

fn short(s: &str, n: usize) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() <= n {
        s
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

struct Settings {
    total: u64,
    rate: u64,
    retention: String,
    retention_dur: Duration,
}

async fn bench() -> anyhow::Result<()> {
    let total: u64 = env_or("SUSTAINED_TOTAL", "2000000").parse()?;
    let rate: u64 = env_or("SUSTAINED_RATE", "5000").parse()?;
    let retention = env_or("SUSTAINED_RETENTION", "30s");
    let retention_dur = walhook::config::duration::parse(&retention)
        .map_err(|e| anyhow::anyhow!("SUSTAINED_RETENTION: {e}"))?;
    anyhow::ensure!(
        total > 0 && rate >= 100,
        "SUSTAINED_TOTAL > 0 and SUSTAINED_RATE ≥ 100"
    );
    let set = Settings {
        total,
        rate,
        retention,
        retention_dur,
    };

    let pg = PgServer::start(&[
        ("shared_preload_libraries", "pg_stat_statements"),
        ("log_lock_waits", "on"),
        ("deadlock_timeout", "100ms"),
        ("log_min_duration_statement", "100ms"),
        ("log_line_prefix", "%m [%p] %a: "),
        // Whether vacuum keeps up with retention's deletes: every autovacuum run is logged.
        ("log_autovacuum_min_duration", "0"),
    ])?;
    // The server's stdout/stderr go to postgres.log beside its data directory.
    let data_dir = PathBuf::from(pg.psql("postgres", "SHOW data_directory")?);
    let log_path = data_dir
        .parent()
        .map(|d| d.join("postgres.log"))
        .filter(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("no postgres.log beside {}", data_dir.display()))?;
    let db = pg.create_database()?;
    pg.psql(
        &db,
        "CREATE TABLE orders (id bigserial PRIMARY KEY, total numeric(12,2), status text,
             customer_id text, created_at timestamptz DEFAULT now(), meta jsonb);
         ALTER TABLE orders REPLICA IDENTITY FULL;
         CREATE EXTENSION pg_stat_statements;
         CREATE ROLE bench LOGIN SUPERUSER;",
    )?;
    warm_wal(&pg, &db)?;
    let rx = Arc::new(Rx::new(total));
    let url = receiver(rx.clone()).await?;
    println!(
        "postgres on port {} (log {}), receiver {url}; {total} rows at {rate}/s, retention {}",
        pg.port(),
        log_path.display(),
        set.retention
    );
    let cfg = config(&pg, &db, &url, &set.retention)?;
    let bench_url = format!(
        "{}&application_name={BENCH_APP}",
        pg.url_as("bench", "x", &db)
    );
    let child = spawn_walhook(
        &cfg,
        &std::env::temp_dir().join("walhook-sustained.log"),
        "SUSTAINED_WALHOOK_LOG",
        "bench/sustained.sh",
    )?;
    let pid = child.id();
    // walhook is stopped whether the run succeeds or not.
    let outcome = run(&set, &bench_url, &rx, pid, &log_path).await;
    let hwm = stop_walhook(child)?;
    let report = outcome?;
    print_table(&set, &report, hwm);
    drop(pg);
    if let Some(e) = report.failure {
        anyhow::bail!(e);
    }
    Ok(())
}

struct Report {
    gen_secs: f64,
    committed: u64,
    /// Generator start → every row received.
    run_secs: f64,
    max_lag: u64,
    early: Option<i64>,
    end: Option<i64>,
    settled: Option<i64>,
    max_size: i64,
    skipped_samples: u64,
    delivered: u64,
    requests: u64,
    duplicates: u64,
    bad: u64,
    log: LogCounts,
    max_exec: Option<(f64, String)>,
    lat: Option<(f64, f64, f64)>,
    cpu: Vec<String>,
    failure: Option<String>,
}

/// The once-a-second readings.
struct Sampler<'a> {
    client: tokio_postgres::Client,
    rx: &'a Rx,
    committed: &'a AtomicU64,
    pid: u32,
    start: Instant,
    samples: Vec<Sample>,
    skipped: u64,
    early: Option<i64>,
    early_mark: u64,
    tick: tokio::time::Interval,
}

impl Sampler<'_> {
    /// Waits for the next second and takes a sample.
    async fn next(&mut self) -> anyhow::Result<&Sample> {
        self.tick.tick().await;
        let at = self.start.elapsed();
        let committed = self.committed.load(Ordering::Relaxed);
        let received = self.rx.distinct.load(Ordering::Relaxed);
        let rss_kib = proc_kib(self.pid, "VmRSS:").unwrap_or(0);
        let outbox = match self.client.query_one(OUTBOX_SIZE, &[]).await {
            Ok(row) => Some(row.get::<_, i64>(0)),
            Err(e) => {
                self.skipped += 1;
                eprintln!("  (outbox size not read at {:.0} s: {e})", at.as_secs_f64());
                None
            }
        };
        if self.early.is_none() && received >= self.early_mark {
            if let Some(size) = outbox {
                self.early = Some(size);
                println!("outbox after {received} received: {:.2} MiB", mib(size));
                relation_sizes(&self.client, &format!("after {received} received")).await;
            }
        }
        let s = Sample {
            at,
            committed,
            received,
            rss_kib,
            outbox,
        };
        if self.samples.len() % 10 == 0 {
            println!(
                "{:5.0} s  committed {:>8}  received {:>8}  lag {:>7}  outbox {:>10}  RSS {:6.1} MiB",
                s.at.as_secs_f64(),
                s.committed,
                s.received,
                s.committed.saturating_sub(s.received),
                s.outbox
                    .map_or("?".into(), |b| format!("{:.2} MiB", mib(b))),
                s.rss_kib as f64 / 1024.0
            );
        }
        self.samples.push(s);
        Ok(self.samples.last().expect("just pushed"))
    }
}

async fn run(
    set: &Settings,
    bench_url: &str,
    rx: &Arc<Rx>,
    pid: u32,
    log_path: &Path,
) -> anyhow::Result<Report> {
    let client = connect(bench_url).await?;
    // A size reading never queues long behind (or in front of) walhook's DDL.
    client.batch_execute("SET lock_timeout = '100ms'").await?;
    let t = Instant::now();
    loop {
        let n: i64 = client
            .query_one(&walhook::embedded_pg::slot_streaming_sql(SLOT), &[])
            .await?
            .get(0);
        if n == 1 {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "walhook's slot is not streaming after 60 s (see $TMPDIR/walhook-sustained.log)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Only statements of the steady state (not walhook's migrations) and log lines from now on.
    client
        .batch_execute("SELECT pg_stat_statements_reset()")
        .await?;
    let log_offset = std::fs::metadata(log_path)?.len();

    let committed = Arc::new(AtomicU64::new(0));
    let gen_done = Arc::new(AtomicBool::new(false));
    let gen_client = connect(bench_url).await?;
    let generator = {
        let (committed, done) = (committed.clone(), gen_done.clone());
        let (total, per_tick) = (set.total, set.rate / 100);
        tokio::spawn(async move {
            let result = generate(&gen_client, &committed, total, per_tick).await;
            done.store(true, Ordering::Relaxed);
            result
        })
    };

    let cpu_before = cpu_snapshot();
    let mut s = Sampler {
        client,
        rx,
        committed: &committed,
        pid,
        start: Instant::now(),
        samples: Vec::new(),
        skipped: 0,
        early: None,
        early_mark: EARLY_MARK.min(set.total),
        tick: tokio::time::interval(Duration::from_secs(1)),
    };
    s.tick
        .set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !gen_done.load(Ordering::Relaxed) {
        s.next().await?;
    }
    let gen_secs = generator.await??.as_secs_f64();
    let gen_end = Instant::now();
    println!(
        "generator done: {} rows in {gen_secs:.1} s ({:.0}/s)",
        committed.load(Ordering::Relaxed),
        committed.load(Ordering::Relaxed) as f64 / gen_secs
    );

    // Drain: every row at the receiver within DRAIN_LIMIT.
    let mut failure = None;
    let mut run_secs = f64::NAN;
    let mut end = None;
    loop {
        let (received, outbox) = {
            let x = s.next().await?;
            (x.received, x.outbox)
        };
        if received >= set.total {
            run_secs = rx_all_secs(&s);
            end = outbox;
            println!("every row received {run_secs:.1} s after the generator started");
            break;
        }
        if gen_end.elapsed() > DRAIN_LIMIT {
            failure = Some(format!(
                "{received} of {} rows received {} s after the generator stopped",
                set.total,
                DRAIN_LIMIT.as_secs()
            ));
            break;
        }
    }
    let cpu = cpu_top(&cpu_before, &cpu_snapshot(), 8);
    if end.is_none() && failure.is_none() {
        end = s
            .client
            .query_one(OUTBOX_SIZE, &[])
            .await
            .ok()
            .map(|r| r.get(0));
    }
    relation_sizes(&s.client, "at the end of the load").await;

    // Settle: one more retention period, retention tick and 5 s.
    let mut settled = None;
    if failure.is_none() {
        let settle = set.retention_dur
            + (set.retention_dur / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
            + Duration::from_secs(5);
        println!("settling for {:.0} s", settle.as_secs_f64());
        let t = Instant::now();
        while t.elapsed() < settle {
            settled = s.next().await?.outbox.or(settled);
        }
        relation_sizes(&s.client, "after settling").await;
    }

    let max_lag = s
        .samples
        .iter()
        .map(|x| x.committed.saturating_sub(x.received))
        .max()
        .unwrap_or(0);
    let max_size = s.samples.iter().filter_map(|x| x.outbox).max().unwrap_or(0);
    let log = server_log(log_path, log_offset);
    let max_exec = statements(&s.client).await?;
    let lat = {
        let mut l = rx.latencies.lock().unwrap().clone();
        l.sort_unstable();
        (!l.is_empty()).then(|| {
            (
                percentile_ms(&l, 0.5),
                percentile_ms(&l, 0.99),
                percentile_ms(&l, 1.0),
            )
        })
    };
    Ok(Report {
        gen_secs,
        committed: committed.load(Ordering::Relaxed),
        run_secs,
        max_lag,
        early: s.early,
        end,
        settled,
        max_size,
        skipped_samples: s.skipped,
        delivered: rx.distinct.load(Ordering::Relaxed),
        requests: rx.requests.load(Ordering::Relaxed),
        duplicates: rx.duplicates.load(Ordering::Relaxed),
        bad: rx.bad.load(Ordering::Relaxed),
        log,
        max_exec,
        lat,
        cpu,
        failure,
    })
}

/// Seconds from the generator's start to the last sample (the one that saw every row).
fn rx_all_secs(s: &Sampler) -> f64 {
    s.samples.last().map_or(f64::NAN, |x| x.at.as_secs_f64())
}

/// Commits `per_tick` rows every 10 ms (catching up on missed ticks) until `total`.
async fn generate(
    client: &tokio_postgres::Client,
    committed: &AtomicU64,
    total: u64,
    per_tick: u64,
) -> anyhow::Result<Duration> {
    let insert = client
        .prepare(
            "INSERT INTO orders (total, status, customer_id, meta)
             SELECT g, 'new', 'cust-' || g, jsonb_build_object('g', g)
             FROM generate_series(1, $1::int) g",
        )
        .await?;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        tick.tick().await;
        let n = per_tick.min(total - sent);
        client.execute(&insert, &[&(n as i32)]).await?;
        sent += n;
        committed.store(sent, Ordering::Relaxed);
    }
    Ok(start.elapsed())
}

struct LogCounts {
    waits_walhook: usize,
    waits_other: usize,
    slow_walhook: usize,
    autovacuums: usize,
    autovacuum_cancels: usize,
}

/// Lock waits > 100 ms (walhook's, others'), walhook's statements ≥ 100 ms and autovacuum runs on
/// walhook's schema from the server log since `offset`; prints up to 10 of each kind.
fn server_log(path: &Path, offset: u64) -> LogCounts {
    let lines = log_lines(path, offset);
    let vacuums: Vec<usize> = (0..lines.len())
        .filter(|&i| {
            lines[i].contains("automatic vacuum of table") && lines[i].contains(".walhook.")
        })
        .collect();
    let cancels: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("canceling autovacuum task"))
        .collect();
    println!(
        "autovacuum runs on schema walhook: {} completed, {} cancelled (all tables)",
        vacuums.len(),
        cancels.len()
    );
    for &i in vacuums.iter().chain(cancels.iter()).take(10) {
        println!("  {}", short(&lines[i], 200));
        // Continuation lines of a multi-line entry carry no prefix.
        for l in lines[i + 1..]
            .iter()
            .take_while(|l| !l.contains("] "))
            .take(8)
        {
            if l.contains("tuples:") || l.contains("CONTEXT:") || l.contains("elapsed") {
                println!("      {}", short(l, 200));
            }
        }
    }
    let waits: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("still waiting for"))
        .collect();
    let walhook_waits = waits
        .iter()
        .filter(|&&i| app_of(&lines[i]) == "walhook")
        .count();
    println!(
        "lock waits > 100 ms in the server log: {} ({walhook_waits} by walhook)",
        waits.len()
    );
    for &i in waits.iter().take(10) {
        println!("  {}", short(&lines[i], 220));
        // The DETAIL / STATEMENT lines of the same entry name the blocker and the waiting query.
        let pid = pid_of(&lines[i]);
        for l in lines[i + 1..].iter().take(4) {
            if pid_of(l) == pid && (l.contains("DETAIL:") || l.contains("STATEMENT:")) {
                println!("      {}", short(l, 220));
            }
        }
    }
    let slow: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("duration: ") && app_of(l) == "walhook")
        .collect();
    println!(
        "walhook statements ≥ 100 ms in the server log: {}",
        slow.len()
    );
    for l in slow.iter().take(10) {
        println!("  {}", short(l, 220));
    }
    LogCounts {
        waits_walhook: walhook_waits,
        waits_other: waits.len() - walhook_waits,
        slow_walhook: slow.len(),
        autovacuums: vacuums.len(),
        autovacuum_cancels: cancels.len(),
    }
}

/// Prints walhook's statements (role `postgres`) with the largest `max_exec_time`; returns the
/// largest.
async fn statements(client: &tokio_postgres::Client) -> anyhow::Result<Option<(f64, String)>> {
    let rows = client
        .query(
            "SELECT max_exec_time, mean_exec_time, calls, regexp_replace(query, '\\s+', ' ', 'g')
             FROM pg_stat_statements
             WHERE userid = (SELECT oid FROM pg_roles WHERE rolname = 'postgres')
             ORDER BY max_exec_time DESC LIMIT 8",
            &[],
        )
        .await?;
    println!("walhook's statements by max_exec_time (pg_stat_statements):");
    println!("  {:>9} {:>9} {:>9}  query", "max ms", "mean ms", "calls");
    let mut top = None;
    for row in &rows {
        let (max, mean, calls, q): (f64, f64, i64, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let abbrev = if q.chars().count() > 90 {
            format!(
                "{} … {}",
                q.chars().take(45).collect::<String>(),
                q.chars().skip(q.chars().count() - 40).collect::<String>()
            )
        } else {
            q.clone()
        };
        println!("  {max:9.1} {mean:9.3} {calls:9}  {abbrev}");
        top.get_or_insert((max, abbrev));
    }
    Ok(top)
}

fn print_table(set: &Settings, r: &Report, hwm_kib: u64) {
    let size = |b: Option<i64>| b.map_or("?".to_string(), |b| format!("{:.2} MiB", mib(b)));
    let ratio = |b: Option<i64>| match (b, r.early) {
        (Some(b), Some(e)) if e > 0 => format!("{:.2}", b as f64 / e as f64),
        _ => "?".into(),
    };
    let achieved = r.committed as f64 / r.gen_secs;
    println!("\n| measure | value |");
    println!("|---|---|");
    println!(
        "| rate asked / achieved (generator) | {} rows/s / {achieved:.0} rows/s ({} rows in {:.1} s) |",
        set.rate, r.committed, r.gen_secs
    );
    println!(
        "| delivered (distinct rows at the receiver) | {} of {} ({} requests, {} redeliveries, {} bad bodies) |",
        r.delivered,
        set.total,
        r.requests,
        r.duplicates,
        r.bad
    );
    println!(
        "| generator start → every row received | {:.1} s ({:.0} deliveries/s) |",
        r.run_secs,
        set.total as f64 / r.run_secs
    );
    println!(
        "| max lag (committed − received, 1 s samples) | {} rows (≈ {:.1} s at {achieved:.0}/s) |",
        r.max_lag,
        r.max_lag as f64 / achieved
    );
    println!(
        "| commit → receiver latency p50 / p99 / max (every row) | {} |",
        r.lat.map_or("?".into(), |(a, b, c)| format!(
            "{a:.1} ms / {b:.1} ms / {c:.1} ms"
        ))
    );
    println!("| outbox retention | {} |", set.retention);
    println!(
        "| outbox size after the first {} received | {} |",
        EARLY_MARK.min(set.total),
        size(r.early)
    );
    println!("| outbox size at the end of the load | {} |", size(r.end));
    println!("| outbox size after settling | {} |", size(r.settled));
    println!(
        "| outbox size, max of the 1 s samples | {} ({} samples not read) |",
        size(Some(r.max_size)),
        r.skipped_samples
    );
    println!(
        "| ratio end ÷ after-200k (acceptance ≤ 2) | {} (settled ÷ after-200k: {}) |",
        ratio(r.end),
        ratio(r.settled)
    );
    println!(
        "| lock waits > 100 ms (log_lock_waits) | {} by walhook, {} by others |",
        r.log.waits_walhook, r.log.waits_other
    );
    println!(
        "| walhook statements ≥ 100 ms (log_min_duration_statement) | {} |",
        r.log.slow_walhook
    );
    println!(
        "| autovacuum runs on schema walhook (completed / cancelled) | {} / {} |",
        r.log.autovacuums, r.log.autovacuum_cancels
    );
    println!(
        "| largest max_exec_time of walhook's statements | {} |",
        r.max_exec
            .as_ref()
            .map_or("?".into(), |(ms, q)| format!("{ms:.1} ms ({q})"))
    );
    println!(
        "| walhook peak RSS (VmHWM) | {:.1} MiB |",
        hwm_kib as f64 / 1024.0
    );
    println!(
        "| CPU during the load (utime+stime, top) | {} |",
        r.cpu
            .iter()
            .map(|l| short(l, 80))
            .collect::<Vec<_>>()
            .join("<br>")
    );
    if let Some(f) = &r.failure {
        println!("\nFAILED: {f}");
    }
}
