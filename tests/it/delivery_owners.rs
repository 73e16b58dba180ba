//! One owner per subscription: the queue's fencing (a pump that does not own a subscription can
//! neither claim nor record), and two `walhook run` instances on one outbox: every change is
//! sent once, by the owner, and a stopping owner hands over at once instead of after its lease.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::daemon::{fast_delivery, wait_value, Daemon};
use crate::support::receiver::Receiver;
use crate::support::TestDb;
use chrono::Utc;
use uuid::Uuid;
use walhook::outbox::queue::{NewStatus, Queue, Recorded};
use walhook::outbox::Schema;

fn delivered(id: i64) -> Recorded {
    Recorded {
        id,
        status: NewStatus::Delivered,
        attempted_at: Utc::now(),
        duration_ms: 3,
        http_status: Some(200),
        error_kind: None,
        error: None,
        response_body: "ok".into(),
        first_attempt: true,
    }
}

#[tokio::test]
async fn only_the_live_owner_claims_and_records() {
    let db = TestDb::new();
    let schema = Schema::new("walhook");
    let mut setup = db.client().await;
    db.sql("CREATE SCHEMA walhook");
    walhook::outbox::migrate(&mut setup, &schema).await.unwrap();
    let ids: Vec<i64> = db
        .sql(
            "INSERT INTO walhook.deliveries (subscription_id, event_id, event, ordering_key, payload, commit_lsn)
             VALUES ('s', 'evt_a1', 'INSERT', '[1]', '{}', 1), ('s', 'evt_a2', 'UPDATE', '[1]', '{}', 2),
                    ('s', 'evt_b1', 'INSERT', '[2]', '{}', 1), ('s', 'evt_c1', 'INSERT', '', '{}', 1),
                    ('s', 'evt_c2', 'INSERT', '', '{}', 2)
             RETURNING id",
        )
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    let pool = walhook::pg::tls::pool(&db.url().parse().unwrap(), 2);
    let client = pool.get().await.unwrap();
    let queue = Queue::new(&schema);
    let lease = Duration::from_secs(30);
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let claim = |worker: Uuid, held: Vec<i64>| {
        let (queue, client) = (&queue, &client);
        async move {
            let rows = queue.claim(client, "s", 100, &held, worker).await.unwrap();
            rows.iter().map(|c| c.event_id.clone()).collect::<Vec<_>>()
        }
    };

    // Nobody owns it yet: nothing can be claimed.
    assert!(claim(a, vec![]).await.is_empty());
    assert!(queue.own(&client, "s", a, lease).await.unwrap());
    assert!(
        !queue.own(&client, "s", b, lease).await.unwrap(),
        "a's lease is live"
    );
    assert!(claim(b, vec![]).await.is_empty(), "b does not own s");
    // The owner gets the rows never attempted in id order (commit order), evt_a2 after
    // evt_a1: its lanes keep a key's rows in the order they came (sql/018).
    assert_eq!(
        claim(a, vec![]).await,
        ["evt_a1", "evt_a2", "evt_b1", "evt_c1", "evt_c2"]
    );
    // What the owner still holds is left out.
    assert_eq!(
        claim(a, vec![ids[0], ids[3]]).await,
        ["evt_a2", "evt_b1", "evt_c2"]
    );

    // a's lease runs out (a stalled process): a claims nothing more, b takes over.
    db.sql("UPDATE walhook.delivery_owners SET lease_until = now() - interval '1 second'");
    assert!(
        claim(a, vec![]).await.is_empty(),
        "an expired lease claims nothing"
    );
    assert!(queue.own(&client, "s", b, lease).await.unwrap());
    assert!(
        !queue.own(&client, "s", a, lease).await.unwrap(),
        "b owns s now"
    );
    // a's late result is refused; b's is written, with its attempt row.
    assert_eq!(
        queue
            .record(&client, "s", &[delivered(ids[0])], a)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT status, attempts, (SELECT count(*) FROM walhook.all_attempts)
             FROM walhook.delivery_states WHERE id = {}",
            ids[0]
        )),
        "pending|0|0"
    );
    assert_eq!(
        queue
            .record(&client, "s", &[delivered(ids[0])], b)
            .await
            .unwrap(),
        1
    );
    // A result is written once: a second record of the same finished row changes nothing.
    assert_eq!(
        queue
            .record(&client, "s", &[delivered(ids[0])], b)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT status, attempts, (SELECT count(*) FROM walhook.all_attempts WHERE delivery_id = {0})
             FROM walhook.delivery_states WHERE id = {0}",
            ids[0]
        )),
        "delivered|1|1"
    );
    // With its head delivered, evt_a2 is next for key [1].
    assert_eq!(
        claim(b, vec![]).await,
        ["evt_a2", "evt_b1", "evt_c1", "evt_c2"]
    );
    // evt_a2 fails (its retry is due at once) and key [1] gets a newer change: a row behind an
    // attempted, unfinished row of its key is left out until that one is finished.
    let failed = Recorded {
        status: NewStatus::Failed {
            retry_in: Duration::ZERO,
        },
        http_status: Some(500),
        ..delivered(ids[1])
    };
    assert_eq!(queue.record(&client, "s", &[failed], b).await.unwrap(), 1);
    db.sql(
        "INSERT INTO walhook.deliveries (subscription_id, event_id, event, ordering_key, payload, commit_lsn)
         VALUES ('s', 'evt_a3', 'UPDATE', '[1]', '{}', 3)",
    );
    let mut claimed = claim(b, vec![]).await;
    claimed.sort();
    assert_eq!(claimed, ["evt_a2", "evt_b1", "evt_c1", "evt_c2"]);
    // Giving up ownership lets the other pump in at once.
    assert!(queue.disown(&client, "s", b).await.unwrap());
    assert!(queue.own(&client, "s", a, lease).await.unwrap());
}

/// Subscription `s` on `orders` INSERTs, to `rx`.
fn one_subscription(rx: &Receiver) -> String {
    format!(
        "[[subscriptions]]\nid = \"s\"\ntable = \"orders\"\nevents = [\"INSERT\"]\n\
         url = \"{}\"\nsecret = \"k\"\n",
        rx.url
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_send_each_change_once_and_hand_over_on_stop() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    let rx = Receiver::ok().await;
    let subs = one_subscription(&rx);
    let delivery = fast_delivery("");
    let first = Daemon::start(&db, &delivery, &subs).await;
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_owners WHERE subscription_id = 's'",
        "1",
        10,
    )
    .await;
    let first_owner = db.sql("SELECT worker FROM walhook.delivery_owners");
    let second = Daemon::start_standby_named(&db, "walhook_standby", &delivery, &subs).await;
    // The second instance's delivery engine is up, contending for ownership: it holds its own
    // ownership session lock (an advisory lock in walhook's namespace), under its own
    // application_name. Its takeover statement runs every poll interval from then on.
    wait_value(
        &db,
        &format!(
            "SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE a.application_name = 'walhook_standby' AND a.datname = current_database()
               AND l.locktype = 'advisory' AND l.classid = {}::oid AND l.granted",
            walhook::outbox::queue::SESSION_LOCK_NS
        ),
        "t",
        20,
    )
    .await;
    assert_eq!(
        db.sql("SELECT worker FROM walhook.delivery_owners"),
        first_owner,
        "the standby found s owned"
    );

    db.sql("INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 200) g");
    rx.wait_for(200, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen: Vec<String> = rx
        .snapshot()
        .iter()
        .map(|r| r.header("x-archie-delivery").to_string())
        .collect();
    assert_eq!(seen.len(), 200, "no change was sent twice");
    assert_eq!(
        db.sql("SELECT worker FROM walhook.delivery_owners"),
        first_owner,
        "the standby never took the subscription from a live owner"
    );

    // The owner stops: it gives the subscription up, and the standby takes over before the
    // stopped owner's lease would have run out.
    let lease_until = db.sql("SELECT lease_until FROM walhook.delivery_owners");
    first.stop().await;
    wait_value(
        &db,
        &format!(
            "SELECT count(*) FROM walhook.delivery_owners
             WHERE worker <> '{first_owner}' AND acquired_at < '{lease_until}'"
        ),
        "1",
        10,
    )
    .await;
    // The standby also takes the slot over and delivers new changes.
    db.sql("INSERT INTO orders SELECT g, 'new' FROM generate_series(201, 300) g");
    let all = rx.wait_for(300, Duration::from_secs(30)).await;
    let unique: HashSet<&str> = all.iter().map(|r| r.header("x-archie-delivery")).collect();
    assert_eq!((all.len(), unique.len()), (300, 300));
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') || '/' || count(*) FROM walhook.delivery_states",
        "300/300",
        10,
    )
    .await;
    second.stop().await;
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.delivery_owners"),
        "0",
        "a stopped instance leaves no ownership behind"
    );
}

/// An instance that owns a subscription but does not read the slot (another instance does)
/// hears of the rows the other one stores from its once-per-poll watermark reading: its pump,
/// which takes rows from memory, reads the outbox at once instead of after its ~60-poll
/// backstop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_does_not_read_the_slot_delivers_what_another_instance_stores() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    let rx = Receiver::ok().await;
    let subs = one_subscription(&rx);
    // The first instance reads the slot and delivers nothing; the second delivers and never
    // gets the slot. A 1 s poll puts the second's backstop 45 s or more away.
    let ingest = Daemon::start(&db, crate::support::DELIVERY_OFF, &subs).await;
    let delivery = fast_delivery("").replace("poll_interval = \"100ms\"", "poll_interval = \"1s\"");
    let owner = Daemon::start_standby_named(&db, "walhook_owner", &delivery, &subs).await;
    wait_value(&db, "SELECT count(*) FROM walhook.delivery_owners", "1", 20).await;
    db.sql("INSERT INTO orders VALUES (1, 'new')");
    rx.wait_for(1, Duration::from_secs(20)).await;
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') FROM walhook.delivery_states",
        "1",
        20,
    )
    .await;
    // Its pump has found nothing more in the outbox and takes rows from memory by now (they
    // never come: this instance stores none); the claims settle.
    owner
        .claims_settled(Duration::from_secs(3), Duration::from_secs(20))
        .await;
    let stored = Instant::now();
    db.sql("INSERT INTO orders VALUES (2, 'new')");
    // Within a few polls; the backstop alone would take 45 s or more.
    rx.wait_for(2, Duration::from_secs(20)).await;
    eprintln!(
        "a row stored by the other instance delivered after {:?}",
        stored.elapsed()
    );
    owner.stop().await;
    ingest.stop().await;
}
