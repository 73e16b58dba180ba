//! End-to-end benchmark: WAL → outbox → signed POST → receiver 2xx → marked delivered.
//!
//! 1. Throughput: workload W1 (300k changes) is written first; `pg_recvlogical` drains a slot on
//!    the same WAL (the limit); then `target/release/walhook run` with delivery on, against a
//!    fast in-process receiver, timed from process start until the receiver has every change and
//!    the outbox shows every delivery `delivered`. Peak RSS of walhook.
//!    Then the same again with `batch = { max_events = 100, max_wait = "50ms" }` (opt-in
//!    batching), its events/s printed beside the unbatched run's.
//! 2. The delivery limit: a bare HTTP/1.1 client ([`support::bare_http`]) posts W1's own payloads,
//!    signed, to the same receiver over the same number of connections.
//! 3. Latency: with walhook running and caught up, a generator commits 50 (then 200) rows every
//!    10 ms (5k, then 20k changes/s) for 10 s; the receiver measures commit (the payload's `timestamp`) → arrival
//!    of each distinct event id. The bench fails unless every change sent arrived (as many
//!    distinct event ids as rows inserted): figures over a partial set would flatter the tail.
//!    Before the runs: 640 MB of WAL and a checkpoint, so that the runs reuse WAL segments as a
//!    server that has been running does (a fresh cluster zero-fills each new 16 MB segment in
//!    the middle of the run), and 2 s of the 5k/s load, unmeasured, so that the figures are the
//!    steady state and not walhook's first second.
//!
//! Each W1 run also prints the CPU each party spent per event (walhook, Postgres, the receiver)
//! and the rate the machine's cores could carry at that cost: what limits the rate.
//!
//! Needs the release binary: run through `bash bench/e2e.sh`. `E2E_W1_ONLY=1` runs only the two
//! W1 end-to-end runs (unbatched and batched), for a quicker comparison; `E2E_LATENCY_ONLY=1` only
//! step 3, `E2E_BATCHED_ONLY=1` only the batched W1 run. `E2E_WALHOOK_LOG` sets walhook's `WALHOOK_LOG` (default `info`; its log goes to
//! `$TMPDIR/walhook-e2e-<run>.log`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walhook::embedded_pg::PgServer;

mod support;
use support::*;

const MAX_IN_FLIGHT: usize = 64;

#[derive(Default)]
struct Received {
    count: AtomicU64,
    /// Events received: a batched request counts its `X-Walhook-Batch-Size`.
    events: AtomicU64,
    /// Commit → first arrival of each event id, microseconds (only while `record_latency`).
    latencies: Mutex<Vec<u64>>,
    /// The wall-clock second (Unix time) of each first arrival, beside `latencies`: the slow
    /// arrivals are grouped by second to line them up with walhook's and Postgres's logs.
    arrived_at: Mutex<Vec<(i64, u64)>>,
    /// The distinct event ids (payload `id`) that arrived while `record_latency`.
    ids: Mutex<HashSet<String>>,
    /// Arrivals of an event id already seen while `record_latency` (redeliveries).
    duplicates: AtomicU64,
    record_latency: std::sync::atomic::AtomicBool,
}

fn main() {
    support::run("e2e", bench());
}

async fn receiver(state: Arc<Received>) -> anyhow::Result<String> {
    use axum::body::Bytes;
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: Bytes| {
        let state = state.clone();
        async move {
            state.count.fetch_add(1, Ordering::Relaxed);
            let events = headers
                .get("x-walhook-batch-size")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1);
            state.events.fetch_add(events, Ordering::Relaxed);
            if state.record_latency.load(Ordering::Relaxed) {
                match arrival(&body) {
                    Some((id, lat)) => {
                        if state.ids.lock().unwrap().insert(id) {
                            state.latencies.lock().unwrap().push(lat);
                            state
                                .arrived_at
                                .lock()
                                .unwrap()
                                .push((chrono::Utc::now().timestamp(), lat));
                        } else {
                            state.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => eprintln!(
                        "latency run: a body without id or timestamp: {}",
                        String::from_utf8_lossy(&body)
                    ),
                }
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// The payload's event id and its commit → now latency in microseconds.
fn arrival(body: &[u8]) -> Option<(String, u64)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let ts = chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str()?).ok()?;
    let lat = chrono::Utc::now().signed_duration_since(ts);
    let micros = lat.num_microseconds().map(|m| m.max(0) as u64)?;
    Some((v["id"].as_str()?.to_string(), micros))
}

/// `extra`: more lines of the subscription (e.g. its `batch`).
fn config(
    pg: &PgServer,
    db: &str,
    slot: &str,
    url: &str,
    extra: &str,
) -> anyhow::Result<tempfile::TempPath> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(
        file.path(),
        format!(
            "[source]\nurl = \"{}\"\nslot = \"{slot}\"\npublication = \"walhook\"\n\n\
             [project]\nid = \"bench\"\n\n\
             [delivery]\nallow_http = true\nallow_private_networks = true\n\
             max_in_flight = {MAX_IN_FLIGHT}\n\n\
             [[subscriptions]]\nid = \"orders-all\"\ntable = \"orders\"\n\
             events = [\"INSERT\", \"UPDATE\", \"DELETE\"]\nurl = \"{url}\"\nsecret = \"s\"\n{extra}\n",
            pg.url(db)
        ),
    )?;
    Ok(file.into_temp_path())
}

/// walhook on `config`, its log in `$TMPDIR/walhook-e2e-<label>.log`.
fn spawn_e2e(config: &std::path::Path, label: &str) -> anyhow::Result<Spawned> {
    let log = std::env::temp_dir().join(format!("walhook-e2e-{label}.log"));
    spawn_walhook(config, &log, "E2E_WALHOOK_LOG", "bench/e2e.sh")
}

async fn bench() -> anyhow::Result<()> {
    // pg_stat_statements shows where the database's share of each delivery goes.
    let pg = PgServer::start(&[("shared_preload_libraries", "pg_stat_statements")])?;
    let state = Arc::new(Received::default());
    let url = receiver(state.clone()).await?;
    println!("postgres on port {}, receiver {url}", pg.port());
    if std::env::var_os("E2E_BATCHED_ONLY").is_some() {
        let b = w1_batched(&pg, &state, &url).await?;
        println!(
            "walhook e2e, batch.max_events = 100: {:.2} s ({:.0} events/s, {} requests)",
            b.secs, b.rate, b.requests
        );
        println!("{}", b.cpu);
        return Ok(());
    }
    if std::env::var_os("E2E_LATENCY_ONLY").is_some() {
        let (lat5, lat20, hwm2) = latency_phase(&pg, &state, &url).await?;
        print_latency(&[&lat5, &lat20], hwm2);
        return Ok(());
    }

    // 1. Throughput on W1.
    let db = setup_db(&pg, &["walhook", "recv"])?;
    let t = Instant::now();
    psql_file(&pg, &db, &w1_workload())?;
    let end = pg.psql(&db, "SELECT pg_current_wal_lsn()")?;
    println!(
        "W1 workload: {W1_CHANGES} changes in {:.1} s, end LSN {end}",
        t.elapsed().as_secs_f64()
    );
    let recv = time_recvlogical(&pg, &db, "recv", &end)?;
    let recv_rate = W1_CHANGES as f64 / recv.as_secs_f64();
    println!(
        "pg_recvlogical: {:.2} s, {recv_rate:.0} changes/s",
        recv.as_secs_f64()
    );
    pg.psql(&db, "SELECT pg_drop_replication_slot('recv')")?;

    pg.psql(
        &db,
        "CREATE EXTENSION pg_stat_statements; SELECT pg_stat_statements_reset()",
    )?;
    let cfg = config(&pg, &db, "walhook", &url, "")?;
    let cpu_before = cpu_snapshot();
    let start = Instant::now();
    let child = spawn_e2e(&cfg, "w1")?;
    let pid = child.id();
    let mut peak_rss = 0;
    let mut received_all = None;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak_rss = peak_rss.max(proc_kib(pid, "VmRSS:").unwrap_or(0));
        let n = state.events.load(Ordering::Relaxed) as i64;
        if n >= W1_CHANGES && received_all.is_none() {
            received_all = Some(start.elapsed());
        }
        if received_all.is_some() {
            let left = pg.psql(&db, &undelivered_sql("true"))?;
            if left == "0" {
                break;
            }
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(900),
            "not delivered after 900 s ({n} received)"
        );
    }
    let e2e = start.elapsed();
    let cpu_after = cpu_snapshot();
    let cpu_lines = cpu_top(&cpu_before, &cpu_after, 8);
    let cpu_split = cpu_per_event(
        &cpu_before,
        &cpu_after,
        pid,
        postmaster_pid(&pg)?,
        W1_CHANGES as u64,
    );
    let delivered = pg.psql(&db, "SELECT count(*) FROM walhook.deliveries")?;
    let attempts = pg.psql(&db, "SELECT count(*) FROM walhook.all_attempts")?;
    let hwm = stop_walhook(child)?.max(peak_rss);
    let e2e_rate = W1_CHANGES as f64 / e2e.as_secs_f64();
    println!(
        "walhook e2e: {:.2} s ({e2e_rate:.0} changes/s); receiver had all at {:.2} s; \
         {delivered} deliveries, {attempts} attempts, {} requests received; walhook peak RSS \
         {:.1} MiB",
        e2e.as_secs_f64(),
        received_all.unwrap_or_default().as_secs_f64(),
        state.count.load(Ordering::Relaxed),
        hwm as f64 / 1024.0
    );

    println!("CPU time during the e2e run (utime+stime, top processes):");
    for l in &cpu_lines {
        println!("  {l}");
    }
    println!("{cpu_split}");
    println!("statements by server time (pg_stat_statements):");
    println!(
        "{}",
        pg.psql(
            &db,
            "SELECT format('  %8s ms %8s calls %8s rows %7s us/row  %s', round(total_exec_time), calls,
                    rows, round((1000 * total_exec_time / greatest(rows, 1))::numeric, 1),
                    left(regexp_replace(query, '\\s+', ' ', 'g'), 40) || ' … ' || right(regexp_replace(query, '\\s+', ' ', 'g'), 45))
             FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12"
        )?
    );

    // 1b. The same with batches of up to 100 events.
    let batched = w1_batched(&pg, &state, &url).await?;
    println!(
        "walhook e2e, batch.max_events = 100: {:.2} s ({:.0} events/s, {} requests); unbatched {e2e_rate:.0} events/s",
        batched.secs, batched.rate, batched.requests
    );
    println!("{}", batched.cpu);
    if std::env::var_os("E2E_W1_ONLY").is_some() {
        println!("\n| measure | value |");
        println!("|---|---|");
        println!("| W1 pg_recvlogical (the limit) | {recv_rate:.0} changes/s |");
        println!("| W1 end to end, max_in_flight {MAX_IN_FLIGHT}, one event per request | {e2e_rate:.0} events/s ({:.2} s) |", e2e.as_secs_f64());
        println!(
            "| W1 end to end, batch.max_events = 100 | {:.0} events/s ({:.2} s, {} requests) |",
            batched.rate, batched.secs, batched.requests
        );
        return Ok(());
    }

    // 2. The delivery limit: the same number of equally sized signed bodies (W1's own payloads,
    //    read back from the outbox), to the same receiver, over the same number of connections.
    let bodies: Vec<String> = pg
        .psql(
            &db,
            "SELECT payload FROM walhook.deliveries ORDER BY id LIMIT 3000",
        )?
        .lines()
        .map(str::to_string)
        .collect();
    anyhow::ensure!(!bodies.is_empty(), "no payloads in the outbox to replay");
    let avg_body = bodies.iter().map(String::len).sum::<usize>() / bodies.len();
    state.count.store(0, Ordering::Relaxed);
    let bare =
        bare_http::post_all(&url, Arc::new(bodies), W1_CHANGES as usize, MAX_IN_FLIGHT).await?;
    anyhow::ensure!(
        state.count.load(Ordering::Relaxed) == W1_CHANGES as u64,
        "bare HTTP: the receiver did not get every request"
    );
    let bare_rate = W1_CHANGES as f64 / bare.as_secs_f64();
    println!(
        "bare HTTP/1.1 client: {W1_CHANGES} signed bodies (avg {avg_body} B) over {MAX_IN_FLIGHT} connections in {:.2} s, {bare_rate:.0}/s",
        bare.as_secs_f64()
    );

    // 3. Latency at steady rates, on a server with nothing left of the runs above.
    drop_database(&pg, &db)?;
    let (lat5, lat20, hwm2) = latency_phase(&pg, &state, &url).await?;

    println!("\n| measure | value |");
    println!("|---|---|");
    println!("| W1 pg_recvlogical (the limit) | {recv_rate:.0} changes/s |");
    println!(
        "| W1 end to end (WAL → 2xx → marked delivered), max_in_flight {MAX_IN_FLIGHT} | {e2e_rate:.0} changes/s ({:.2} s) |",
        e2e.as_secs_f64()
    );
    println!(
        "| W1 end to end, batch.max_events = 100 | {:.0} events/s ({:.2} s, {} requests) |",
        batched.rate, batched.secs, batched.requests
    );
    println!(
        "| ratio end to end / pg_recvlogical | {:.2} |",
        e2e_rate / recv_rate
    );
    println!(
        "| walhook peak RSS during W1 e2e (VmHWM) | {:.1} MiB |",
        hwm as f64 / 1024.0
    );
    println!(
        "| bare HTTP/1.1 client, same bodies, receiver and connections (the delivery limit) | {bare_rate:.0} requests/s |"
    );
    println!(
        "| ratio end to end / bare HTTP | {:.2} |",
        e2e_rate / bare_rate
    );
    print_latency(&[&lat5, &lat20], hwm2);
    drop(pg);
    Ok(())
}

/// Step 3: a fresh database and walhook, caught up, then the 5k/s and 20k/s runs; returns both
/// and walhook's peak RSS.
async fn latency_phase(
    pg: &PgServer,
    state: &Received,
    url: &str,
) -> anyhow::Result<(Latency, Latency, u64)> {
    let db2 = pg.create_database()?;
    pg.psql(
        &db2,
        "CREATE TABLE orders (id bigserial PRIMARY KEY, total numeric(12,2), status text,
             customer_id text, created_at timestamptz DEFAULT now(), meta jsonb);
         ALTER TABLE orders REPLICA IDENTITY FULL;",
    )?;
    warm_wal(pg, &db2)?;
    let cfg2 = config(pg, &db2, "walhook_lat", url, "")?;
    let child2 = spawn_e2e(&cfg2, "latency")?;
    let (client, conn) = tokio_postgres::connect(&pg.url(&db2), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let t = Instant::now();
    loop {
        let n: i64 = client
            .query_one(
                &walhook::embedded_pg::slot_streaming_sql("walhook_lat"),
                &[],
            )
            .await?
            .get(0);
        if n == 1 {
            break;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(30), "slot not streaming");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // walhook is stopped whether the runs succeed or not (a failed run left it running).
    let runs = async {
        warm_up(&client, state, 50, Duration::from_secs(2)).await?;
        let lat5 = latency_run(&client, state, 50).await?;
        let lat20 = latency_run(&client, state, 200).await?;
        anyhow::Ok((lat5, lat20))
    }
    .await;
    let hwm2 = stop_walhook(child2)?;
    let (lat5, lat20) = runs?;
    Ok((lat5, lat20, hwm2))
}

/// The generator: commits `per_tick` rows of `status` every 10 ms (a late tick is made up at
/// once) for `secs`; returns the number of rows committed.
async fn generate(
    client: &tokio_postgres::Client,
    per_tick: u64,
    status: &str,
    secs: Duration,
) -> anyhow::Result<u64> {
    let insert = client
        .prepare(&format!(
            "INSERT INTO orders (total, status, customer_id, meta)
             SELECT g, '{status}', 'cust-' || g, jsonb_build_object('g', g) FROM generate_series(1, {per_tick}) g"
        ))
        .await?;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < secs {
        tick.tick().await;
        client.execute(&insert, &[]).await?;
        sent += per_tick;
    }
    Ok(sent)
}

/// Commits `per_tick` rows every 10 ms for `secs`, unmeasured, and waits until all of them
/// arrived: the first second after walhook starts streaming carries one-off costs (the first
/// claims before the pump takes rows from memory, plans made before the outbox has statistics,
/// connections warming up) that are not the steady state the runs measure.
async fn warm_up(
    client: &tokio_postgres::Client,
    state: &Received,
    per_tick: u64,
    secs: Duration,
) -> anyhow::Result<()> {
    state.record_latency.store(false, Ordering::Relaxed);
    state.count.store(0, Ordering::Relaxed);
    let sent = generate(client, per_tick, "warm-up", secs).await?;
    let t = Instant::now();
    while state.count.load(Ordering::Relaxed) < sent {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "warm-up: {sent} rows committed, {} arrived within 60 s",
            state.count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "warm-up: {sent} changes at the same rate for {:.0} s, all arrived, not measured",
        secs.as_secs_f64()
    );
    Ok(())
}

struct Batched {
    rate: f64,
    secs: f64,
    requests: u64,
    /// Who spent the run's CPU, per event ([`cpu_per_event`]).
    cpu: String,
}

/// W1 end to end (as phase 1) on a fresh database, the subscription batching up to 100 events
/// per request; timed until the receiver has every event and the outbox shows all delivered.
async fn w1_batched(pg: &PgServer, state: &Received, url: &str) -> anyhow::Result<Batched> {
    let db = setup_db(pg, &["walhook_batch"])?;
    psql_file(pg, &db, &w1_workload())?;
    let cfg = config(
        pg,
        &db,
        "walhook_batch",
        url,
        "batch = { max_events = 100, max_wait = \"50ms\" }",
    )?;
    state.count.store(0, Ordering::Relaxed);
    state.events.store(0, Ordering::Relaxed);
    let cpu_before = cpu_snapshot();
    let start = Instant::now();
    let child = spawn_e2e(&cfg, "w1-batch")?;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = state.events.load(Ordering::Relaxed) as i64;
        if n >= W1_CHANGES {
            let left = pg.psql(&db, &undelivered_sql("true"))?;
            if left == "0" {
                break;
            }
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(900),
            "batched: not delivered after 900 s ({n} events received)"
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_per_event(
        &cpu_before,
        &cpu_snapshot(),
        child.id(),
        postmaster_pid(pg)?,
        W1_CHANGES as u64,
    );
    stop_walhook(child)?;
    drop_database(pg, &db)?;
    Ok(Batched {
        rate: W1_CHANGES as f64 / secs,
        secs,
        requests: state.count.load(Ordering::Relaxed),
        cpu,
    })
}

/// The seconds in which the arrivals slower than the run's p99 came, worst first: the tail is
/// often a few bad seconds, to be lined up with walhook's log (`vacuumed`, ...) and Postgres's.
fn print_slow_seconds(arrivals: &[(i64, u64)], p99_ms: f64) {
    let mut by_second: std::collections::BTreeMap<i64, (u64, u64)> = Default::default();
    for &(sec, lat) in arrivals {
        if lat as f64 / 1000.0 > p99_ms {
            let e = by_second.entry(sec).or_default();
            e.0 += 1;
            e.1 = e.1.max(lat);
        }
    }
    let mut worst: Vec<_> = by_second.into_iter().collect();
    worst.sort_by_key(|(_, (n, _))| std::cmp::Reverse(*n));
    let line: Vec<String> = worst
        .iter()
        .take(5)
        .map(|(sec, (n, max))| {
            let t = chrono::DateTime::from_timestamp(*sec, 0).unwrap_or_default();
            format!(
                "{} ×{n} (max {:.1} ms)",
                t.format("%H:%M:%S"),
                *max as f64 / 1000.0
            )
        })
        .collect();
    println!(
        "  arrivals slower than p99, by second (UTC): {}",
        line.join(", ")
    );
}

/// The latency rows of the results table.
fn print_latency(runs: &[&Latency], peak_rss_kib: u64) {
    for l in runs {
        println!(
            "| commit → receiver latency at {:.0} changes/s: p50 / p99 / max | {:.1} ms / {:.1} ms / {:.1} ms |",
            l.rate, l.p50, l.p99, l.max
        );
    }
    println!(
        "| walhook peak RSS during the latency run | {:.1} MiB |",
        peak_rss_kib as f64 / 1024.0
    );
}

struct Latency {
    rate: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Commits `per_tick` rows every 10 ms for 10 s and measures commit → first arrival of each
/// event id. Fails unless every change committed arrived: figures over a partial set would
/// flatter the tail.
async fn latency_run(
    client: &tokio_postgres::Client,
    state: &Received,
    per_tick: u64,
) -> anyhow::Result<Latency> {
    state.ids.lock().unwrap().clear();
    state.latencies.lock().unwrap().clear();
    state.arrived_at.lock().unwrap().clear();
    state.duplicates.store(0, Ordering::Relaxed);
    state.count.store(0, Ordering::Relaxed);
    state.record_latency.store(true, Ordering::Relaxed);
    client
        .batch_execute(
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()",
        )
        .await?;
    let gen_start = Instant::now();
    let sent = generate(client, per_tick, "new", Duration::from_secs(10)).await?;
    let gen_secs = gen_start.elapsed().as_secs_f64();
    let distinct = || state.ids.lock().unwrap().len() as u64;
    let t = Instant::now();
    while distinct() < sent && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    state.record_latency.store(false, Ordering::Relaxed);
    // Where the time goes, from the outbox: commit → stored (group commit start), stored →
    // first attempt, attempt → recorded.
    let since = client
        .query_one(
            "SELECT now() - make_interval(secs => $1)",
            &[&(gen_start.elapsed().as_secs_f64() + 1.0)],
        )
        .await?;
    let since: std::time::SystemTime = since.get(0);
    for row in client
        .query(
            "WITH d AS (
                 SELECT 1000 * extract(epoch FROM d.created_at - (d.payload::jsonb->>'timestamp')::timestamptz) AS stored,
                        1000 * extract(epoch FROM d.last_attempt_at - d.created_at) AS queued,
                        1000 * extract(epoch FROM d.finished_at - d.last_attempt_at) AS recorded
                 -- The receiver answers 2xx at once, so a delivery's last attempt is its first
                 -- (redeliveries are counted below): no join with all_attempts, which would
                 -- read each row's run (sql/017) three more times.
                 FROM walhook.delivery_states d
                 WHERE d.created_at >= $1 AND d.status = 'delivered')
             SELECT m, percentile_cont(0.5) WITHIN GROUP (ORDER BY v), percentile_cont(0.99) WITHIN GROUP (ORDER BY v)
             FROM d, LATERAL (VALUES ('commit → stored', stored), ('stored → attempt', queued), ('attempt → recorded', recorded)) x(m, v)
             GROUP BY m ORDER BY m",
            &[&since],
        )
        .await?
    {
        let (m, p50, p99): (String, f64, f64) = (row.get(0), row.get(1), row.get(2));
        println!("  {m}: p50 {p50:.1} ms, p99 {p99:.1} ms");
    }
    // Where the database's time went during this run (walhook's statements and the generator's).
    for row in client
        .query(
            "SELECT format('  %8s ms %8s calls %8s rows %7s us/row  %s', round(total_exec_time), calls,
                    rows, round((1000 * total_exec_time / greatest(rows, 1))::numeric, 1),
                    left(regexp_replace(query, '\\s+', ' ', 'g'), 40) || ' … ' || right(regexp_replace(query, '\\s+', ' ', 'g'), 45))
             FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'
             ORDER BY total_exec_time DESC LIMIT 5",
            &[],
        )
        .await?
    {
        println!("{}", row.get::<_, String>(0));
    }
    let mut lat = state.latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let received = distinct();
    let rate = sent as f64 / gen_secs;
    println!(
        "latency run: {sent} changes in {gen_secs:.1} s ({rate:.0}/s), {received} distinct event ids \
         received, {} redeliveries",
        state.duplicates.load(Ordering::Relaxed)
    );
    anyhow::ensure!(
        received == sent && lat.len() as u64 == sent,
        "latency run: {sent} changes committed but {received} distinct event ids arrived within \
         60 s of the last commit; the latency figures would describe only part of them"
    );
    print_slow_seconds(&state.arrived_at.lock().unwrap(), percentile_ms(&lat, 0.99));
    Ok(Latency {
        rate,
        p50: percentile_ms(&lat, 0.50),
        p99: percentile_ms(&lat, 0.99),
        max: percentile_ms(&lat, 1.0),
    })
}
