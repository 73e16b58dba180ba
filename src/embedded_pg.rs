//! A throw-away PostgreSQL server for tests, benchmarks and `walhook demo`.
//!
//! Guarantees:
//! - the server runs from a fresh `initdb` in a temporary directory, listens on 127.0.0.1 on a
//!   free port, with `wal_level=logical`;
//! - when the calling process runs as root (Postgres refuses to), the server runs as the
//!   unprivileged `postgres` user (or `nobody` when that user does not exist);
//! - the server and its directory are removed when the [`PgServer`] is dropped, and also when the
//!   owning process dies without dropping it (a guardian shell watches a pipe held by this
//!   process), so a killed test run leaves nothing behind.
//!
//! Authentication: `trust` for every connection over the Unix socket and 127.0.0.1 (the server
//! lives only as long as its owner and listens on loopback only). It knows no other role than
//! [`SUPERUSER`]; callers that need password roles create them (tests do, through psql).

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub const SUPERUSER: &str = "postgres";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPgError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found in PATH or /usr/lib/postgresql/*/bin; \
         install them, e.g. `apt-get install -y postgresql` on Debian/Ubuntu"
    )]
    NotInstalled,
    #[error("{step} failed: {detail}")]
    Step { step: &'static str, detail: String },
}

fn step(step: &'static str, detail: impl ToString) -> EmbeddedPgError {
    EmbeddedPgError::Step {
        step,
        detail: detail.to_string(),
    }
}

/// How to stop a running server; mirrors `pg_ctl stop -m`.
#[derive(Clone, Copy, Debug)]
pub enum StopMode {
    Fast,
    Immediate,
}

pub struct PgServer {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
    guardian: Option<(Child, ChildStdin)>,
    log_path: PathBuf,
}

/// Finds the directory holding `initdb` and `postgres`.
pub fn find_bin_dir() -> Result<PathBuf, EmbeddedPgError> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .ok_or(EmbeddedPgError::NotInstalled)
}

fn unprivileged_ids() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    for name in ["postgres", "nobody"] {
        let cname = std::ffi::CString::new(name).ok()?;
        // SAFETY: getpwnam returns a pointer to static storage or null; we copy out at once.
        let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
        if !pw.is_null() {
            // SAFETY: pw is non-null and points to a valid passwd struct.
            return Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) });
        }
    }
    None
}

/// A port that is free right now, chosen below the kernel's ephemeral range (32768+) so that the
/// local end of some unrelated outgoing connection cannot take it between now and the bind.
fn free_port() -> Result<u16, EmbeddedPgError> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let port = rng.gen_range(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| step("finding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| step("finding a free port", e))?
        .port())
}

/// How many fresh ports a first start tries when another process wins the race for the port.
const BIND_ATTEMPTS: usize = 5;

fn chown(path: &Path, ids: Option<(u32, u32)>) -> Result<(), EmbeddedPgError> {
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| step("chown of the data directory", e))?;
    }
    Ok(())
}

impl PgServer {
    /// initdb + start. Extra `postgres -c` settings may be given as `("name", "value")`.
    pub fn start(settings: &[(&str, &str)]) -> Result<PgServer, EmbeddedPgError> {
        Self::start_first_on(settings, None)
    }

    fn start_first_on(
        settings: &[(&str, &str)],
        first_port: Option<u16>,
    ) -> Result<PgServer, EmbeddedPgError> {
        let bin_dir = find_bin_dir()?;
        let run_as = unprivileged_ids();
        let root = tempfile::Builder::new()
            .prefix("walhook-pg-")
            .tempdir()
            .map_err(|e| step("creating a temporary directory", e))?
            .keep();
        let data_dir = root.join("data");
        let socket_dir = root.join("sock");
        for d in [&root, &data_dir, &socket_dir] {
            std::fs::create_dir_all(d).map_err(|e| step("creating directories", e))?;
            chown(d, run_as)?;
        }
        let log_path = root.join("postgres.log");
        std::fs::File::create(&log_path).map_err(|e| step("creating the log file", e))?;
        chown(&log_path, run_as)?;

        // The guardian removes everything if this process dies before dropping us.
        let mut guardian = Command::new("sh")
            .arg("-c")
            .arg(
                "read _ignored; pid=$(head -1 \"$1/data/postmaster.pid\" 2>/dev/null); \
                 if [ -n \"$pid\" ]; then kill -QUIT \"$pid\" 2>/dev/null; \
                 for i in $(seq 1 50); do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.1; done; fi; \
                 rm -rf \"$1\"",
            )
            .arg("guardian")
            .arg(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| step("starting the guardian", e))?;
        let guardian_stdin = guardian
            .stdin
            .take()
            .ok_or_else(|| step("starting the guardian", "no stdin pipe"))?;

        let mut server = PgServer {
            bin_dir,
            data_dir,
            socket_dir,
            port: match first_port {
                Some(p) => p,
                None => free_port()?,
            },
            run_as,
            child: None,
            guardian: Some((guardian, guardian_stdin)),
            log_path,
        };
        server.initdb(settings)?;
        let mut attempt = 1;
        loop {
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(EmbeddedPgError::Step { detail, .. })
                    if attempt < BIND_ATTEMPTS && detail.contains("Address already in use") =>
                {
                    attempt += 1;
                    server.port = free_port()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        // Postgres tools refuse a cwd they cannot read (e.g. /root when running as postgres).
        cmd.current_dir(self.data_dir.parent().unwrap_or(Path::new("/")));
        cmd.env("LC_ALL", "C.UTF-8").env_remove("PGDATA");
        cmd
    }

    fn initdb(&self, settings: &[(&str, &str)]) -> Result<(), EmbeddedPgError> {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-sync"])
            .output()
            .map_err(|e| step("running initdb", e))?;
        if !out.status.success() {
            return Err(step("initdb", String::from_utf8_lossy(&out.stderr)));
        }
        let hba = "local all all trust\n\
                   host all all 127.0.0.1/32 trust\n\
                   host replication all 127.0.0.1/32 trust\n";
        std::fs::write(self.data_dir.join("pg_hba.conf"), hba)
            .map_err(|e| step("writing pg_hba.conf", e))?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir.join("postgresql.conf"))
            .map_err(|e| step("opening postgresql.conf", e))?;
        // Slots are cluster-wide and a test suite on one server creates one per test database
        // (about 170): 40 ran out once the suite grew.
        let mut lines = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = logical\nmax_replication_slots = 200\nmax_wal_senders = 100\n\
             max_connections = 200\nfsync = off\nfull_page_writes = off\n\
             wal_sender_timeout = '60s'\npassword_encryption = 'scram-sha-256'\n",
            self.socket_dir.display()
        );
        for (k, v) in settings {
            lines.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        conf.write_all(lines.as_bytes())
            .map_err(|e| step("writing postgresql.conf", e))?;
        Ok(())
    }

    fn launch(&mut self) -> Result<(), EmbeddedPgError> {
        // Errors quote only this start's part of the log, not an earlier failed attempt's.
        let log_start = std::fs::metadata(&self.log_path).map_or(0, |m| m.len() as usize);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .map_err(|e| step("opening the server log", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| step("opening the server log", e))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data_dir)
            // On the command line, not in postgresql.conf, so a retry can pick another port.
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| step("starting postgres", e))?;
        self.child = Some(child);
        self.wait_ready(log_start)
    }

    fn wait_ready(&mut self, log_start: usize) -> Result<(), EmbeddedPgError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(step(
                        "starting postgres",
                        format!("exited with {status}; log:\n{}", self.log_since(log_start)),
                    ));
                }
            }
            let ok = self
                .psql_raw("postgres", "SELECT 1")
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(step(
                    "starting postgres",
                    format!("not ready after 30s; log:\n{}", self.log_tail()),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn psql_raw(&self, db: &str, sql: &str) -> std::io::Result<std::process::Output> {
        let psql = if self.bin_dir.join("psql").is_file() {
            self.bin_dir.join("psql")
        } else {
            PathBuf::from("psql")
        };
        let mut cmd = Command::new(psql);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir("/")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &self.socket_dir.display().to_string()])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
    }

    /// Runs SQL through psql over the Unix socket and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, EmbeddedPgError> {
        let out = self
            .psql_raw(db, sql)
            .map_err(|e| step("running psql", e))?;
        if !out.status.success() {
            return Err(step("psql", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// A URL connecting as the superuser over TCP.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// A URL for `user` with `password` (percent-encoded) over TCP.
    pub fn url_as(&self, user: &str, password: &str, db: &str) -> String {
        let mut enc = String::new();
        for b in password.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                enc.push(b as char);
            } else {
                enc.push_str(&format!("%{b:02X}"));
            }
        }
        format!(
            "postgres://{user}:{enc}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Creates a fresh database with a unique name and returns the name.
    pub fn create_database(&self) -> Result<String, EmbeddedPgError> {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(name)
    }

    pub fn stop(&mut self, mode: StopMode) -> Result<(), EmbeddedPgError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let sig = match mode {
            StopMode::Fast => libc::SIGINT,
            StopMode::Immediate => libc::SIGQUIT,
        };
        // SAFETY: kill with a pid we spawned and still own.
        unsafe { libc::kill(child.id() as i32, sig) };
        child.wait().map_err(|e| step("stopping postgres", e))?;
        Ok(())
    }

    /// Starts the server again on the same port and data directory after [`PgServer::stop`].
    pub fn restart(&mut self) -> Result<(), EmbeddedPgError> {
        if self.child.is_none() {
            self.launch()?;
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        self.log_since(0)
    }

    fn log_since(&self, offset: usize) -> String {
        let log = std::fs::read(&self.log_path).unwrap_or_default();
        let log = String::from_utf8_lossy(log.get(offset..).unwrap_or_default());
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop(StopMode::Fast);
        if let Some((mut guardian, stdin)) = self.guardian.take() {
            drop(stdin);
            let _ = guardian.wait();
        }
    }
}

/// SQL counting the walsenders streaming from `slot` (1 once `walhook run` streams), for
/// tests and benchmarks that must not write before that. Not `pg_replication_slots.active`:
/// that is true already while `pg_create_logical_replication_slot` waits for other sessions'
/// running transactions, before the slot's start point, and a change committed in that window
/// is (rightly) never streamed.
pub fn slot_streaming_sql(slot: &str) -> String {
    format!(
        "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
         WHERE s.slot_name = '{slot}' AND r.state IN ('catchup', 'streaming')"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_taken_after_it_was_chosen_is_replaced_by_another() {
        if find_bin_dir().is_err() {
            panic!("{}", EmbeddedPgError::NotInstalled);
        }
        let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = squatter.local_addr().unwrap().port();
        let server =
            PgServer::start_first_on(&[], Some(taken)).expect("start despite the squatter");
        assert_ne!(server.port(), taken);
        assert_eq!(server.psql("postgres", "SELECT 41 + 1").unwrap(), "42");
        assert!(server.log_tail().contains("Address already in use"));
    }
}
