//! README step 6: "SIGTERM/SIGINT stop it after the requests in flight finish": a request in
//! flight when SIGTERM arrives is answered, its result is recorded, and the process exits 0.

use std::time::{Duration, Instant};

use crate::support::receiver::{Answer, Receiver};
use crate::support::TestDb;

use super::{drop_slot, run_streaming, subscription};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_the_request_in_flight_and_records_it() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    const ANSWER_AFTER: Duration = Duration::from_millis(2000);
    let rx = Receiver::scripted(|_, _| Answer::Slow(ANSWER_AFTER)).await;
    let text = crate::support::config_text(
        &db.url(),
        &db.name,
        "p",
        "[delivery]\nallow_http = true\nallow_private_networks = true\n\
         poll_interval = \"100ms\"\ntimeout = \"10s\"\nlease = \"30s\"\n",
        &subscription("slow", "orders", &rx.url, "whsec_x"),
    );
    let (child, _cfg) = run_streaming(&format!("sigterm-{}", db.name), &text, &[]).await;
    db.sql("INSERT INTO orders VALUES (1, 'new')");
    // The request is in flight once the receiver has it (it answers ANSWER_AFTER later).
    let req = rx.wait_for(1, Duration::from_secs(20)).await.remove(0);
    let signalled = Instant::now();
    let status = child.stop().await;
    let exited = Instant::now();
    // Otherwise the request was over before the signal and this test proves nothing.
    assert!(
        signalled < req.at + ANSWER_AFTER,
        "SIGTERM sent {:?} after the request arrived: not while in flight",
        signalled - req.at
    );
    assert!(status.success(), "exit status {status}");
    assert!(
        exited >= req.at + ANSWER_AFTER,
        "exited {:?} after the request arrived, before the receiver answered ({ANSWER_AFTER:?}); \
         SIGTERM came {:?} after it",
        exited - req.at,
        signalled - req.at
    );
    // Recorded as delivered, once, with the receiver's 200: nothing is left to send again.
    assert_eq!(
        db.sql(
            "SELECT status || ' ' || attempts || ' ' || last_http_status FROM walhook.delivery_states"
        ),
        "delivered 1 200"
    );
    assert_eq!(
        db.sql("SELECT string_agg(http_status::text, ',') FROM walhook.all_attempts"),
        "200"
    );
    assert_eq!(rx.count(), 1);
    drop_slot(&db, &db.name);
}
