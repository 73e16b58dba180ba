//! kill -9 of `walhook run` while deliveries are in flight: after a restart nothing is lost, and
//! the only duplicates are requests that were in flight at the kill, with the same event id.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::bin::Walhook;
use crate::support::daemon::{config_text, fast_delivery, wait_value};
use crate::support::receiver::{hmac_hex, Answer, Receiver};
use crate::support::TestDb;

const MAX_IN_FLIGHT: usize = 8;

fn spawn(name: &str, cfg: &std::path::Path) -> Walhook {
    Walhook::run(name, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_delivery_loses_nothing_and_duplicates_only_what_was_in_flight() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    let rx = Receiver::scripted(|_, _| Answer::Slow(Duration::from_millis(30))).await;
    let cfg = crate::support::write_config(&config_text(
        &db,
        &fast_delivery(&format!("max_in_flight = {MAX_IN_FLIGHT}")),
        &format!(
            "[[subscriptions]]\nid = \"s\"\ntable = \"orders\"\nevents = [\"INSERT\"]\n\
                 url = \"{}\"\nsecret = \"k\"\n",
            rx.url
        ),
    ));
    let mut first = spawn(&format!("crash-first-{}", db.name), cfg.path());
    // The slot exists once the outbox checkpoint row or the slot appears.
    wait_value(
        &db,
        &format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}' AND active",
            db.name
        ),
        "1",
        20,
    )
    .await;
    db.sql("INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 400) g");
    rx.wait_for(80, Duration::from_secs(30)).await;
    let killed_at = Instant::now();
    first.sigkill().await;
    let before_restart = rx.count();

    let mut second = spawn(&format!("crash-second-{}", db.name), cfg.path());
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') FROM walhook.deliveries",
        "400",
        60,
    )
    .await;
    second.sigkill().await;

    let reqs = rx.snapshot();
    let mut by_event: HashMap<String, Vec<Instant>> = HashMap::new();
    for r in &reqs {
        assert_eq!(r.header("x-webhook-signature"), hmac_hex("k", &r.body));
        let body = r.json();
        assert_eq!(r.header("x-archie-delivery"), body["id"].as_str().unwrap());
        by_event
            .entry(body["id"].as_str().unwrap().to_string())
            .or_default()
            .push(r.at);
    }
    assert_eq!(by_event.len(), 400, "every change arrived");
    let dups: Vec<(&String, &Vec<Instant>)> =
        by_event.iter().filter(|(_, at)| at.len() > 1).collect();
    eprintln!(
        "requests before kill: {before_restart}, total: {}, duplicated events: {}",
        reqs.len(),
        dups.len()
    );
    // In flight = sent and not yet recorded: at most the in-flight cap plus the claimed queue.
    assert!(dups.len() <= 2 * MAX_IN_FLIGHT, "{} duplicates", dups.len());
    for (id, at) in &dups {
        assert_eq!(at.len(), 2, "{id} sent {} times", at.len());
        assert!(
            at[0] < killed_at,
            "{id}: first copy was sent before the kill"
        );
        assert!(at[1] > killed_at, "{id}: second copy after the restart");
    }
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.deliveries WHERE attempts <> 1"),
        "0",
        "an unrecorded attempt is not counted twice"
    );
}
