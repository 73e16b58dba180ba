//! Scale benchmark (issue #11): many subscriptions, bad endpoints next to good ones, fan-out.
//!
//! Every scenario runs `target/release/walhook run` against an embedded Postgres, with all
//! receivers in this process on 127.0.0.1, `[delivery] allow_http`, `allow_private_networks`,
//! default `pool_size`, default `[outbox]`. walhook's stderr goes to
//! `$TMPDIR/walhook-scale-<scenario>.log`. While walhook runs, its Postgres connections are
//! sampled every 100 ms two ways: sessions in `pg_stat_activity` whose `application_name` starts
//! with `walhook` (walhook sets it unless the URL does), and TCP sockets of walhook's process
//! connected to Postgres's port; the maximum of each is printed. RSS is the process's VmHWM.
//!
//! 1. 10,000 subscriptions on one table: 9,000 from config.toml, 1,000 created through
//!    `POST /api/rest/_webhooks`. Once walhook streams and `walhook.delivery_owners` has all
//!    10,000, ONE INSERT; time from its commit until the receiver has 10,000 distinct
//!    `X-Walhook-Delivery-Id`s on 10,000 distinct paths (one per subscription). Then, with every
//!    pump at rest, walhook's and the Postgres server's CPU over 10 s (after 5 s to settle), as
//!    a share of one core.
//! 2. 1,000 subscriptions on one table: 800 healthy (filter `shard = i`), 100 dead (`side = j`;
//!    50 at a port with nothing listening, 50 at a listener that accepts and never answers), 100
//!    slow (`side = j`, the receiver answers after 2 s). A generator commits 10 rows every 10 ms
//!    for 20 s (1k changes/s); each row goes to exactly one healthy subscription and every 10th
//!    row also to one dead and one slow subscription. Commit (payload `timestamp`) → arrival
//!    p50/p99/max over the healthy deliveries.
//! 3. Fan-out: 100 subscriptions on W1 at 1/10 scale (10 transactions × 1,000 inserts, then the
//!    same updates and deletes: 30,000 changes, 3,000,000 deliveries), written before walhook
//!    starts; deliveries/s from process start until every delivery is received and marked
//!    delivered; outbox bytes (deliveries + attempts, tables and indexes) per change.
//!
//! Fails (exit 1) when a scenario loses a delivery: fewer distinct deliveries arrived than were
//! due (the dead endpoints excepted), within a deadline. `SCALE_ONLY=1,3` runs a subset;
//! `SCALE_FANOUT_TXNS` changes scenario 3's size (default 10).
//!
//! Needs the release binary: run through `bash bench/scale.sh`.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walhook::embedded_pg::PgServer;

mod support;
use support::scale_rx::{self, Rx};
use support::*;

const API_TOKEN: &str = "scale-bench-token";

fn main() {
    support::run("scale", bench());
}

fn wanted(n: u32) -> bool {
    match std::env::var("SCALE_ONLY") {
        Ok(s) if !s.trim().is_empty() => s.split(',').any(|p| p.trim() == n.to_string()),
        _ => true,
    }
}

async fn bench() -> anyhow::Result<()> {
    let pg = PgServer::start(&[("max_connections", "200")])?;
    let fast = Arc::new(Rx::default());
    let fast_url = scale_rx::receiver(fast.clone(), Duration::ZERO).await?;
    println!("postgres on port {}, fast receiver {fast_url}", pg.port());
    let mut rows: Vec<(String, String)> = Vec::new();
    if wanted(1) {
        rows.extend(many_subscriptions(&pg, &fast, &fast_url).await?);
    }
    if wanted(2) {
        rows.extend(bad_endpoints(&pg, &fast, &fast_url).await?);
    }
    if wanted(3) {
        rows.extend(fan_out(&pg, &fast, &fast_url).await?);
    }
    println!("\n| measure | value |");
    println!("|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    Ok(())
}

/// The config for one scenario: one slot per scenario (slots are cluster-wide names).
fn config(
    pg: &PgServer,
    db: &str,
    slot: &str,
    api_port: Option<u16>,
    subs: &str,
) -> anyhow::Result<tempfile::TempPath> {
    let file = tempfile::NamedTempFile::new()?;
    let api = api_port
        .map(|p| format!("[api]\nlisten = \"127.0.0.1:{p}\"\ntoken = \"{API_TOKEN}\"\n\n"))
        .unwrap_or_default();
    std::fs::write(
        file.path(),
        format!(
            "[source]\nurl = \"{}\"\nslot = \"{slot}\"\npublication = \"walhook\"\n\n\
             [project]\nid = \"bench\"\nenvironment = \"master\"\n\n\
             [delivery]\nallow_http = true\nallow_private_networks = true\n\n{api}{subs}",
            pg.url(db)
        ),
    )?;
    Ok(file.into_temp_path())
}

fn sub_toml(id: &str, table: &str, events: &str, url: &str, filter: &str) -> String {
    let filter = if filter.is_empty() {
        String::new()
    } else {
        format!("filter = {{ {filter} }}\n")
    };
    format!(
        "[[subscriptions]]\nid = \"{id}\"\ntable = \"{table}\"\nevents = [{events}]\n\
         url = \"{url}\"\nsecret = \"s\"\n{filter}\n"
    )
}

/// walhook's process; killed if the bench fails before stopping it.
struct Walhook {
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Walhook {
    fn spawn(config: &std::path::Path, label: &str) -> anyhow::Result<Walhook> {
        let bin = walhook_binary();
        anyhow::ensure!(
            bin.is_file(),
            "{} not found; build it with `cargo build --release` (bench/scale.sh does)",
            bin.display()
        );
        let log = std::env::temp_dir().join(format!("walhook-scale-{label}.log"));
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .env("WALHOOK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        println!("  walhook pid {}, log {}", child.id(), log.display());
        Ok(Walhook {
            child: Some(child),
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                anyhow::bail!(
                    "walhook exited ({status}); see {}:\n{}",
                    self.log.display(),
                    tail(&self.log, 20)
                );
            }
        }
        Ok(())
    }

    /// SIGTERM, wait; returns VmHWM in KiB (read before the signal).
    fn stop(mut self) -> anyhow::Result<u64> {
        let mut child = self.child.take().expect("running");
        let hwm = proc_kib(child.id(), "VmHWM:").unwrap_or(0);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while child.try_wait()?.is_none() {
            if t.elapsed() > Duration::from_secs(30) {
                println!("  walhook did not stop within 30 s of SIGTERM; killed");
                child.kill()?;
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(hwm)
    }
}

impl Drop for Walhook {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            eprintln!("walhook killed; its log: {}", self.log.display());
        }
    }
}

fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Samples walhook's Postgres connections every 100 ms until dropped.
struct ConnMonitor {
    by_app_name: Arc<AtomicU64>,
    by_socket: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl ConnMonitor {
    async fn start(pg: &PgServer, pid: u32) -> anyhow::Result<ConnMonitor> {
        let (client, conn) =
            tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let m = ConnMonitor {
            by_app_name: Arc::default(),
            by_socket: Arc::default(),
            stop: Arc::default(),
        };
        let (a, s, stop, port) = (
            m.by_app_name.clone(),
            m.by_socket.clone(),
            m.stop.clone(),
            pg.port(),
        );
        tokio::spawn(async move {
            let mut seen_detail = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(row) = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'walhook%'",
                        &[],
                    )
                    .await
                {
                    a.fetch_max(row.get::<_, i64>(0) as u64, Ordering::Relaxed);
                }
                let ports = pg_sockets(pid, port);
                s.fetch_max(ports.len() as u64, Ordering::Relaxed);
                if ports.len() as u64 > a.load(Ordering::Relaxed) {
                    // Which sessions are these? (Printed once per new maximum.)
                    if let Ok(row) = client
                        .query_one(
                            "SELECT count(*), string_agg(DISTINCT format('%s/%s', coalesce(application_name, ''),
                                    backend_type), ', ')
                             FROM pg_stat_activity WHERE client_port = ANY($1)",
                            &[&ports],
                        )
                        .await
                    {
                        let n: i64 = row.get(0);
                        if n as u64 > seen_detail {
                            seen_detail = n as u64;
                            println!(
                                "  (walhook's sockets to Postgres: {}; their sessions: {n}, as {})",
                                ports.len(),
                                row.get::<_, Option<String>>(1).unwrap_or_default()
                            );
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(m)
    }

    fn max(&self) -> (u64, u64) {
        (
            self.by_app_name.load(Ordering::Relaxed),
            self.by_socket.load(Ordering::Relaxed),
        )
    }
}

impl Drop for ConnMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Local ports of the established TCP sockets of process `pid` whose remote port is `port`.
fn pg_sockets(pid: u32, port: u16) -> Vec<i32> {
    let mut ports = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return ports;
    };
    let inodes: std::collections::HashSet<String> = fds
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let s = l.to_string_lossy().to_string();
            s.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(loc), Some(rem), Some(state), Some(inode)) =
                (f.get(1), f.get(2), f.get(3), f.get(9))
            else {
                continue;
            };
            let rport = rem
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            let lport = loc
                .rsplit_once(':')
                .and_then(|(_, p)| i32::from_str_radix(p, 16).ok());
            if rport == Some(port) && *state == "01" && inodes.contains(*inode) {
                ports.extend(lport);
            }
        }
    }
    ports
}

async fn connect(pg: &PgServer, db: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(&pg.url(db), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Polls `sql` (one bigint) until it reaches `want`; fails naming `what` after `limit`.
async fn wait_count(
    client: &tokio_postgres::Client,
    w: &mut Walhook,
    sql: &str,
    want: i64,
    limit: Duration,
    what: &str,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut last = -1;
    loop {
        w.alive()?;
        if let Ok(row) = client.query_one(sql, &[]).await {
            last = row.get::<_, i64>(0);
            if last >= want {
                return Ok(t.elapsed());
            }
        }
        anyhow::ensure!(
            t.elapsed() < limit,
            "{what}: {last} of {want} after {} s (walhook log: {})",
            limit.as_secs(),
            w.log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_streaming(
    client: &tokio_postgres::Client,
    w: &mut Walhook,
    slot: &str,
) -> anyhow::Result<Duration> {
    wait_count(
        client,
        w,
        &walhook::embedded_pg::slot_streaming_sql(slot),
        1,
        Duration::from_secs(120),
        "slot streaming",
    )
    .await
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// CPU seconds used between two snapshots by `walhook` and by the Postgres server whose
/// postmaster is `postmaster` (it and its children).
fn cpu_of(
    before: &std::collections::HashMap<u32, (u64, u32, String)>,
    after: &std::collections::HashMap<u32, (u64, u32, String)>,
    walhook: u32,
    postmaster: u32,
) -> (f64, f64) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let used = |p: &u32, t: u64| t.saturating_sub(before.get(p).map_or(0, |b| b.0)) as f64 / ticks;
    let mut out = (0.0, 0.0);
    for (p, (t, ppid, _)) in after {
        if *p == walhook {
            out.0 += used(p, *t);
        } else if *p == postmaster || *ppid == postmaster {
            out.1 += used(p, *t);
        }
    }
    out
}

/// Scenario 1: 10,000 subscriptions (9,000 config.toml, 1,000 API), one INSERT.
async fn many_subscriptions(
    pg: &PgServer,
    rx: &Rx,
    rx_url: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    const CONFIG_SUBS: usize = 9_000;
    const API_SUBS: usize = 1_000;
    const TOTAL: usize = CONFIG_SUBS + API_SUBS;
    println!("\n1. {TOTAL} subscriptions on one table ({CONFIG_SUBS} config.toml, {API_SUBS} API)");
    let db = pg.create_database()?;
    pg.psql(&db, "CREATE TABLE s1 (id bigserial PRIMARY KEY, v text)")?;
    let mut subs = String::new();
    for i in 0..CONFIG_SUBS {
        subs.push_str(&sub_toml(
            &format!("c{i}"),
            "s1",
            "\"INSERT\"",
            &format!("{rx_url}/c/{i}"),
            "",
        ));
    }
    let api_port = scale_rx::free_port()?;
    let cfg = config(pg, &db, "scale1", Some(api_port), &subs)?;
    let client = connect(pg, &db).await?;
    let start = Instant::now();
    let mut w = Walhook::spawn(&cfg, "1-many")?;
    let mon = ConnMonitor::start(pg, w.pid()).await?;
    let streaming = wait_streaming(&client, &mut w, "scale1").await?;
    println!("  streaming {:.1} s after start", streaming.as_secs_f64());

    // The API's subscriptions, 8 requests at a time.
    let api = format!("127.0.0.1:{api_port}");
    let t = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (api, next, rx_url) = (api.clone(), next.clone(), rx_url.to_string());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= API_SUBS {
                    return anyhow::Ok(());
                }
                let body = serde_json::json!({
                    "projectId": "bench", "environment": "master", "table": "s1",
                    "events": ["INSERT"], "url": format!("{rx_url}/a/{i}"), "secret": "s",
                    "active": true,
                })
                .to_string();
                let auth = format!("Bearer {API_TOKEN}");
                let (status, resp) = scale_rx::http(
                    &api,
                    "POST",
                    "/api/rest/_webhooks",
                    &[
                        ("Authorization", &auth),
                        ("X-Project-ID", "bench"),
                        ("environment", "master"),
                        ("Content-Type", "application/json"),
                    ],
                    &body,
                )
                .await?;
                anyhow::ensure!(
                    status == 201,
                    "POST /api/rest/_webhooks #{i}: {status} {resp}"
                );
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let api_secs = t.elapsed().as_secs_f64();
    println!("  {API_SUBS} API creates in {api_secs:.1} s");
    let owned = wait_count(
        &client,
        &mut w,
        "SELECT count(*) FROM walhook.delivery_owners",
        TOTAL as i64,
        Duration::from_secs(300),
        "subscriptions owned (walhook.delivery_owners)",
    )
    .await?;
    let api_in_db: i64 = client
        .query_one(
            "SELECT count(*) FROM walhook.subscriptions WHERE source = 'api'",
            &[],
        )
        .await?
        .get(0);
    anyhow::ensure!(
        api_in_db == API_SUBS as i64,
        "{api_in_db} API subscriptions stored"
    );
    println!(
        "  all {TOTAL} owned {:.1} s after the API creates; {:.1} s after start",
        owned.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    // The API answers 201 before ingest's routing includes the new subscription: a change
    // committed in between is not sent to it. So wait for routing to have all of them (its log
    // line; nothing else shows it) and print how long that took after the last 201.
    let want = format!("routing updated subscriptions={TOTAL}");
    let t_routing = Instant::now();
    while !std::fs::read_to_string(&w.log)?.contains(&want) {
        w.alive()?;
        anyhow::ensure!(
            t_routing.elapsed() < Duration::from_secs(120),
            "ingest routing never logged `{want}` (walhook log: {})",
            w.log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let routing_lag = t.elapsed().as_secs_f64() - api_secs;
    println!("  ingest routing has all {TOTAL} {routing_lag:.1} s after the last API 201");
    tokio::time::sleep(Duration::from_millis(500)).await;

    rx.reset(scale_rx::IDS);
    client
        .execute("INSERT INTO s1 (v) VALUES ('one')", &[])
        .await?;
    let t = Instant::now();
    while rx.distinct_ids() < TOTAL && t.elapsed() < Duration::from_secs(120) {
        w.alive()?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_in = t.elapsed();
    let distinct = rx.distinct_ids();
    let paths = rx.paths.lock().unwrap().len();
    let (conns, sockets) = mon.max();
    // Idle: every pump has sent its row and rests. CPU of walhook and of the whole Postgres
    // server over 10 s, after 5 s to settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let postmaster = postmaster_pid(pg)?;
    let before = cpu_snapshot();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (idle_walhook, idle_pg) = cpu_of(&before, &cpu_snapshot(), w.pid(), postmaster);
    println!(
        "  idle for 10 s after that: walhook {:.0}% of a core, Postgres {:.0}% of a core",
        idle_walhook * 10.0,
        idle_pg * 10.0
    );
    let rss = w.stop()?;
    drop(mon);
    println!(
        "  one INSERT: {distinct} distinct delivery ids on {paths} paths in {:.2} s; {} requests, \
         {} duplicates; max Postgres connections {conns} (pg_stat_activity) / {sockets} \
         (sockets); VmHWM {}",
        all_in.as_secs_f64(),
        rx.count.load(Ordering::Relaxed),
        rx.duplicates.load(Ordering::Relaxed),
        mib(rss)
    );
    anyhow::ensure!(
        distinct == TOTAL && paths == TOTAL,
        "scenario 1 lost deliveries: {distinct} distinct delivery ids on {paths} paths of \
         {TOTAL} within 120 s"
    );
    Ok(vec![
        (
            format!("1. {TOTAL} subs ({CONFIG_SUBS} config + {API_SUBS} API): one INSERT → all {TOTAL} received (target ≤ 5 s)"),
            format!("{:.2} s", all_in.as_secs_f64()),
        ),
        (
            "1. walhook max Postgres connections, pg_stat_activity / own sockets (target ≤ 20)".into(),
            format!("{conns} / {sockets}"),
        ),
        ("1. walhook RSS, VmHWM (target ≤ 200 MB)".into(), mib(rss)),
        (
            "1. idle afterwards, CPU: walhook / Postgres (share of one core)".into(),
            format!("{:.0}% / {:.0}%", idle_walhook * 10.0, idle_pg * 10.0),
        ),
        (
            "1. last API 201 → ingest routing includes every API subscription (changes committed in between are not sent to them)".into(),
            format!("{routing_lag:.1} s"),
        ),
        (
            "1. start → all owned; API creates".into(),
            format!(
                "{:.1} s; {API_SUBS} in {api_secs:.1} s",
                streaming.as_secs_f64() + api_secs + owned.as_secs_f64()
            ),
        ),
    ])
}

/// Scenario 2: 800 healthy, 100 dead, 100 slow subscriptions; 1k changes/s for 20 s.
async fn bad_endpoints(
    pg: &PgServer,
    fast: &Rx,
    fast_url: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    const HEALTHY: i64 = 800;
    const DEAD: i64 = 100;
    const SLOW: i64 = 100;
    const PER_TICK: i64 = 10;
    const SECS: u64 = 20;
    println!(
        "\n2. {} subscriptions: {HEALTHY} healthy, {DEAD} dead, {SLOW} answering after 2 s; \
         {PER_TICK} rows every 10 ms for {SECS} s",
        HEALTHY + DEAD + SLOW
    );
    let slow = Arc::new(Rx::default());
    let slow_url = scale_rx::receiver(slow.clone(), Duration::from_secs(2)).await?;
    let (hole_url, hole_accepted) = scale_rx::black_hole().await?;
    let refused = scale_rx::refused_url()?;
    let db = pg.create_database()?;
    pg.psql(
        &db,
        "CREATE TABLE s2 (id bigserial PRIMARY KEY, shard int NOT NULL, side int NOT NULL,
                          note text DEFAULT 'scale bench row')",
    )?;
    let mut subs = String::new();
    for i in 0..HEALTHY {
        subs.push_str(&sub_toml(
            &format!("h{i}"),
            "s2",
            "\"INSERT\"",
            &format!("{fast_url}/h/{i}"),
            &format!("shard = {i}"),
        ));
    }
    for j in 0..DEAD {
        let base = if j < DEAD / 2 { &refused } else { &hole_url };
        subs.push_str(&sub_toml(
            &format!("d{j}"),
            "s2",
            "\"INSERT\"",
            &format!("{base}/d/{j}"),
            &format!("side = {j}"),
        ));
    }
    for j in 0..SLOW {
        subs.push_str(&sub_toml(
            &format!("w{j}"),
            "s2",
            "\"INSERT\"",
            &format!("{slow_url}/w/{j}"),
            &format!("side = {j}"),
        ));
    }
    let cfg = config(pg, &db, "scale2", None, &subs)?;
    let client = connect(pg, &db).await?;
    let mut w = Walhook::spawn(&cfg, "2-bad-endpoints")?;
    let mon = ConnMonitor::start(pg, w.pid()).await?;
    wait_streaming(&client, &mut w, "scale2").await?;
    wait_count(
        &client,
        &mut w,
        "SELECT count(*) FROM walhook.delivery_owners",
        HEALTHY + DEAD + SLOW,
        Duration::from_secs(120),
        "subscriptions owned (walhook.delivery_owners)",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    fast.reset(scale_rx::LATENCY);
    slow.reset(scale_rx::LATENCY);
    let insert = client
        .prepare(
            "INSERT INTO s2 (shard, side)
             SELECT (g % 800)::int, CASE WHEN g % 10 = 0 THEN ((g / 10) % 100)::int ELSE -1 END
             FROM generate_series($1::bigint, $2::bigint) g",
        )
        .await?;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let gen_start = Instant::now();
    let mut sent = 0i64;
    while gen_start.elapsed() < Duration::from_secs(SECS) {
        tick.tick().await;
        client
            .execute(&insert, &[&(sent + 1), &(sent + PER_TICK)])
            .await?;
        sent += PER_TICK;
    }
    let gen_secs = gen_start.elapsed().as_secs_f64();
    let rate = sent as f64 / gen_secs;
    let to_side = sent / 10;
    let t = Instant::now();
    while (fast.distinct_events() < sent as usize || slow.distinct_events() < to_side as usize)
        && t.elapsed() < Duration::from_secs(90)
    {
        w.alive()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let healthy_in = fast.distinct_events();
    let healthy_ids = fast.distinct_ids();
    let slow_in = slow.distinct_events();
    let mut lat: Vec<u64> = fast.latencies.lock().unwrap().values().copied().collect();
    lat.sort_unstable();
    let mut slow_lat: Vec<u64> = slow.latencies.lock().unwrap().values().copied().collect();
    slow_lat.sort_unstable();
    let dead_rows = client
        .query(
            "SELECT status, count(*), sum(attempts) FROM walhook.delivery_states
             WHERE subscription_id LIKE 'd%' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            format!(
                "{} {} ({} attempts)",
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, Option<i64>>(2).unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let (conns, sockets) = mon.max();
    let rss = w.stop()?;
    drop(mon);
    println!(
        "  generator: {sent} changes in {gen_secs:.1} s ({rate:.0}/s); healthy: {healthy_in} distinct \
         event ids ({healthy_ids} delivery ids, {} requests, {} duplicates, {} unreadable bodies); \
         slow: {slow_in} of {to_side}; dead endpoints' outbox rows: {dead_rows}; black hole accepted \
         {} connections; max Postgres connections {conns} / {sockets} (sockets); VmHWM {}",
        fast.count.load(Ordering::Relaxed),
        fast.duplicates.load(Ordering::Relaxed),
        fast.bad_bodies.load(Ordering::Relaxed),
        hole_accepted.load(Ordering::Relaxed),
        mib(rss)
    );
    fast.reset(scale_rx::COUNT);
    anyhow::ensure!(
        healthy_in == sent as usize && lat.len() == sent as usize,
        "scenario 2 lost deliveries: {sent} changes committed for the healthy subscriptions but \
         {healthy_in} distinct event ids arrived within 90 s of the last commit"
    );
    anyhow::ensure!(
        slow_in == to_side as usize,
        "scenario 2 lost deliveries: {to_side} changes for the slow subscriptions but {slow_in} \
         arrived within 90 s of the last commit"
    );
    Ok(vec![
        (
            format!("2. healthy {HEALTHY} of 1,000 subs at {rate:.0} changes/s, commit → receiver p50 / p99 / max (target p99 ≤ 100 ms)"),
            format!(
                "{:.1} ms / {:.1} ms / {:.1} ms",
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                percentile(&lat, 1.0)
            ),
        ),
        (
            "2. received / sent: healthy; slow (2 s) subs".into(),
            format!("{healthy_in} / {sent}; {slow_in} / {to_side}"),
        ),
        (
            "2. slow subs commit → receiver p50 / max".into(),
            format!(
                "{:.0} ms / {:.0} ms",
                percentile(&slow_lat, 0.5),
                percentile(&slow_lat, 1.0)
            ),
        ),
        (
            "2. walhook max Postgres connections (pg_stat_activity / sockets); VmHWM".into(),
            format!("{conns} / {sockets}; {}", mib(rss)),
        ),
    ])
}

/// Scenario 3: 100 subscriptions on W1 at 1/10 scale.
async fn fan_out(pg: &PgServer, rx: &Rx, rx_url: &str) -> anyhow::Result<Vec<(String, String)>> {
    const SUBS: i64 = 100;
    let txns: usize = std::env::var("SCALE_FANOUT_TXNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let changes = (3 * txns * ROWS_PER_TXN) as i64;
    let deliveries = changes * SUBS;
    println!("\n3. fan-out: {SUBS} subscriptions × {changes} changes = {deliveries} deliveries");
    let db = setup_db(pg, &["scale3"])?;
    let t = Instant::now();
    psql_file(pg, &db, &w1_workload_n(txns))?;
    println!("  workload written in {:.1} s", t.elapsed().as_secs_f64());
    let mut subs = String::new();
    for i in 0..SUBS {
        subs.push_str(&sub_toml(
            &format!("f{i}"),
            "orders",
            "\"INSERT\", \"UPDATE\", \"DELETE\"",
            &format!("{rx_url}/f/{i}"),
            "",
        ));
    }
    let cfg = config(pg, &db, "scale3", None, &subs)?;
    let client = connect(pg, &db).await?;
    rx.reset(scale_rx::COUNT);
    let cpu_before = cpu_snapshot();
    let start = Instant::now();
    let mut w = Walhook::spawn(&cfg, "3-fan-out")?;
    let mon = ConnMonitor::start(pg, w.pid()).await?;
    let limit = Duration::from_secs(1800);
    let mut received_all = None;
    let mut last_report = Instant::now();
    loop {
        w.alive()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = rx.count.load(Ordering::Relaxed) as i64;
        if n >= deliveries && received_all.is_none() {
            received_all = Some(start.elapsed());
        }
        if received_all.is_some() {
            let left: i64 = client
                .query_one(&undelivered_sql("true"), &[])
                .await?
                .get(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            println!("  … {:.0} s: {n} received", start.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        anyhow::ensure!(
            start.elapsed() < limit,
            "scenario 3: {n} of {deliveries} deliveries received after {} s (walhook log: {})",
            limit.as_secs(),
            w.log.display()
        );
    }
    let elapsed = start.elapsed();
    let cpu_lines = cpu_top(&cpu_before, &cpu_snapshot(), 6);
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM walhook.deliveries),
                    (SELECT count(DISTINCT subscription_id) FROM walhook.deliveries),
                    pg_total_relation_size('walhook.deliveries'),
                    pg_total_relation_size('walhook.attempts')",
            &[],
        )
        .await?;
    let (stored, subs_seen, del_bytes, att_bytes): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let (conns, sockets) = mon.max();
    let rss = w.stop()?;
    drop(mon);
    let received = rx.count.load(Ordering::Relaxed) as i64;
    let rate = deliveries as f64 / elapsed.as_secs_f64();
    let per_change = (del_bytes + att_bytes) as f64 / changes as f64;
    println!(
        "  {received} requests received ({} beyond {deliveries}) in {:.1} s, all marked delivered \
         at {:.1} s; outbox rows {stored} for {subs_seen} subscriptions; deliveries {} + attempts \
         {}; max Postgres connections {conns} / {sockets} (sockets); VmHWM {}",
        received - deliveries,
        received_all.unwrap_or_default().as_secs_f64(),
        elapsed.as_secs_f64(),
        mib(del_bytes as u64 / 1024),
        mib(att_bytes as u64 / 1024),
        mib(rss)
    );
    println!("  CPU time during the run (utime+stime, top processes):");
    for l in &cpu_lines {
        println!("    {l}");
    }
    anyhow::ensure!(
        stored == deliveries && received >= deliveries,
        "scenario 3 lost deliveries: {stored} stored and {received} received of {deliveries}"
    );
    Ok(vec![
        (
            format!("3. fan-out {SUBS} subs × {changes} W1 changes: deliveries/s end to end (from process start)"),
            format!(
                "{rate:.0}/s ({deliveries} in {:.1} s; {:.0} changes/s)",
                elapsed.as_secs_f64(),
                changes as f64 / elapsed.as_secs_f64()
            ),
        ),
        (
            "3. outbox bytes per change (deliveries + attempts, with indexes)".into(),
            format!(
                "{per_change:.0} B ({:.0} B per delivery; {} total)",
                per_change / SUBS as f64,
                mib((del_bytes + att_bytes) as u64 / 1024)
            ),
        ),
        (
            "3. walhook max Postgres connections (pg_stat_activity / sockets); VmHWM".into(),
            format!("{conns} / {sockets}; {}", mib(rss)),
        ),
    ])
}
