//! No password in the clear (issue #12, point 6): on a connection without TLS, walhook refuses
//! to answer a server's cleartext or MD5 password request unless `allow_insecure_password` is
//! set, on every kind of connection (plain SQL, pooled SQL, replication) and through
//! config.toml; SCRAM over the same connection is fine, and so is MD5 once TLS is up
//! (`replication_conn::md5_over_tls_with_prefer_is_accepted`).
//!
//! The server is this module's own, so its `pg_hba.conf` can ask for `md5` and `password`
//! (cleartext) on replication connections too without touching the shared server.

use std::sync::OnceLock;

use walhook::embedded_pg::{PgServer, StopMode};
use walhook::pg::tls::{connect_sql, pool, PgConfig};
use walhook::pg::{pool_error_is_retryable, pool_error_text, PgError};
use walhook::source::conn::ReplicationClient;
use walhook::source::error::SourceError;

const PASSWORD: &str = "pl41n-s3cret";
const MD5: &str = "md5_login";
const PLAIN: &str = "cleartext_login";
const SCRAM: &str = "scram_login";

fn server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut pg = PgServer::start(&[]).unwrap();
        pg.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'md5';
                 CREATE ROLE {MD5} LOGIN REPLICATION PASSWORD '{PASSWORD}';
                 CREATE ROLE {PLAIN} LOGIN REPLICATION PASSWORD '{PASSWORD}';
                 SET password_encryption = 'scram-sha-256';
                 CREATE ROLE {SCRAM} LOGIN REPLICATION PASSWORD '{PASSWORD}';"
            ),
        )
        .unwrap();
        let hba = pg.psql("postgres", "SHOW hba_file").unwrap();
        let lines = [
            "local all all trust".to_string(),
            format!("host all {MD5} 127.0.0.1/32 md5"),
            format!("host replication {MD5} 127.0.0.1/32 md5"),
            format!("host all {PLAIN} 127.0.0.1/32 password"),
            format!("host replication {PLAIN} 127.0.0.1/32 password"),
            format!("host all {SCRAM} 127.0.0.1/32 scram-sha-256"),
            format!("host replication {SCRAM} 127.0.0.1/32 scram-sha-256"),
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
        .unwrap();
        // A restart puts the file in force before anyone connects (a reload is asynchronous).
        pg.stop(StopMode::Fast).unwrap();
        pg.restart().unwrap();
        pg
    })
}

fn url(user: &str, sslmode: &str) -> String {
    server()
        .url_as(user, PASSWORD, "postgres")
        .replace("sslmode=disable", &format!("sslmode={sslmode}"))
}

fn cfg(user: &str, sslmode: &str, allow: bool) -> PgConfig {
    let mut c = PgConfig::parse(&url(user, sslmode)).unwrap();
    c.allow_insecure_password(allow);
    c
}

fn assert_refusal(text: &str, method: &str, sslmode: &str) {
    assert!(
        text.contains(&format!(
            "asked for {method} over an unencrypted connection (sslmode={sslmode})"
        )),
        "{text}"
    );
    assert!(text.contains("allow_insecure_password = true"), "{text}");
    assert!(text.contains("scram-sha-256"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}

#[tokio::test]
async fn md5_and_cleartext_without_tls_are_refused_unless_allowed() {
    // The server has no TLS: `prefer` falls back to an unencrypted connection.
    for (user, method) in [(MD5, "an MD5 password"), (PLAIN, "a cleartext password")] {
        for mode in ["disable", "prefer"] {
            let what = format!("{user} sslmode={mode}");
            let c = cfg(user, mode, false);
            match connect_sql(&c).await {
                Err(e @ PgError::Config(_)) => {
                    assert!(!e.is_retryable(), "{what}");
                    assert_refusal(&e.to_string(), method, mode);
                }
                Err(e) => panic!("{what}: {e:?}"),
                Ok(_) => panic!("{what}: connected"),
            }
            match ReplicationClient::connect(&c).await {
                Err(e @ SourceError::Config(_)) => {
                    assert!(!e.is_retryable(), "{what}");
                    assert_refusal(&e.to_string(), method, mode);
                }
                Err(e) => panic!("{what}: {e:?}"),
                Ok(_) => panic!("{what}: replication connected"),
            }
            match pool(&c, 1).get().await {
                Err(e) => {
                    assert!(!pool_error_is_retryable(&e), "{what}");
                    let text = pool_error_text(&e);
                    assert_refusal(&text, method, mode);
                    assert!(!text.contains("walhook retries"), "{text}");
                }
                Ok(_) => panic!("{what}: pool connected"),
            }

            // Opted in: the same connections work.
            let c = cfg(user, mode, true);
            let sql = connect_sql(&c)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let who: String = sql
                .query_one("SELECT current_user::text", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(who, user);
            let mut repl = ReplicationClient::connect(&c)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            repl.identify_system().await.unwrap();
            let pooled = pool(&c, 1)
                .get()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            pooled.simple_query("SELECT 1").await.unwrap();
        }
    }
}

#[tokio::test]
async fn scram_without_tls_needs_no_opt_in() {
    let c = cfg(SCRAM, "disable", false);
    let sql = connect_sql(&c).await.unwrap();
    let who: String = sql
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, SCRAM);
    ReplicationClient::connect(&c)
        .await
        .unwrap()
        .identify_system()
        .await
        .unwrap();
    let pooled = pool(&c, 1).get().await.unwrap();
    pooled.simple_query("SELECT 1").await.unwrap();
}

/// config.toml: `walhook check` names the setting by default; `[source] allow_insecure_password
/// = true` lets it connect.
#[tokio::test]
async fn config_toml_opt_in() {
    let load = |extra: &str| {
        walhook::config::Config::parse(
            &format!(
                "[source]\nurl = \"{}\"\n{extra}\n[project]\nid = \"p\"\n",
                url(MD5, "prefer")
            ),
            "test.toml",
        )
        .unwrap()
    };
    let report = walhook::cmd::check::run(&load("")).await;
    let text = report.to_string();
    assert!(text.contains("cannot connect to source.url"), "{text}");
    assert_refusal(&text, "an MD5 password", "prefer");
    let report = walhook::cmd::check::run(&load("allow_insecure_password = true")).await;
    let text = report.to_string();
    assert!(!text.contains("cannot connect to source.url"), "{text}");
    assert!(text.contains("wal_level"), "{text}");
}

/// The guarded connection path reports a refused TCP connection as tokio-postgres does: a
/// retryable connection failure, not a configuration error.
#[tokio::test]
async fn guarded_connect_to_a_closed_port_is_a_retryable_failure() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = PgConfig::parse(&format!(
        "postgres://{MD5}:{PASSWORD}@127.0.0.1:{port}/postgres?sslmode=disable"
    ))
    .unwrap();
    let e = match connect_sql(&c).await {
        Err(e) => e,
        Ok(_) => panic!("nothing listens on {port}"),
    };
    assert!(e.is_retryable(), "{e:?}");
    assert!(e.to_string().contains("refused"), "{e}");
    match pool(&c, 1).get().await {
        Err(e) => assert!(pool_error_is_retryable(&e), "{}", pool_error_text(&e)),
        Ok(_) => panic!("nothing listens on {port}"),
    }
}
