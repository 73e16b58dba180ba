//! TLS that operators can trust, end to end with certificates made by the `openssl` CLI:
//! - delivery over HTTPS to a receiver behind a private CA (`[delivery] ca_file`): accepted with
//!   the right CA and name, refused (attempt recorded as `tls`, nothing sent) for a certificate
//!   naming another host or signed by another CA;
//! - the source's `sslmode=verify-full` / `verify-ca` / `require` with `sslrootcert`, for SQL
//!   connections and the hand-written replication connection, against a Postgres with ssl=on,
//!   with SCRAM channel binding required.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walhook::embedded_pg::PgServer;
use walhook::pg::tls::{connect_sql, PgConfig};
use walhook::pg::PgError;
use walhook::source::conn::{ReplicationClient, ReplicationEvent};
use walhook::source::error::SourceError;

use crate::support::daemon::{fast_delivery, wait_value, Daemon};
use crate::support::pg::{add_password_roles, SCRAM_USER, TEST_PASSWORD};
use crate::support::receiver::hmac_hex;
use crate::support::TestDb;

/// Test certificates: `ca` signs `db` (db.test and 127.0.0.1) and `other` (other.test only);
/// `rogue_ca` signs `rogue` (127.0.0.1). Files are owned by the Postgres server's user, keys 0600.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("walhook-pki-")
            .tempdir()
            .unwrap()
            .keep();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "rogue_ca"] {
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            let (key, pem, subj) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN={ca}"),
            );
            args.extend(["-keyout", &key, "-out", &pem, "-days", "3", "-subj", &subj]);
            args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
            args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            openssl(&dir, &args);
        }
        for (leaf, ca, san) in [
            ("db", "ca", "DNS:db.test,IP:127.0.0.1"),
            ("other", "ca", "DNS:other.test"),
            ("rogue", "rogue_ca", "IP:127.0.0.1"),
        ] {
            let ext = format!(
                "subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            );
            std::fs::write(dir.join(format!("{leaf}.ext")), ext).unwrap();
            let (key, csr, pem) = (
                format!("{leaf}.key"),
                format!("{leaf}.csr"),
                format!("{leaf}.pem"),
            );
            let mut args = vec!["req", "-new"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=walhook test"]);
            openssl(&dir, &args);
            let (ca_pem, ca_key, ext) = (
                format!("{ca}.pem"),
                format!("{ca}.key"),
                format!("{leaf}.ext"),
            );
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca_pem,
                    "-CAkey",
                    &ca_key,
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "3",
                    "-sha256",
                    "-extfile",
                    &ext,
                ],
            );
        }
        // Postgres refuses a key file that its user does not own or that others can read.
        let owner = std::fs::metadata(crate::support::pg::shared().socket_dir()).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            std::os::unix::fs::chown(&p, Some(owner.uid()), Some(owner.gid())).unwrap();
            let mode = if p.extension().is_some_and(|e| e == "key") {
                0o600
            } else {
                0o644
            };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        Pki { dir }
    })
}

/// Each request's lower-cased head and its body.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A minimal HTTPS receiver on 127.0.0.1: records each request's head and body, answers 200.
struct HttpsReceiver {
    url: String,
    requests: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn https_receiver(leaf: &str) -> HttpsReceiver {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pki = pki();
    let certs = CertificateDer::pem_file_iter(pki.path(&format!("{leaf}.pem")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{leaf}.key"))).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let requests: Seen = Arc::default();
    let seen = requests.clone();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                // A refused handshake ends here: the client never sends a request.
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while buf.len() < head_end + len {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push((head, buf[head_end..head_end + len].to_vec()));
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    HttpsReceiver {
        url: format!("https://{addr}/hook"),
        requests,
        task,
    }
}

const SECRET: &str = "whsec_tls_test";

fn subscription(id: &str, url: &str) -> String {
    format!(
        "[[subscriptions]]\nid = \"{id}\"\ntable = \"orders\"\nevents = [\"INSERT\"]\n\
         url = \"{url}\"\nsecret = \"{SECRET}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_trusts_ca_file_and_refuses_other_names_and_cas() {
    let pki = pki();
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, total numeric(12,2))");
    let good = https_receiver("db").await;
    let wrong_host = https_receiver("other").await;
    let wrong_ca = https_receiver("rogue").await;
    let delivery = fast_delivery(&format!(
        "retry_schedule = [\"0s\"]\nbreaker_failures = 100\nca_file = \"{}\"",
        pki.path("ca.pem").display()
    ));
    let subs = [
        subscription("good", &good.url),
        subscription("wronghost", &wrong_host.url),
        subscription("wrongca", &wrong_ca.url),
    ]
    .concat();
    let d = Daemon::start(&db, &delivery, &subs).await;
    db.sql("INSERT INTO orders VALUES (7, 12.50)");
    wait_value(
        &db,
        "SELECT string_agg(d.subscription_id || ':' || coalesce(a.http_status::text, a.error_kind), \
         ',' ORDER BY d.subscription_id) FROM walhook.all_attempts a \
         JOIN walhook.delivery_states d ON d.id = a.delivery_id",
        "good:200,wrongca:tls,wronghost:tls",
        30,
    )
    .await;
    let errors = db.sql(
        "SELECT string_agg(last_error, ' | ' ORDER BY subscription_id) FROM walhook.delivery_states \
         WHERE subscription_id <> 'good'",
    );
    assert!(errors.contains("UnknownIssuer"), "{errors}");
    assert!(errors.contains("set [delivery] ca_file"), "{errors}");
    assert!(errors.contains("not valid for name"), "{errors}");
    d.stop().await;

    let got = good.requests.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let (head, body) = &got[0];
    let hex = hmac_hex(SECRET, body);
    assert!(
        head.contains(&format!("x-archie-signature: sha256={hex}")),
        "{head}"
    );
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(json["event"], "INSERT");
    assert_eq!(json["record"]["id"], 7);
    assert!(wrong_host.requests.lock().unwrap().is_empty());
    assert!(wrong_ca.requests.lock().unwrap().is_empty());
}

#[test]
fn a_bad_ca_file_is_a_config_error_naming_the_key() {
    let db = "[source]\nurl = \"postgres://u@127.0.0.1/db\"\n[project]\nid = \"p\"\n";
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    for (file, problem) in [
        (
            "/nonexistent/ca.pem".to_string(),
            "cannot read /nonexistent/ca.pem",
        ),
        (junk.path().display().to_string(), "not valid PEM"),
    ] {
        let text = format!("{db}[delivery]\nca_file = \"{file}\"\n");
        let e = walhook::config::Config::parse(&text, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("delivery.ca_file") && e.contains(problem), "{e}");
    }
}

/// A throw-away server with ssl=on and the `db` certificate; SCRAM for SCRAM_USER over TCP.
fn tls_pg() -> &'static PgServer {
    static PG: OnceLock<PgServer> = OnceLock::new();
    PG.get_or_init(|| {
        let pki = pki();
        let (cert, key) = (pki.path("db.pem"), pki.path("db.key"));
        let pg = PgServer::start(&[
            ("ssl", "on"),
            ("ssl_cert_file", cert.to_str().unwrap()),
            ("ssl_key_file", key.to_str().unwrap()),
        ])
        .expect("start a Postgres with ssl=on");
        add_password_roles(&pg);
        pg
    })
}

/// SCRAM_USER at 127.0.0.1 under the name `host`, with channel binding required.
fn url(host: &str, tls: &str) -> String {
    let password = TEST_PASSWORD.replace('@', "%40");
    format!(
        "postgres://{SCRAM_USER}:{password}@{host}:{}/postgres?hostaddr=127.0.0.1&{tls}",
        tls_pg().port()
    )
}

fn ca(name: &str) -> String {
    format!("sslrootcert={}", pki().path(name).display())
}

async fn sql(url: &str) -> Result<(), PgError> {
    let cfg: PgConfig = url.parse().unwrap();
    let client = connect_sql(&cfg).await?;
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    Ok(())
}

async fn replication(url: &str) -> Result<ReplicationClient, SourceError> {
    let cfg: PgConfig = url.parse().unwrap();
    ReplicationClient::connect(&cfg).await
}

#[tokio::test]
async fn verify_full_accepts_the_right_ca_and_host_and_streams_a_change() {
    let pg = tls_pg();
    let db = pg.create_database().unwrap();
    pg.psql(
        &db,
        "CREATE TABLE t(id int primary key); CREATE PUBLICATION p FOR TABLE t;",
    )
    .unwrap();
    let ok = url(
        "db.test",
        &format!(
            "sslmode=verify-full&{}&channel_binding=require",
            ca("ca.pem")
        ),
    )
    .replace("/postgres?", &format!("/{db}?"));
    sql(&ok).await.unwrap();

    let mut c = replication(&ok).await.unwrap();
    assert!(c.is_tls());
    let start = c.create_temporary_slot("tls_slot").await.unwrap();
    let mut stream = c
        .start_logical(
            "tls_slot",
            start,
            &[("proto_version", "1"), ("publication_names", "p")],
        )
        .await
        .unwrap();
    pg.psql(&db, "INSERT INTO t VALUES (1)").unwrap();
    let mut tags = Vec::new();
    while tags.last() != Some(&'C') {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .expect("stream open");
        if let ReplicationEvent::XLogData { data, .. } = ev {
            tags.push(walhook::source::pgoutput::decode(data).unwrap().tag());
        }
    }
    assert_eq!(tags, ['B', 'R', 'I', 'C']);
}

#[tokio::test]
async fn verify_full_refuses_another_host_name() {
    let wrong = url(
        "wrong.test",
        &format!("sslmode=verify-full&{}", ca("ca.pem")),
    );
    let e = sql(&wrong).await.unwrap_err();
    assert!(matches!(e, PgError::Tls(_)) && !e.is_retryable(), "{e:?}");
    let e = replication(&wrong).await.err().expect("refused");
    assert!(
        matches!(e, SourceError::Tls(_)) && !e.is_retryable(),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("\"wrong.test\"") && text.contains("verify-full"),
        "{text}"
    );
    assert!(text.contains("not valid for name"), "{text}");
    // verify-ca checks the chain only, like libpq; require checks nothing.
    sql(&url(
        "wrong.test",
        &format!("sslmode=verify-ca&{}", ca("ca.pem")),
    ))
    .await
    .unwrap();
    replication(&url("wrong.test", "sslmode=require"))
        .await
        .unwrap();
}

#[tokio::test]
async fn verify_ca_refuses_a_certificate_from_another_ca() {
    for mode in ["verify-ca", "verify-full", "require"] {
        // With an sslrootcert file, require behaves like verify-ca (libpq's rule).
        let wrong = url("db.test", &format!("sslmode={mode}&{}", ca("rogue_ca.pem")));
        let e = sql(&wrong).await.unwrap_err();
        assert!(matches!(e, PgError::Tls(_)), "{mode}: {e:?}");
        let e = replication(&wrong).await.err().expect("refused");
        let text = e.to_string();
        assert!(matches!(e, SourceError::Tls(_)), "{mode}: {e:?}");
        assert!(
            text.contains("UnknownIssuer") && text.contains("sslrootcert"),
            "{text}"
        );
    }
    // The built-in roots do not include a private CA.
    let e = sql(&url("db.test", "sslmode=verify-full"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
}
