//! Shared by the benchmarks: the W1 workload, a throw-away database for it, pg_recvlogical as
//! the reference, and /proc readings (RSS, CPU time).
#![allow(dead_code)]

pub mod bare_http;
pub mod scale_rx;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use walhook::embedded_pg::PgServer;

pub const TXNS: usize = 100;
pub const ROWS_PER_TXN: usize = 1000;
pub const W1_CHANGES: i64 = (3 * TXNS * ROWS_PER_TXN) as i64;

pub fn parse_lsn(s: &str) -> anyhow::Result<u64> {
    let (hi, lo) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("bad LSN {s:?}"))?;
    Ok((u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?)
}

pub fn walhook_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    target.join("release").join("walhook")
}

pub fn client_tool(pg: &PgServer, name: &str) -> PathBuf {
    let p = pg.bin_dir().join(name);
    if p.is_file() {
        p
    } else {
        PathBuf::from(name)
    }
}

/// Creates the W1 table, the publication and the given pgoutput slots in a new database.
pub fn setup_db(pg: &PgServer, slots: &[&str]) -> anyhow::Result<String> {
    let db = pg.create_database()?;
    pg.psql(
        &db,
        "CREATE TABLE orders (
             id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
             total numeric(12,2),
             status text,
             customer_id text,
             created_at timestamptz DEFAULT now(),
             meta jsonb);
         ALTER TABLE orders REPLICA IDENTITY FULL;",
    )?;
    pg.psql(
        &db,
        "CREATE PUBLICATION walhook FOR TABLE orders WITH (publish = 'insert, update, delete')",
    )?;
    for slot in slots {
        pg.psql(
            &db,
            &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
        )?;
    }
    Ok(db)
}

/// Drops a database a run is done with, with its replication slots, so that nothing of it
/// (autovacuum of its hundreds of thousands of dead rows, its slots holding WAL) runs beside the
/// runs that follow.
pub fn drop_database(pg: &PgServer, db: &str) -> anyhow::Result<()> {
    pg.psql(
        db,
        "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots
         WHERE database = current_database()",
    )?;
    pg.psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"))?;
    Ok(())
}

/// Runs a SQL script with psql over TCP; every statement is its own transaction.
pub fn psql_file(pg: &PgServer, db: &str, sql: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("workload.sql");
    std::fs::write(&file, sql)?;
    let out = Command::new(client_tool(pg, "psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &pg.url(db), "-f"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "psql workload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

pub fn w1_workload() -> String {
    w1_workload_n(TXNS)
}

/// W1 with `txns` transactions of each kind (W1 itself is [`TXNS`]).
pub fn w1_workload_n(txns: usize) -> String {
    let mut sql = String::new();
    let row_meta = "jsonb_build_object('sku', 'sku-'||g, 'qty', g % 7)";
    for t in 0..txns {
        let (a, b) = (t * ROWS_PER_TXN + 1, (t + 1) * ROWS_PER_TXN);
        sql.push_str(&format!(
            "INSERT INTO orders (total, status, customer_id, meta) \
             SELECT g + (g % 100) / 100.0, 'new', 'cust-' || (g % 5000), {row_meta} \
             FROM generate_series({a}, {b}) g;\n"
        ));
    }
    // `total` is unique and increasing in g, so [a, b+1) selects exactly one batch of 1000.
    for t in 0..txns {
        let (a, b) = (t * ROWS_PER_TXN + 1, (t + 1) * ROWS_PER_TXN + 1);
        sql.push_str(&format!(
            "UPDATE orders SET status = 'shipped' WHERE total >= {a} AND total < {b};\n"
        ));
    }
    for t in 0..txns {
        let (a, b) = (t * ROWS_PER_TXN + 1, (t + 1) * ROWS_PER_TXN + 1);
        sql.push_str(&format!(
            "DELETE FROM orders WHERE total >= {a} AND total < {b};\n"
        ));
    }
    sql
}

pub fn postmaster_pid(pg: &PgServer) -> anyhow::Result<u32> {
    let dir = pg.psql("postgres", "SHOW data_directory")?;
    let text = std::fs::read_to_string(Path::new(&dir).join("postmaster.pid"))?;
    Ok(text.lines().next().unwrap_or("").trim().parse()?)
}

/// CPU seconds used between two snapshots by processes outside this bench's Postgres.
pub fn noise_secs(
    before: &HashMap<u32, (u64, u32, String)>,
    after: &HashMap<u32, (u64, u32, String)>,
    postmaster: u32,
) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    after
        .iter()
        .filter(|(p, (_, ppid, _))| {
            **p != postmaster && *ppid != postmaster && **p != std::process::id()
        })
        .map(|(p, (t, _, _))| {
            t.saturating_sub(before.get(p).map(|(b, _, _)| *b).unwrap_or(0)) as f64 / ticks
        })
        .sum()
}

/// CPU used between two snapshots per event, split by who used it: walhook (`walhook`), this
/// bench's Postgres (the postmaster and its children: sessions, walsender, background), the bench
/// process itself (receiver, generator) and everything else on the machine; with the rate the
/// machine's cores could carry if that CPU were the only limit. One line, for the bench output.
pub fn cpu_per_event(
    before: &HashMap<u32, (u64, u32, String)>,
    after: &HashMap<u32, (u64, u32, String)>,
    walhook: u32,
    postmaster: u32,
    events: u64,
) -> String {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (mut w, mut pg, mut bench, mut other) = (0.0, 0.0, 0.0, 0.0);
    for (p, (t, ppid, _)) in after {
        let secs = t.saturating_sub(before.get(p).map(|(b, _, _)| *b).unwrap_or(0)) as f64 / ticks;
        match () {
            _ if *p == walhook => w += secs,
            _ if *p == postmaster || *ppid == postmaster => pg += secs,
            _ if *p == std::process::id() => bench += secs,
            _ => other += secs,
        }
    }
    let us = |secs: f64| secs * 1e6 / events.max(1) as f64;
    let total = us(w + pg + bench + other);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    format!(
        "CPU per event: walhook {:.1} µs, Postgres {:.1} µs, bench (receiver) {:.1} µs, other {:.1} µs; \
         total {total:.1} µs, so {cores:.0} cores carry at most {:.0} events/s at this cost",
        us(w),
        us(pg),
        us(bench),
        us(other),
        cores * 1e6 / total.max(f64::MIN_POSITIVE)
    )
}

/// Writes about 640 MB of WAL and checkpoints, so that the latency runs write into recycled WAL
/// segments, as on a server that has been running. A fresh cluster creates each 16 MB segment
/// and fills it with zeros first (`wal_init_zero`), which stalled the commits of that moment:
/// in A/B runs the p99 at 5k/s was 31–34 ms with new segments and 11–13 ms without.
pub fn warm_wal(pg: &PgServer, db: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    pg.psql(
        db,
        "CREATE TABLE wal_warmup AS SELECT repeat('x', 1000) AS filler FROM generate_series(1, 600000);
         DROP TABLE wal_warmup;
         CHECKPOINT",
    )?;
    println!(
        "WAL warm-up (640 MB written, checkpoint): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Times pg_recvlogical draining `slot` up to `end`.
pub fn time_recvlogical(
    pg: &PgServer,
    db: &str,
    slot: &str,
    end: &str,
) -> anyhow::Result<Duration> {
    let postmaster = postmaster_pid(pg)?;
    let before = cpu_snapshot();
    let start = Instant::now();
    let out = Command::new(client_tool(pg, "pg_recvlogical"))
        .args([
            "-d",
            &pg.url(db),
            "--slot",
            slot,
            "--start",
            "--endpos",
            end,
        ])
        .args(["-o", "proto_version=1", "-o", "publication_names=walhook"])
        .args(["-f", "/dev/null", "--no-loop"])
        .stdin(Stdio::null())
        .output()?;
    let elapsed = start.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "pg_recvlogical failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let noise = noise_secs(&before, &cpu_snapshot(), postmaster);
    println!("  (pg_recvlogical run: {noise:.2} s CPU used by other processes on the machine)");
    Ok(elapsed)
}

pub fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime+stime in clock ticks, parent pid and a short command line, for every process we can read.
pub fn cpu_snapshot() -> HashMap<u32, (u64, u32, String)> {
    let mut map = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return map;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the ")" that closes comm: state is field 3, ppid 4, utime 14, stime 15.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        let ppid = f.get(1).and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
        map.insert(pid, (ticks, ppid, cmd));
    }
    map
}

/// The processes that used the most CPU between two snapshots, as "seconds  command" lines.
pub fn cpu_top(
    before: &HashMap<u32, (u64, u32, String)>,
    after: &HashMap<u32, (u64, u32, String)>,
    n: usize,
) -> Vec<String> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut used: Vec<(f64, String)> = after
        .iter()
        .map(|(p, (t, _, cmd))| {
            let b = before.get(p).map(|(b, _, _)| *b).unwrap_or(0);
            let who = if *p == std::process::id() {
                "bench process (receiver, generator)".to_string()
            } else {
                cmd.chars().take(90).collect()
            };
            (t.saturating_sub(b) as f64 / ticks, who)
        })
        .filter(|(s, _)| *s >= 0.05)
        .collect();
    used.sort_by(|a, b| b.0.total_cmp(&a.0));
    used.into_iter()
        .take(n)
        .map(|(s, who)| format!("{s:7.2} s  {who}"))
        .collect()
}

/// Starts `walhook run --config <config>` (the release binary; `script` is the bench script that
/// builds it, named when it is missing), its log in `log`, its `WALHOOK_LOG` filter taken from
/// the environment variable `filter_var` (default `info`).
pub fn spawn_walhook(
    config: &Path,
    log: &Path,
    filter_var: &str,
    script: &str,
) -> anyhow::Result<Spawned> {
    let bin = walhook_binary();
    anyhow::ensure!(
        bin.is_file(),
        "{} not found; build it with `cargo build --release` ({script} does)",
        bin.display()
    );
    let log = std::fs::File::create(log)?;
    Ok(Spawned::new(
        std::process::Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .env(
                "WALHOOK_LOG",
                std::env::var(filter_var).unwrap_or_else(|_| "info".into()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()?,
    ))
}

/// A walhook child process, killed and reaped if dropped before [`stop_walhook`]: a bench that
/// fails midway (a refused request, a timeout) leaves no walhook running beside the next run.
pub struct Spawned(Option<std::process::Child>);

impl Spawned {
    pub fn new(child: std::process::Child) -> Spawned {
        Spawned(Some(child))
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM to a walhook child, then waits; returns its VmHWM in KiB (read before the signal).
pub fn stop_walhook(mut spawned: Spawned) -> anyhow::Result<u64> {
    let Some(mut child) = spawned.0.take() else {
        return Ok(0);
    };
    let hwm = proc_kib(child.id(), "VmHWM:").unwrap_or(0);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    Ok(hwm)
}

/// The `p` quantile of sorted microsecond samples, in milliseconds (NaN when empty).
pub fn percentile_ms<T: Copy + Into<u64>>(sorted: &[T], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].into() as f64 / 1000.0
}

/// Runs a bench's async body on a two-thread runtime (walhook's own machine has two cores);
/// a failure is printed with its causes and exits 1.
pub fn run<F: std::future::Future<Output = anyhow::Result<()>>>(name: &str, bench: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(bench) {
        eprintln!("{name} bench failed: {e:#}");
        std::process::exit(1);
    }
}

/// SQL: how many deliveries (of subscriptions matching the SQL condition `subs` on
/// `subscription_id`) are not delivered, counting those the delivered cursor recorded (sql/015)
/// as delivered. One hashed scan, unlike the `delivery_states` view's lookup per row.
pub fn undelivered_sql(subs: &str) -> String {
    format!(
        "SELECT count(*) FROM walhook.deliveries d
         LEFT JOIN (SELECT subscription_id, max(last_sequence) AS upto
                    FROM walhook.delivered_runs GROUP BY 1) r USING (subscription_id)
         WHERE ({subs}) AND d.status <> 'delivered'
           AND NOT (d.status = 'pending' AND d.last_attempt_at IS NULL
                    AND d.sequence <= coalesce(r.upto, 0))"
    )
}
