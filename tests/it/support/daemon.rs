//! `walhook run` in-process against a test database, with handles to its metrics and state.
#![allow(dead_code)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use walhook::app::Handles;
use walhook::config::Config;

use super::TestDb;

/// Delivery settings for tests: loopback HTTP allowed, a compressed schedule, short timeouts.
pub fn fast_delivery(extra: &str) -> String {
    format!(
        "[delivery]\nallow_http = true\nallow_private_networks = true\n\
         connect_timeout = \"1s\"\ntimeout = \"1s\"\nlease = \"3s\"\npoll_interval = \"100ms\"\n{extra}\n"
    )
}

pub struct Daemon {
    pub handles: Handles,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), walhook::app::AppError>>,
}

/// A config for `db` (its name is the slot: slots are cluster-wide), project `test-project`.
pub fn config_text(db: &TestDb, delivery: &str, subs: &str) -> String {
    super::config_text(&db.url(), &db.name, "test-project", delivery, subs)
}

impl Daemon {
    /// Starts the pipeline and waits until the slot streams (changes from then on are seen).
    pub async fn start(db: &TestDb, delivery: &str, subs: &str) -> Daemon {
        let daemon = Daemon::start_standby(db, delivery, subs).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !daemon.handles.streaming.load(Ordering::Relaxed) {
            assert!(
                !daemon.task.is_finished(),
                "walhook run ended before streaming"
            );
            assert!(Instant::now() < deadline, "not streaming after 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        daemon
    }

    /// Starts without waiting: as a second instance, its source waits for the slot another
    /// instance streams from, and its delivery pumps stand by until they own their subscriptions.
    pub async fn start_standby(db: &TestDb, delivery: &str, subs: &str) -> Daemon {
        Daemon::start_text(&config_text(db, delivery, subs))
    }

    /// [`Daemon::start_standby`] whose every connection carries `application_name`, so that a
    /// test can tell its sessions from another instance's in `pg_stat_activity`.
    pub async fn start_standby_named(
        db: &TestDb,
        application_name: &str,
        delivery: &str,
        subs: &str,
    ) -> Daemon {
        let url = format!("{}&application_name={application_name}", db.url());
        Daemon::start_text(&super::config_text(
            &url,
            &db.name,
            "test-project",
            delivery,
            subs,
        ))
    }

    fn start_text(text: &str) -> Daemon {
        let text = text.to_string();
        let config = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
        let handles = Handles::default();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(walhook::app::run_with(
            None,
            config,
            cancel.clone(),
            handles.clone(),
        ));
        Daemon {
            handles,
            cancel,
            task,
        }
    }

    /// Waits until `walhook_outbox_claims_total` has not moved for `quiet` (the pumps rest or
    /// take rows from memory), failing after `within`; returns the count.
    pub async fn claims_settled(&self, quiet: Duration, within: Duration) -> u64 {
        let claims = || self.handles.metrics.outbox_claims_total();
        let deadline = Instant::now() + within;
        let mut last = (claims(), Instant::now());
        while last.1.elapsed() < quiet {
            assert!(
                Instant::now() < deadline,
                "the pumps kept reading the outbox: {} claims",
                claims()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            if claims() != last.0 {
                last = (claims(), Instant::now());
            }
        }
        last.0
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("walhook run stops within 20 s")
            .expect("no panic")
            .expect("clean exit");
    }
}

/// Polls `sql` (a single value) until it equals `want`, for up to `secs` seconds.
pub async fn wait_value(db: &TestDb, sql: &str, want: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while Instant::now() < deadline {
        last = db.pg.psql(&db.name, sql).unwrap_or_default();
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{sql}: expected {want:?}, last saw {last:?}");
}
