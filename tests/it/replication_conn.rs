//! The replication connection against a real Postgres: authentication methods, session
//! settings, logical streaming, keepalives, TLS negotiation, malformed input.

use std::time::Duration;

use bytes::Bytes;
use walhook::embedded_pg::{self, PgServer};
use walhook::model::Lsn;
use walhook::pg::tls::connect_sql;
use walhook::source::conn::{parse_copy_data, ReplicationClient, ReplicationEvent};
use walhook::source::error::SourceError;

fn cfg(url: &str) -> tokio_postgres::Config {
    url.parse().expect("valid URL")
}

/// `PgServer::url_as` does not percent-encode, and TEST_PASSWORD contains '@', so the
/// password is set on the parsed config instead.
fn cfg_as(pg: &PgServer, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
    let mut c = cfg(&pg.url(db));
    c.user(user).password(password);
    c
}

async fn next_event(stream: &mut walhook::source::conn::ReplicationStream) -> ReplicationEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no replication message within 10s")
        .expect("stream error")
        .expect("stream ended")
}

/// A fresh database with table `t` in publication `p`, streaming from a new temporary slot.
async fn streaming(slot: &str) -> (String, Lsn, walhook::source::conn::ReplicationStream) {
    let pg = crate::support::pg::shared();
    let db = pg.create_database().unwrap();
    pg.psql(
        &db,
        "CREATE TABLE t(id int primary key, v text); CREATE PUBLICATION p FOR TABLE t;",
    )
    .unwrap();
    let mut c = ReplicationClient::connect(&cfg(&pg.url(&db)))
        .await
        .unwrap();
    let start = c.create_temporary_slot(slot).await.unwrap();
    let stream = c
        .start_logical(
            slot,
            start,
            &[("proto_version", "1"), ("publication_names", "p")],
        )
        .await
        .unwrap();
    (db, start, stream)
}

#[tokio::test]
async fn trust_md5_and_scram_connect_and_identify() {
    let pg = crate::support::pg::shared();
    let db = pg.create_database().unwrap();
    let configs = [
        ("trust", cfg(&pg.url(&db))),
        (
            "md5",
            cfg_as(
                pg,
                crate::support::pg::MD5_USER,
                crate::support::pg::TEST_PASSWORD,
                &db,
            ),
        ),
        (
            "scram",
            cfg_as(
                pg,
                crate::support::pg::SCRAM_USER,
                crate::support::pg::TEST_PASSWORD,
                &db,
            ),
        ),
    ];
    for (method, config) in configs {
        // The shared server asks md5_user for MD5 without TLS: walhook refuses that unless told.
        let mut config = walhook::pg::tls::PgConfig::from(config);
        config.allow_insecure_password(method == "md5");
        let mut c = ReplicationClient::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let info = c.identify_system().await.unwrap();
        assert!(info.xlogpos > Lsn(0), "{info:?}");
        assert!(info.timeline >= 1);
        assert!(!info.system_id.is_empty());
        assert_eq!(info.dbname.as_deref(), Some(db.as_str()));
        assert!(!c.is_tls());
        assert!(c.parameter_status("server_version").is_some());
    }
}

#[tokio::test]
async fn wrong_scram_password_is_a_permanent_auth_error_without_the_password() {
    let pg = crate::support::pg::shared();
    let db = pg.create_database().unwrap();
    let wrong = "Wr0ng-Pa55word";
    let err = ReplicationClient::connect(&cfg_as(pg, crate::support::pg::SCRAM_USER, wrong, &db))
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, SourceError::Auth(_)), "{err:?}");
    assert!(!err.is_retryable());
    let text = format!("{err} {err:?}");
    assert!(!text.contains(wrong), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
}

#[tokio::test]
async fn session_settings_are_pinned() {
    let pg = crate::support::pg::shared();
    let db = pg.create_database().unwrap();
    let mut c = ReplicationClient::connect(&cfg(&pg.url(&db)))
        .await
        .unwrap();
    for (name, want) in [
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("extra_float_digits", "3"),
        ("bytea_output", "hex"),
        ("IntervalStyle", "postgres"),
        ("client_encoding", "UTF8"),
    ] {
        let rows = c.simple_query(&format!("SHOW {name}")).await.unwrap();
        let got = rows[0][0].clone().unwrap();
        assert!(got.starts_with(want), "{name}: {got}");
    }
}

#[tokio::test]
async fn server_errors_carry_sqlstate_and_keep_the_connection_usable() {
    let pg = crate::support::pg::shared();
    let db = pg.create_database().unwrap();
    let c = ReplicationClient::connect(&cfg(&pg.url(&db)))
        .await
        .unwrap();
    let err = c
        .start_logical("no_such_slot", Lsn(0), &[("proto_version", "1")])
        .await
        .err()
        .expect("must fail");
    assert_eq!(err.code(), Some("42704"), "{err}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .starts_with("server error 42704: replication slot"),
        "{err}"
    );

    let mut c = ReplicationClient::connect(&cfg(&pg.url(&db)))
        .await
        .unwrap();
    let err = c.simple_query("SELECT * FROM nope").await.unwrap_err();
    assert_eq!(err.code(), Some("42P01"), "{err}");
    let rows = c.simple_query("SELECT 1, NULL::text").await.unwrap();
    assert_eq!(rows, vec![vec![Some("1".to_string()), None]]);
}

#[tokio::test]
async fn streams_begin_relation_insert_commit_and_finishes_cleanly() {
    let (db, start, mut stream) = streaming("walhook_test_stream").await;
    assert!(start > Lsn(0));

    let db2 = db.clone();
    tokio::task::spawn_blocking(move || {
        crate::support::pg::shared()
            .psql(&db2, "INSERT INTO t VALUES (1, 'it''s')")
            .unwrap()
    })
    .await
    .unwrap();

    let mut tags = Vec::new();
    let mut commit_end = Lsn(0);
    while tags.last() != Some(&b'C') {
        match next_event(&mut stream).await {
            ReplicationEvent::XLogData { data, wal_end, .. } => {
                tags.push(data[0]);
                commit_end = wal_end;
            }
            ReplicationEvent::Keepalive { .. } => {}
        }
    }
    assert_eq!(tags, b"BRIC".to_vec());
    assert!(commit_end > start);
    stream
        .send_status(commit_end, commit_end, commit_end, false)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), stream.finish())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn reply_requested_status_yields_a_keepalive() {
    let (db, start, mut stream) = streaming("walhook_test_ka").await;
    stream.send_status(start, start, start, true).await.unwrap();
    loop {
        if let ReplicationEvent::Keepalive { wal_end, .. } = next_event(&mut stream).await {
            // The walsender reports how far it has read, which begins at the slot's restart
            // point and so may lie below `start` (CI saw it); it never passes the server's WAL.
            let server_end: Lsn = crate::support::pg::shared()
                .psql(&db, "SELECT pg_current_wal_lsn()")
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                wal_end > Lsn(0) && wal_end <= server_end,
                "keepalive wal_end {wal_end} outside (0, {server_end}]"
            );
            break;
        }
    }
    stream.finish().await.unwrap();
}

#[tokio::test]
async fn next_is_cancel_safe_under_select() {
    let (db, _start, mut stream) = streaming("walhook_test_cancel").await;
    // Large rows arrive in many reads; a tiny timer cancels next() between them.
    let db2 = db.clone();
    tokio::task::spawn_blocking(move || {
        crate::support::pg::shared()
            .psql(
                &db2,
                "INSERT INTO t SELECT g, repeat('x', 200000) FROM generate_series(1, 20) g",
            )
            .unwrap()
    })
    .await
    .unwrap();
    let mut inserts = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while inserts < 20 {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::select! {
            ev = stream.next() => {
                if let ReplicationEvent::XLogData { data, .. } = ev.unwrap().unwrap() {
                    if data[0] == b'I' {
                        assert!(data.len() > 200000);
                        inserts += 1;
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_micros(50)) => {}
        }
    }
    stream.finish().await.unwrap();
}

#[tokio::test]
async fn sslmode_require_fails_clearly_and_prefer_falls_back() {
    let pg = crate::support::pg::shared();
    let db = pg.create_database().unwrap();
    let plain = pg.url(&db);
    let require = plain.replace("sslmode=disable", "sslmode=require");
    let prefer = plain.replace("sslmode=disable", "sslmode=prefer");

    let err = ReplicationClient::connect(&cfg(&require))
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, SourceError::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("does not support TLS"), "{err}");
    assert!(!err.is_retryable());

    let mut c = ReplicationClient::connect(&cfg(&prefer)).await.unwrap();
    assert!(!c.is_tls());
    c.identify_system().await.unwrap();

    let sql = connect_sql(&cfg(&prefer)).await.unwrap();
    let row = sql.query_one("SELECT 1::int4", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert!(connect_sql(&cfg(&require)).await.is_err());
}

#[test]
fn malformed_copy_data_is_a_protocol_error() {
    for body in [
        &b""[..],
        b"w",
        b"w\0\0\0\0\0\0\0\x01",
        b"k\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        b"?junk",
    ] {
        let r = parse_copy_data(Bytes::copy_from_slice(body));
        assert!(
            matches!(r, Err(SourceError::Protocol(_))),
            "{body:?}: {r:?}"
        );
    }
}

/// A server with a self-signed certificate; `None` if openssl is unavailable.
fn tls_server() -> Option<(PgServer, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let crt = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-days",
            "2",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-newkey", "rsa:2048", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&crt, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The server runs as an unprivileged user when we are root and insists on owning its key.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        for name in ["postgres", "nobody"] {
            let cname = std::ffi::CString::new(name).unwrap();
            // SAFETY: getpwnam returns null or a pointer to a valid passwd we copy at once.
            let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
            if !pw.is_null() {
                // SAFETY: pw is non-null.
                let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
                std::os::unix::fs::chown(&key, Some(uid), Some(gid)).unwrap();
                std::os::unix::fs::chown(&crt, Some(uid), Some(gid)).unwrap();
                break;
            }
        }
    }
    let server = PgServer::start(&[
        ("ssl", "on"),
        ("ssl_cert_file", crt.to_str().unwrap()),
        ("ssl_key_file", key.to_str().unwrap()),
    ])
    .unwrap();
    crate::support::pg::add_password_roles(&server);
    Some((server, dir))
}

#[tokio::test]
async fn sslmode_require_encrypts_replication_and_sql_connections() {
    let Some((pg, _dir)) = tls_server() else {
        eprintln!("openssl not available; skipping");
        return;
    };
    let db = pg.create_database().unwrap();
    let (scram, md5) = (crate::support::pg::SCRAM_USER, crate::support::pg::MD5_USER);
    let password = crate::support::pg::TEST_PASSWORD;
    for (method, mut config) in [
        ("trust", cfg(&pg.url(&db))),
        ("scram", cfg_as(&pg, scram, password, &db)),
        ("md5", cfg_as(&pg, md5, password, &db)),
    ] {
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
        let mut c = ReplicationClient::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        assert!(c.is_tls());
        c.identify_system().await.unwrap();
        // The server reports its view of the session: encrypted.
        let rows = c.simple_query("SHOW ssl").await.unwrap();
        assert_eq!(rows[0][0].as_deref(), Some("on"));

        let sql = connect_sql(&config).await.unwrap();
        let row = sql
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0));
    }
}

/// MD5 is refused only without TLS: with `sslmode=prefer` against a server that accepts TLS,
/// the guard sees the handshake start and lets the MD5 exchange through, without any opt-in.
#[tokio::test]
async fn md5_over_tls_with_prefer_is_accepted() {
    let Some((pg, _dir)) = tls_server() else {
        eprintln!("openssl not available; skipping");
        return;
    };
    let db = pg.create_database().unwrap();
    let url = pg
        .url_as(
            crate::support::pg::MD5_USER,
            crate::support::pg::TEST_PASSWORD,
            &db,
        )
        .replace("sslmode=disable", "sslmode=prefer");
    let config = walhook::pg::tls::PgConfig::parse(&url).unwrap();
    assert!(!config.insecure_password_allowed());
    let sql = connect_sql(&config).await.unwrap();
    let row = sql
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    let pooled = walhook::pg::tls::pool(&config, 1).get().await.unwrap();
    pooled.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn connects_over_a_unix_socket() {
    let pg = crate::support::pg::shared();
    let db = pg.create_database().unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(pg.socket_dir())
        .port(pg.port())
        .user(embedded_pg::SUPERUSER)
        .dbname(&db)
        .application_name("walhook-test");
    let mut c = ReplicationClient::connect(&config).await.unwrap();
    let rows = c.simple_query("SHOW application_name").await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("walhook-test"));
    c.identify_system().await.unwrap();
}
