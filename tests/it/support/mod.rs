//! The one support module of the integration tests: a fresh database per test (a UUID-named
//! database on the shared throw-away server), config texts, the in-process daemon (`daemon`), the
//! spawned binary (`bin`), receivers (`receiver`), and an in-process pipeline whose routed
//! payloads arrive on a channel.
//!
//! Nothing leaves the machine: every config text built here, every config file written here and
//! every subscription the API tests store goes through [`assert_loopback`], which fails the test
//! when a subscription URL's host is not loopback (127.0.0.0/8, ::1, localhost).
#![allow(dead_code)]

pub mod bin;
pub mod daemon;
pub mod pg;
pub mod receiver;

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use walhook::config::Config;
use walhook::embedded_pg::PgServer;
use walhook::model::change::RowChange;
use walhook::model::Lsn;
use walhook::route::{Routed, Router};
use walhook::source::stream::Sink;
use walhook::source::SourceError;

pub struct TestDb {
    pub pg: &'static PgServer,
    pub name: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        let pg = pg::shared();
        let name = pg.create_database().expect("create test database");
        TestDb { pg, name }
    }

    pub fn url(&self) -> String {
        self.pg.url(&self.name)
    }

    /// Runs SQL through psql; panics with the server's message on error.
    pub fn sql(&self, sql: &str) -> String {
        self.pg
            .psql(&self.name, sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Where a stalled daemon stands, for a failure message: the outbox's deliveries by
    /// status, its checkpoint, the walsender, and this database's sessions with their waits.
    pub fn stall_report(&self) -> String {
        let q = |sql: &str| {
            self.pg
                .psql(&self.name, sql)
                .unwrap_or_else(|e| e.to_string())
        };
        format!(
            "outbox: {}; checkpoint: {}; walsender: {}; slot: {}; publications: {}; sessions: {}",
            q("SELECT coalesce(string_agg(status || ' ' || n, ', '), 'empty') FROM (SELECT status, count(*) n FROM walhook.delivery_states GROUP BY 1) x"),
            q("SELECT coalesce(string_agg(commit_lsn::text, ','), '-') FROM walhook.checkpoint"),
            q("SELECT coalesce(string_agg(r.state || ' sent ' || r.sent_lsn || ' ' || coalesce(a.wait_event, '-'), '; '), 'none') FROM pg_stat_replication r JOIN pg_stat_activity a USING (pid) WHERE a.datname = current_database()"),
            // Where the slot stands against the end of WAL, and whether the server decoded and
            // sent any transaction of it (a stall before the walsender or after it).
            q("SELECT coalesce(string_agg(format('restart %s confirmed %s wal end %s decoded txns %s bytes %s', s.restart_lsn, s.confirmed_flush_lsn, pg_current_wal_lsn(), t.total_txns, t.total_bytes), '; '), 'none') FROM pg_replication_slots s LEFT JOIN pg_stat_replication_slots t USING (slot_name) WHERE s.database = current_database()"),
            q("SELECT coalesce(string_agg(format('%s (insert %s update %s delete %s viaroot %s) tables %s', p.pubname, p.pubinsert, p.pubupdate, p.pubdelete, p.pubviaroot, (SELECT string_agg(r.prrelid::regclass::text, ',') FROM pg_publication_rel r WHERE r.prpubid = p.oid)), '; '), 'none') FROM pg_publication p"),
            q("SELECT coalesce(string_agg(pid || ' ' || coalesce(state, '-') || ' ' || coalesce(wait_event_type || ':' || wait_event, '-') || ' ' || left(regexp_replace(query, '\\s+', ' ', 'g'), 60), '; '), 'none') FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"),
        )
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    }

    /// A client of this database with walhook's outbox schema (`walhook`) created in it, for
    /// tests that read or write the outbox without a daemon.
    pub async fn outbox(&self) -> (tokio_postgres::Client, walhook::outbox::Schema) {
        let mut client = self.client().await;
        let schema = walhook::outbox::Schema::new("walhook");
        walhook::outbox::migrate(&mut client, &schema)
            .await
            .expect("create the outbox schema");
        (client, schema)
    }

    /// A config for this database with the given `[[subscriptions]]` TOML appended.
    pub fn config(&self, subscriptions: &str) -> Config {
        self.config_with_url(&self.url(), subscriptions)
    }

    /// Delivery is off unless `subscriptions` brings its own `[delivery]`; the test receivers'
    /// loopback URLs are private addresses, which subscriptions may name only when allowed.
    pub fn config_with_url(&self, url: &str, subscriptions: &str) -> Config {
        let delivery = if subscriptions.contains("[delivery]") {
            ""
        } else {
            DELIVERY_OFF
        };
        let text = format!(
            "[source]\nurl = \"{url}\"\n[project]\nid = \"test-project\"\n{delivery}{subscriptions}"
        );
        assert_loopback_config(&text);
        Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A subscription block for `table` and `events`, with extra TOML lines.
/// A loopback port free at the time of the call (for a daemon's API listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn sub(id: &str, table: &str, events: &str, extra: &str) -> String {
    format!(
        "[[subscriptions]]\nid = \"{id}\"\ntable = \"{table}\"\nevents = {events}\n\
         url = \"https://127.0.0.1:9/{id}\"\nsecret = \"whsec_test\"\n{extra}\n"
    )
}

/// `[delivery]` for daemons whose deliveries must stay in the outbox (nothing is sent at all).
/// Subscriptions still name loopback URLs, which the egress rules allow only when told to.
pub const DELIVERY_OFF: &str =
    "[delivery]\nenabled = false\nallow_http = true\nallow_private_networks = true\n";

/// A `walhook run` config: source `url` and `slot`, project `project`, then `sections` (e.g.
/// `[delivery]`, `[outbox]`, `[api]`) and `[[subscriptions]]` blocks. Fails the test when a
/// subscription URL is not on loopback.
pub fn config_text(url: &str, slot: &str, project: &str, sections: &str, subs: &str) -> String {
    let text = format!(
        "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\n[project]\nid = \"{project}\"\n{sections}\n{subs}"
    );
    assert_loopback_config(&text);
    text
}

/// Writes a config file (after the loopback guard); the file lives as long as the handle.
pub fn write_config(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    rewrite_config(f.path(), text);
    f
}

/// Replaces a config file's text (after the loopback guard), e.g. before a SIGHUP.
pub fn rewrite_config(path: &std::path::Path, text: &str) {
    assert_loopback_config(text);
    std::fs::write(path, text).unwrap();
}

/// Fails the test unless `url` parses and its host is loopback: 127.0.0.0/8, ::1 or localhost.
pub fn assert_loopback(url: &str) {
    let parsed =
        reqwest::Url::parse(url).unwrap_or_else(|e| panic!("subscription URL {url:?}: {e}"));
    let host = parsed.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    assert!(
        ok,
        "a test may only target loopback, but a subscription points at {url:?}"
    );
}

/// [`assert_loopback`] for every `[[subscriptions]]` URL of a config text. Texts that do not
/// parse as TOML are left to the product to refuse (tests of broken configs).
pub fn assert_loopback_config(text: &str) {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return;
    };
    let subs = doc.get("subscriptions").and_then(|s| s.as_array());
    for s in subs.into_iter().flatten() {
        if let Some(url) = s.get("url").and_then(|u| u.as_str()) {
            assert_loopback(url);
        }
    }
}

pub struct ChannelSink {
    pub router: Router,
    pub tx: mpsc::UnboundedSender<Routed>,
    pub changes: Option<mpsc::UnboundedSender<RowChange>>,
}

impl Sink for ChannelSink {
    type Error = SourceError;
    async fn begin(&mut self, _: Lsn, _: i64) -> Result<(), SourceError> {
        Ok(())
    }
    async fn change(&mut self, change: RowChange) -> Result<(), SourceError> {
        let mut out = Vec::new();
        self.router.route(&change, &mut out);
        for r in out {
            let _ = self.tx.send(r);
        }
        if let Some(c) = &self.changes {
            let _ = c.send(change);
        }
        Ok(())
    }
    async fn commit(&mut self, _: Lsn, end: Lsn) -> Result<Lsn, SourceError> {
        Ok(end)
    }
}

pub struct Pipeline {
    pub rx: mpsc::UnboundedReceiver<Routed>,
    pub changes: mpsc::UnboundedReceiver<RowChange>,
    pub cancel: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<Lsn, SourceError>>,
}

/// Starts tail's pipeline in-process (temporary slot); returns once streaming has begun.
pub async fn start(config: &Config) -> Result<Pipeline, SourceError> {
    let router = walhook::cmd::tail::router(config, None)?;
    let source = walhook::cmd::tail::start_temporary(config, &router).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (ctx, changes) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move {
        let mut sink = ChannelSink {
            router,
            tx,
            changes: Some(ctx),
        };
        source.run(&mut sink, &c).await
    });
    Ok(Pipeline {
        rx,
        changes,
        cancel,
        task,
    })
}

impl Pipeline {
    /// Waits for `n` routed payloads (10 s at most), returning (subscription, parsed body).
    pub async fn take(&mut self, n: usize) -> Vec<(String, Value)> {
        let mut got = Vec::new();
        while got.len() < n {
            match tokio::time::timeout(Duration::from_secs(10), self.rx.recv()).await {
                Ok(Some(r)) => got.push((
                    r.subscription.to_string(),
                    serde_json::from_str(&r.body).unwrap(),
                )),
                _ => panic!("expected {n} payloads, got {}: {got:#?}", got.len()),
            }
        }
        got
    }

    /// Asserts nothing more arrives within `ms`.
    pub async fn assert_quiet(&mut self, ms: u64) {
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(ms), self.rx.recv()).await {
            panic!("unexpected payload for {}: {}", r.subscription, r.body);
        }
    }

    pub async fn stop(self) -> Lsn {
        self.cancel.cancel();
        self.task
            .await
            .expect("join")
            .expect("source loop ended with an error")
    }
}

/// Drops the fields that depend on time and WAL position, checking their shape.
pub fn strip_volatile(mut v: Value) -> Value {
    let obj = v.as_object_mut().unwrap();
    let id = obj.remove("id").unwrap();
    let id = id.as_str().unwrap();
    assert!(
        id.starts_with("evt_") && id.len() == 28 && id[4..].chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    let ts = obj.remove("timestamp").unwrap();
    let ts = ts.as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'),
        "{ts}"
    );
    v
}

/// Polls `sql` (one value) on database `db` of `pg` until it returns `want`, for up to
/// `timeout`; errors count as "not yet" (the server may be restarting). Returns whether it did,
/// for callers that first gather diagnostics and then assert.
pub async fn poll_value(pg: &PgServer, db: &str, sql: &str, want: &str, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if pg.psql(db, sql).map(|v| v == want).unwrap_or(false) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_loopback_guard_refuses_every_other_host() {
    for ok in [
        "https://127.0.0.1:9/h",
        "http://127.0.0.1:8080",
        "https://127.1.2.3/x",
        "http://localhost:1/",
        "http://[::1]:5/",
    ] {
        assert_loopback(ok);
    }
    for bad in [
        "https://example.com/h",
        "https://your-app.example.com/webhooks/orders",
        "https://10.1.2.3/h",
        "http://[::ffff:10.0.0.1]/",
        "https://localhost.example.com/",
        "not a url",
    ] {
        assert!(
            std::panic::catch_unwind(|| assert_loopback(bad)).is_err(),
            "{bad} passed the guard"
        );
    }
    let config = "[[subscriptions]]\nid = \"s\"\ntable = \"t\"\nurl = \"https://example.com/s\"\n";
    assert!(std::panic::catch_unwind(|| assert_loopback_config(config)).is_err());
}

pub use walhook::embedded_pg::slot_streaming_sql;
