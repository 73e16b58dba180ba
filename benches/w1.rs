//! Ingest benchmark: workload W1 (README, Benchmarks) against a throw-away Postgres, end to end.
//!
//! 1. 100 txns × 1000 INSERT, 100 × 1000 UPDATE of `status`, 100 × 1000 DELETE = 300k changes
//!    on `orders` (REPLICA IDENTITY FULL), with two pgoutput slots created before the workload.
//! 2. The limit: `pg_recvlogical` draining the `recv` slot to /dev/null up to the end LSN.
//! 3. `target/release/walhook run`, timed from process start until `walhook.deliveries` holds one
//!    row per change; RSS sampled, VmHWM read before SIGTERM; CPU time per process.
//! 4. One 1,000,000-row transaction in a fresh database, ingested by a fresh walhook.
//!
//! Needs the release binary: run through `bash bench/w1.sh` (builds it, then this).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use walhook::embedded_pg::PgServer;

mod support;
use support::*;

const BIG_ROWS: i64 = 1_000_000;
const RUN_TIMEOUT: Duration = Duration::from_secs(900);
/// A checkpoint this close to the end LSN is the last workload transaction's: each earlier one
/// wrote at least 1000 row records (well over 16 KiB of WAL) before the next commit.
const NEAR_END: u64 = 16 * 1024;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(bench()) {
        eprintln!("w1 bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn big_txn_workload() -> String {
    format!(
        "INSERT INTO orders (total, status, customer_id, meta) \
         SELECT g + (g % 100) / 100.0, 'new', 'cust-' || (g % 5000), \
         jsonb_build_object('sku', 'sku-'||g, 'qty', g % 7) \
         FROM generate_series(1, {BIG_ROWS}) g;\n"
    )
}

struct IngestResult {
    elapsed: Duration,
    first_commit: Option<Duration>,
    steady_rate: Option<f64>,
    peak_rss_sampled_kib: u64,
    vm_hwm_kib: u64,
    cpu_lines: Vec<String>,
    top: String,
    exit: String,
}

/// Starts `walhook run`, waits until `walhook.deliveries` holds `expected` rows, stops it.
async fn run_walhook(
    pg: &PgServer,
    db: &str,
    slot: &str,
    expected: i64,
    end_lsn: u64,
    label: &str,
) -> anyhow::Result<IngestResult> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("walhook.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nslot = \"{slot}\"\npublication = \"walhook\"\n\n\
             [project]\nid = \"bench\"\n\n[delivery]\nenabled = false\nallow_private_networks = true\n\n\
             [[subscriptions]]\nid = \"orders-all\"\ntable = \"orders\"\n\
             events = [\"INSERT\", \"UPDATE\", \"DELETE\"]\n\
             url = \"https://127.0.0.1:9/x\"\nsecret = \"s\"\n",
            pg.url(db)
        ),
    )?;
    let bin = walhook_binary();
    anyhow::ensure!(
        bin.is_file(),
        "{} not found; build it with `cargo build --release` (bench/w1.sh does)",
        bin.display()
    );
    let log_path = std::env::temp_dir().join(format!("walhook-bench-{label}.log"));
    let log = std::fs::File::create(&log_path)?;

    let (poller, conn) = tokio_postgres::connect(&pg.url(db), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let poller_pid: i32 = poller
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);

    let before = cpu_snapshot();
    let start = Instant::now();
    let mut child: Child = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("WALHOOK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let pid = child.id();

    // Polling `count(*)` every 100 ms costs the server a full scan of the outbox each time (and,
    // during one big transaction, a visibility check of every uncommitted row), so the loop polls
    // the one-row checkpoint, which walhook commits together with the deliveries, and counts only
    // once near the end LSN (and at ~1 s, for the steady rate). Completion is still `count(*)`.
    let mut at_one_second: Option<(Duration, i64)> = None;
    let mut first_commit: Option<Duration> = None;
    let mut last_count_at = Duration::ZERO;
    let mut peak_rss = 0u64;
    let mut polls = 0u32;
    let mut counts = 0u32;
    let mut top: Option<std::process::Child> = None;
    let result = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(rss) = proc_kib(pid, "VmRSS:") {
            peak_rss = peak_rss.max(rss);
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(anyhow::anyhow!(
                "walhook exited early with {status}; log in {}",
                log_path.display()
            ));
        }
        polls += 1;
        let checkpoint: Option<i64> = poller
            .query_opt(
                "SELECT commit_lsn FROM walhook.checkpoint WHERE slot = $1",
                &[&slot],
            )
            .await
            .ok() // not migrated yet
            .flatten()
            .map(|r| r.get(0));
        let t = start.elapsed();
        if checkpoint.is_some() && first_commit.is_none() {
            first_commit = Some(t);
        }
        let near_end = checkpoint.is_some_and(|c| c as u64 + NEAR_END >= end_lsn);
        let want_one_second = at_one_second.is_none() && t >= Duration::from_secs(1);
        let fallback = t - last_count_at >= Duration::from_secs(5);
        let mut count = None;
        if near_end || want_one_second || fallback {
            last_count_at = t;
            counts += 1;
            count = Some(
                poller
                    .query_one("SELECT count(*) FROM walhook.deliveries", &[])
                    .await
                    .map(|r| r.get::<_, i64>(0))
                    .unwrap_or(0),
            );
        }
        if want_one_second {
            at_one_second = Some((t, count.unwrap_or(0)));
        }
        // One `top` snapshot about 1.5 s into ingest (second frame = CPU over 1 s).
        if top.is_none() && t >= Duration::from_millis(1500) {
            top = Command::new("top")
                .args(["-b", "-n", "2", "-d", "1", "-w", "160"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .ok();
        }
        if count.is_some_and(|c| c >= expected) {
            break Ok(t);
        }
        if t > RUN_TIMEOUT {
            break Err(anyhow::anyhow!(
                "timeout after {t:?} with {count:?}/{expected} deliveries; log in {}",
                log_path.display()
            ));
        }
    };
    let after = cpu_snapshot();
    let vm_hwm = proc_kib(pid, "VmHWM:").unwrap_or(0);
    // SAFETY: kill with the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break format!("{status}");
        }
        if Instant::now() > stop_deadline {
            let _ = child.kill();
            let _ = child.wait();
            break "killed after 30 s without exiting on SIGTERM".to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = result?;

    let steady_rate = at_one_second
        .filter(|(t, _)| *t < elapsed)
        .map(|(t, c)| (expected - c) as f64 / (elapsed - t).as_secs_f64());

    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let postmaster = after.get(&(poller_pid as u32)).map(|(_, pp, _)| *pp);
    let mut cpu: Vec<(f64, String)> = Vec::new();
    let mut others = 0.0;
    for (p, (t, ppid, cmd)) in &after {
        let base = before.get(p).map(|(b, _, _)| *b).unwrap_or(0);
        let secs = t.saturating_sub(base) as f64 / ticks;
        let ours = *p == pid
            || *p == std::process::id()
            || Some(*p) == postmaster
            || Some(*ppid) == postmaster;
        if !ours {
            others += secs;
            continue;
        }
        if secs < 0.05 {
            continue;
        }
        let who = if *p == pid {
            "walhook".to_string()
        } else if *p as i32 == poller_pid {
            "postgres backend: this bench's poller".to_string()
        } else if *p == std::process::id() {
            "bench process".to_string()
        } else {
            cmd.chars().take(90).collect()
        };
        cpu.push((secs, who));
    }
    cpu.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut cpu_lines: Vec<String> = cpu
        .iter()
        .take(8)
        .map(|(s, who)| format!("{s:7.2} s  {who}"))
        .collect();
    cpu_lines.push(format!(
        "{others:7.2} s  all other processes on the machine (noise); {polls} polls, {counts} count(*)"
    ));

    let top = match top {
        Some(t) => {
            let out = t.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            // Keep the second frame: header lines and the busiest processes.
            let frames: Vec<&str> = text.split("top - ").collect();
            let last = frames.last().copied().unwrap_or("");
            last.lines()
                .filter(|l| !l.trim().is_empty())
                .take(14)
                .collect::<Vec<_>>()
                .join("\n")
        }
        None => "(ingest finished before the top snapshot)".to_string(),
    };

    Ok(IngestResult {
        elapsed,
        first_commit,
        steady_rate,
        peak_rss_sampled_kib: peak_rss,
        vm_hwm_kib: vm_hwm,
        cpu_lines,
        top,
        exit,
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn report(label: &str, r: &IngestResult, rows: i64) {
    println!("\n--- walhook {label} ---");
    println!(
        "time {:.2} s, first outbox commit visible at {}, exit on SIGTERM: {}",
        r.elapsed.as_secs_f64(),
        r.first_commit
            .map(|t| format!("{:.2} s", t.as_secs_f64()))
            .unwrap_or_else(|| "-".into()),
        r.exit
    );
    println!(
        "rate {:.0} rows/s overall; RSS sampled peak {}, VmHWM {}",
        rows as f64 / r.elapsed.as_secs_f64(),
        mib(r.peak_rss_sampled_kib),
        mib(r.vm_hwm_kib)
    );
    println!("CPU time during the run (utime+stime, top processes):");
    for l in &r.cpu_lines {
        println!("  {l}");
    }
    println!("top snapshot (1 s, about 1.5 s after start):\n{}", r.top);
}

async fn bench() -> anyhow::Result<()> {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let pg = PgServer::start(&[])?;
    println!(
        "postgres on port {}, bin {}",
        pg.port(),
        pg.bin_dir().display()
    );

    // W1.
    let db = setup_db(&pg, &["walhook", "recv"])?;
    let t = Instant::now();
    psql_file(&pg, &db, &w1_workload())?;
    let end = pg.psql(&db, "SELECT pg_current_wal_lsn()")?;
    let left = pg.psql(&db, "SELECT count(*) FROM orders")?;
    println!(
        "W1 workload: {W1_CHANGES} changes in {:.1} s, end LSN {end}, rows left {left}",
        t.elapsed().as_secs_f64()
    );

    let recv = time_recvlogical(&pg, &db, "recv", &end)?;
    let recv_rate = W1_CHANGES as f64 / recv.as_secs_f64();
    println!(
        "pg_recvlogical: {:.2} s, {recv_rate:.0} rows/s",
        recv.as_secs_f64()
    );
    pg.psql(&db, "SELECT pg_drop_replication_slot('recv')")?;

    let w1 = run_walhook(&pg, &db, "walhook", W1_CHANGES, parse_lsn(&end)?, "w1").await?;
    let w1_rate = W1_CHANGES as f64 / w1.elapsed.as_secs_f64();
    report("W1", &w1, W1_CHANGES);

    // One big transaction, fresh database and slots.
    let big_db = setup_db(&pg, &["walhook_big", "recv_big"])?;
    let t = Instant::now();
    psql_file(&pg, &big_db, &big_txn_workload())?;
    let big_end = pg.psql(&big_db, "SELECT pg_current_wal_lsn()")?;
    println!(
        "\nbig txn: {BIG_ROWS} rows inserted in one transaction in {:.1} s, end LSN {big_end}",
        t.elapsed().as_secs_f64()
    );
    let big_recv = time_recvlogical(&pg, &big_db, "recv_big", &big_end)?;
    println!(
        "pg_recvlogical (1M txn): {:.2} s, {:.0} rows/s",
        big_recv.as_secs_f64(),
        BIG_ROWS as f64 / big_recv.as_secs_f64()
    );
    pg.psql(&big_db, "SELECT pg_drop_replication_slot('recv_big')")?;
    let big = run_walhook(
        &pg,
        &big_db,
        "walhook_big",
        BIG_ROWS,
        parse_lsn(&big_end)?,
        "big",
    )
    .await?;
    report("1M-row transaction", &big, BIG_ROWS);

    println!("\n| measure | value |");
    println!("|---|---|");
    println!("| nproc | {nproc} |");
    println!(
        "| W1 pg_recvlogical | {recv_rate:.0} rows/s ({:.2} s) |",
        recv.as_secs_f64()
    );
    println!(
        "| W1 walhook ingest (from process start) | {w1_rate:.0} rows/s ({:.2} s) |",
        w1.elapsed.as_secs_f64()
    );
    println!(
        "| W1 walhook steady (after the first second) | {} |",
        w1.steady_rate
            .map(|r| format!("{r:.0} rows/s"))
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "| W1 ratio walhook / pg_recvlogical | {:.2} |",
        w1_rate / recv_rate
    );
    println!("| W1 walhook peak RSS (VmHWM) | {} |", mib(w1.vm_hwm_kib));
    println!(
        "| 1M-row txn pg_recvlogical | {:.2} s |",
        big_recv.as_secs_f64()
    );
    println!(
        "| 1M-row txn walhook ingest | {:.2} s ({:.0} rows/s) |",
        big.elapsed.as_secs_f64(),
        BIG_ROWS as f64 / big.elapsed.as_secs_f64()
    );
    println!(
        "| 1M-row txn walhook peak RSS (VmHWM) | {} (limit 100 MB: {}) |",
        mib(big.vm_hwm_kib),
        if big.vm_hwm_kib * 1024 <= 100_000_000 {
            "ok"
        } else {
            "EXCEEDED"
        }
    );
    drop(pg);
    Ok(())
}
