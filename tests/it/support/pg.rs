//! The throw-away Postgres server every test of this binary shares, plus the password roles the
//! authentication tests log in as.
//!
//! The product's embedded server (also `walhook demo`'s) trusts every local connection and knows
//! no test credentials; this module adds them to the shared server as its superuser, through
//! psql: [`SCRAM_USER`] and [`MD5_USER`] must present [`TEST_PASSWORD`] over TCP with
//! SCRAM-SHA-256 and MD5 respectively (their `pg_hba.conf` lines come before the `trust` ones).

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use walhook::embedded_pg::PgServer;

pub const SCRAM_USER: &str = "scram_user";
pub const MD5_USER: &str = "md5_user";
pub const TEST_PASSWORD: &str = "s3cr3t-p@ss";

/// One server shared by every test of this binary; its guardian removes it at process exit.
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let pg = PgServer::start(&[])
            .unwrap_or_else(|e| panic!("could not start the test PostgreSQL server: {e}"));
        add_password_roles(&pg);
        pg
    })
}

/// Creates [`SCRAM_USER`] and [`MD5_USER`] on `pg` and puts their `pg_hba.conf` lines in force.
pub fn add_password_roles(pg: &PgServer) {
    let sql = format!(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE {SCRAM_USER} LOGIN REPLICATION SUPERUSER PASSWORD '{TEST_PASSWORD}';
         SET password_encryption = 'md5';
         CREATE ROLE {MD5_USER} LOGIN REPLICATION SUPERUSER PASSWORD '{TEST_PASSWORD}';"
    );
    pg.psql("postgres", &sql)
        .unwrap_or_else(|e| panic!("creating the password roles: {e}"));
    let hba = pg
        .psql("postgres", "SHOW hba_file")
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = [
        "local all all trust".to_string(),
        format!("host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256"),
        format!("host all {MD5_USER} 127.0.0.1/32 md5"),
        "host all all 127.0.0.1/32 trust".to_string(),
        format!("host replication {SCRAM_USER} 127.0.0.1/32 scram-sha-256"),
        "host replication all 127.0.0.1/32 trust".to_string(),
    ];
    let array = lines
        .iter()
        .map(|l| format!("'{l}'"))
        .collect::<Vec<_>>()
        .join(", ");
    pg.psql(
        "postgres",
        &format!("COPY (SELECT unnest(ARRAY[{array}])) TO '{hba}'"),
    )
    .unwrap_or_else(|e| panic!("writing pg_hba.conf: {e}"));
    pg.psql("postgres", "SELECT pg_reload_conf()")
        .unwrap_or_else(|e| panic!("{e}"));
    // The postmaster reloads asynchronously: wait until a password-less login is refused.
    let psql = if pg.bin_dir().join("psql").is_file() {
        pg.bin_dir().join("psql")
    } else {
        "psql".into()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(&psql)
            .current_dir("/")
            .args(["-X", "-w", "-h", "127.0.0.1", "-p", &pg.port().to_string()])
            .args(["-U", SCRAM_USER, "-d", "postgres", "-c", "SELECT 1"])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        if !out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pg_hba.conf reload not in effect after 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
