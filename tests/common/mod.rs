//! Shared test helpers: a fresh database per test on the shared throw-away server, configs, and
//! an in-process pipeline whose routed payloads arrive on a channel.
#![allow(dead_code)]

pub mod daemon;
pub mod receiver;

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use walhook::config::Config;
use walhook::embedded_pg::{self, PgServer};
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
        let pg = embedded_pg::shared();
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

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    }

    /// A config for this database with the given `[[subscriptions]]` TOML appended.
    pub fn config(&self, subscriptions: &str) -> Config {
        self.config_with_url(&self.url(), subscriptions)
    }

    pub fn config_with_url(&self, url: &str, subscriptions: &str) -> Config {
        let text =
            format!("[source]\nurl = \"{url}\"\n[project]\nid = \"test-project\"\n{subscriptions}");
        Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A subscription block for `table` and `events`, with extra TOML lines.
pub fn sub(id: &str, table: &str, events: &str, extra: &str) -> String {
    format!(
        "[[subscriptions]]\nid = \"{id}\"\ntable = \"{table}\"\nevents = {events}\n\
         url = \"https://example.com/{id}\"\nsecret = \"whsec_test\"\n{extra}\n"
    )
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
