//! README "Retention": dead letters are removed after `outbox.dead_retention`, delivered rows
//! after `outbox.retention`, each by its own age; younger rows stay.

use crate::support::daemon::{fast_delivery, wait_value, Daemon};
use crate::support::receiver::{Answer, Receiver};
use crate::support::TestDb;

use super::subscription;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_older_than_dead_retention_are_pruned_younger_ones_kept() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    let rx =
        Receiver::scripted(|r, _| Answer::Status(if r.path == "/dead" { 500 } else { 200 })).await;
    // dead_retention 60 s: the pruner runs every 6 s (a tenth of the shortest retention);
    // retention keeps its 24 h default.
    let d = Daemon::start(
        &db,
        &format!(
            "{}[outbox]\ndead_retention = \"60s\"\n",
            fast_delivery("retry_schedule = [\"0s\"]\nbreaker_failures = 100")
        ),
        &format!(
            "{}{}",
            subscription("dead", "orders", &format!("{}/dead", rx.url), "whsec_x"),
            subscription("ok", "orders", &format!("{}/ok", rx.url), "whsec_x"),
        ),
    )
    .await;
    db.sql("INSERT INTO orders VALUES (1, 'old'), (2, 'young')");
    let by_status = "SELECT string_agg(subscription_id || ':' || status || ':' || (payload::jsonb->'record'->>'id'), ',' ORDER BY subscription_id, id) FROM walhook.delivery_states";
    wait_value(
        &db,
        by_status,
        "dead:dead:1,dead:dead:2,ok:delivered:1,ok:delivered:2",
        20,
    )
    .await;
    // Row 1's deliveries finished an hour ago: past dead_retention, within retention.
    db.sql(
        "UPDATE walhook.deliveries SET finished_at = now() - interval '1 hour'
         WHERE payload::jsonb->'record'->>'id' = '1'",
    );
    let dead_attempts = db.sql(
        "SELECT string_agg(a.id::text, ',') FROM walhook.attempts a
         JOIN walhook.delivery_states d ON d.id = a.delivery_id
         WHERE d.subscription_id = 'dead' AND d.payload::jsonb->'record'->>'id' = '1'",
    );
    assert!(!dead_attempts.is_empty());
    wait_value(
        &db,
        by_status,
        "dead:dead:2,ok:delivered:1,ok:delivered:2",
        30,
    )
    .await;
    // The pruned letter's attempts went with it.
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM walhook.attempts WHERE id IN ({dead_attempts})"
        )),
        "0"
    );
    d.stop().await;
}
