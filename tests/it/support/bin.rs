//! The `walhook` binary as the tests run it: the ONE place that names `CARGO_BIN_EXE_walhook`.
//!
//! [`command`] builds a command for a subcommand (for `.output()`, whose stderr is a buffer);
//! [`Walhook::spawn`] starts a long-running process whose stderr goes to a log file, so a test
//! can wait for a log line, count lines, or quote the log's tail when an assertion fails. A
//! process is killed when its handle is dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// `walhook <args>`: stdout and stderr unset (`.output()` captures both), killed on drop.
pub fn command<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walhook"));
    // Plain log lines (no ANSI colours), so that tests can match `field=value`.
    cmd.args(args).env("NO_COLOR", "1").kill_on_drop(true);
    cmd
}

/// `walhook <subcommand> --config <path>`.
pub fn with_config(subcommand: &str, config: &Path) -> Command {
    let mut cmd = command([subcommand, "--config"]);
    cmd.arg(config);
    cmd
}

/// Runs `cmd` to its end and returns its output, failing the test (with its stdout and stderr)
/// unless it exited 0.
pub async fn succeeds(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} exited with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A running `walhook` whose stderr (its log) is appended to a file.
pub struct Walhook {
    pub child: Child,
    log: PathBuf,
}

/// A log file that outlives the processes writing it (durability restarts the daemon into one).
pub fn log_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("walhook-test-{name}.log"));
    let _ = std::fs::remove_file(&path);
    eprintln!("[{name}] walhook log: {}", path.display());
    path
}

impl Walhook {
    /// Spawns `cmd` with stderr appended to `log` and stdout discarded unless `cmd` set it.
    /// `WALHOOK_LOG` defaults to `info` (unless the environment or `cmd` sets it) so that tests
    /// can wait for the daemon's log lines.
    pub fn spawn_logging(mut cmd: Command, log: &Path) -> Walhook {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        // A test that set WALHOOK_LOG on `cmd` (e.g. `debug`) keeps it.
        let set_on_cmd = cmd.as_std().get_envs().any(|(k, _)| k == "WALHOOK_LOG");
        if std::env::var_os("WALHOOK_LOG").is_none() && !set_on_cmd {
            cmd.env("WALHOOK_LOG", "info");
        }
        let child = cmd.stderr(file).spawn().expect("spawn walhook");
        Walhook {
            child,
            log: log.to_path_buf(),
        }
    }

    /// `walhook run --config <config>` logging to a fresh file named after `name`.
    pub fn run(name: &str, config: &Path) -> Walhook {
        let mut cmd = with_config("run", config);
        cmd.stdout(Stdio::null());
        Walhook::spawn_logging(cmd, &log_path(name))
    }

    pub fn log_file(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Waits until the log holds `needle` `n` times; fails the test if the process exits or
    /// `timeout` passes first. Returns the log.
    pub async fn wait_log_count(&mut self, needle: &str, n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= n {
                return log;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "walhook exited ({status}) before logging {needle:?} ×{n}; log:\n{}",
                    self.log_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "walhook did not log {needle:?} ×{n} within {timeout:?}; log:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_log_count(needle, 1, timeout).await
    }

    /// The address the management API bound (from its log line), for `listen = "…:0"`.
    pub async fn api_addr(&mut self) -> String {
        let log = self
            .wait_log("management API listening", Duration::from_secs(30))
            .await;
        let line = log
            .lines()
            .find(|l| l.contains("management API listening"))
            .unwrap();
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"))
            .to_string()
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("still running") as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, signal) };
    }

    /// Sends `signal` and waits (15 s at most) for the exit.
    pub async fn stop_with(mut self, signal: i32) -> ExitStatus {
        self.signal(signal);
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("walhook exits; log:\n{}", self.log_tail(40)))
            .unwrap()
    }

    pub async fn stop(self) -> ExitStatus {
        self.stop_with(libc::SIGTERM).await
    }

    pub async fn sigkill(&mut self) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("killed child exits")
            .unwrap();
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `walhook run` started again and again on one config file, every run appending to one log:
/// the durability tests kill and restart it and count the runs that reached streaming.
pub struct Runs {
    cfg: tempfile::NamedTempFile,
    log: PathBuf,
}

impl Runs {
    /// The config `text` (loopback-guarded) in a file, and a fresh log named after `name`.
    pub fn new(name: &str, text: &str) -> Runs {
        Runs {
            cfg: super::write_config(text),
            log: log_path(name),
        }
    }

    pub fn spawn(&self) -> Walhook {
        let mut cmd = with_config("run", self.cfg.path());
        cmd.stdout(Stdio::null());
        Walhook::spawn_logging(cmd, &self.log)
    }

    /// How many runs logged that they began streaming.
    pub fn streaming_starts(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("streaming")
            .count()
    }

    /// Waits until at least `n` runs began streaming; fails the test after `timeout`.
    pub async fn wait_streaming(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.streaming_starts() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} runs began streaming within {timeout:?}; log:\n{}",
                self.streaming_starts(),
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}
