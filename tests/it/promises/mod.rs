//! README's promises that no other test covered (issue 17 §4), one file per theme. Each test
//! drives the product the way README tells an operator to, and asserts what README says the
//! operator observes; each fails when that promise breaks.

mod outbox_elsewhere;
mod quickstart;
mod readyz;
mod refusals;
mod retention;
mod rotation;
mod secrets;
mod shutdown;
mod tables;
mod tail;

use std::process::Stdio;
use std::time::Duration;

use crate::support::bin::{self, Walhook};
use crate::support::TestDb;

/// `walhook run` on the config `text` (written to a file that lives as long as the handle),
/// with `env` set, logging to a file named after `name`; returns once it streams.
pub async fn run_streaming(
    name: &str,
    text: &str,
    env: &[(&str, &str)],
) -> (Walhook, tempfile::NamedTempFile) {
    let (mut child, cfg) = spawn_run(name, text, env);
    child.wait_log("streaming", Duration::from_secs(30)).await;
    (child, cfg)
}

/// `walhook run` on the config `text`, not waiting for anything.
pub fn spawn_run(
    name: &str,
    text: &str,
    env: &[(&str, &str)],
) -> (Walhook, tempfile::NamedTempFile) {
    let cfg = crate::support::write_config(text);
    let mut cmd = bin::with_config("run", cfg.path());
    cmd.stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    (Walhook::spawn_logging(cmd, &bin::log_path(name)), cfg)
}

/// Drops the test's slot (slots are cluster-wide and pin WAL on the shared server).
pub fn drop_slot(db: &TestDb, slot: &str) {
    db.sql(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = '{slot}' AND NOT active"
    ));
}

/// A subscription to `table` delivering every event to `url`, signed with `secret`.
pub fn subscription(id: &str, table: &str, url: &str, secret: &str) -> String {
    format!(
        "[[subscriptions]]\nid = \"{id}\"\ntable = \"{table}\"\n\
         events = [\"INSERT\", \"UPDATE\", \"DELETE\"]\nurl = \"{url}\"\nsecret = \"{secret}\"\n"
    )
}

/// `[delivery]` for a loopback plain-HTTP receiver, polled often.
pub const LOOPBACK_DELIVERY: &str =
    "[delivery]\nallow_http = true\nallow_private_networks = true\n\
    poll_interval = \"100ms\"\n";
