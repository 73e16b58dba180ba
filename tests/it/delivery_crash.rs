//! kill -9 of `walhook run` while deliveries are in flight: after a restart nothing is lost, and
//! the only duplicates are requests that were in flight at the kill, with the same event id.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::support::bin::Walhook;
use crate::support::daemon::{config_text, fast_delivery, wait_value};
use crate::support::receiver::{hmac_hex, Answer, Receiver, Request};
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
    wait_value(&db, &crate::support::slot_streaming_sql(&db.name), "1", 20).await;
    db.sql("INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 400) g");
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.count() < 80 {
        assert!(
            Instant::now() < deadline,
            "{} of 80 requests after 30 s; {}",
            rx.count(),
            db.stall_report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = Instant::now();
    first.sigkill().await;
    let before_restart = rx.count();

    let mut second = spawn(&format!("crash-second-{}", db.name), cfg.path());
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') FROM walhook.delivery_states",
        "400",
        60,
    )
    .await;
    second.sigkill().await;

    let reqs = rx.snapshot();
    // The first process's connections: those that carried a request before the kill. A request
    // it wrote just before dying may reach the receiver after `killed_at` on a loaded machine,
    // so who sent a copy is told by its connection, not by when it arrived.
    let first_conns: HashSet<std::net::SocketAddr> = reqs
        .iter()
        .filter(|r| r.at < killed_at)
        .map(|r| r.peer)
        .collect();
    let mut by_event: HashMap<String, Vec<&Request>> = HashMap::new();
    for r in &reqs {
        assert_eq!(r.header("x-webhook-signature"), hmac_hex("k", &r.body));
        let body = r.json();
        assert_eq!(r.header("x-archie-delivery"), body["id"].as_str().unwrap());
        by_event
            .entry(body["id"].as_str().unwrap().to_string())
            .or_default()
            .push(r);
    }
    assert_eq!(by_event.len(), 400, "every change arrived");
    let dups: Vec<(&String, &Vec<&Request>)> = by_event
        .iter()
        .filter(|(_, copies)| copies.len() > 1)
        .collect();
    eprintln!(
        "requests before kill: {before_restart}, total: {}, duplicated events: {}",
        reqs.len(),
        dups.len()
    );
    // In flight = sent and not yet recorded: at most the in-flight cap plus the claimed queue.
    assert!(dups.len() <= 2 * MAX_IN_FLIGHT, "{} duplicates", dups.len());
    for (id, copies) in &dups {
        assert_eq!(copies.len(), 2, "{id} sent {} times", copies.len());
        assert!(
            first_conns.contains(&copies[0].peer),
            "{id}: first copy was sent by the killed process"
        );
        assert!(
            !first_conns.contains(&copies[1].peer) && copies[1].at > killed_at,
            "{id}: second copy by the restarted process"
        );
    }
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.delivery_states WHERE attempts <> 1"),
        "0",
        "an unrecorded attempt is not counted twice"
    );
}
