//! README "Quickstart against your Postgres", step 2: walhook runs as a role with exactly the
//! quickstart's grants (LOGIN REPLICATION, CREATE on the database, membership in the tables'
//! owner role), not a superuser, and streams a change to a receiver.

use std::time::Duration;

use crate::support::receiver::{hmac_hex, Receiver};
use crate::support::TestDb;

use super::{drop_slot, run_streaming, subscription, LOOPBACK_DELIVERY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_role_streams_a_change_to_a_receiver() {
    let db = TestDb::new();
    // Roles are cluster-wide: name them after the test's database.
    let suffix = &db.name[2..14];
    let (role, owner) = (format!("walhook_{suffix}"), format!("app_owner_{suffix}"));
    // The app's table, owned by the app's role (README: "the role that owns the subscribed tables").
    db.sql(&format!(
        "CREATE ROLE {owner} NOLOGIN;
         CREATE TABLE orders (id serial PRIMARY KEY, total numeric(12,2), status text, customer_id text);
         ALTER TABLE orders OWNER TO {owner};"
    ));
    // README step 2, verbatim but for the names.
    db.sql(&format!(
        "CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'change-me';
         GRANT CREATE ON DATABASE {db} TO {role};
         GRANT {owner} TO {role};",
        db = db.name
    ));
    assert_eq!(
        db.sql(&format!(
            "SELECT rolsuper || ' ' || rolreplication || ' ' || rolcreatedb || ' ' || rolcreaterole
             FROM pg_roles WHERE rolname = '{role}'"
        )),
        "false true false false",
        "walhook's role is not a superuser"
    );

    let rx = Receiver::ok().await;
    // README step 4's config: the password and the secret come from the environment.
    let url = format!(
        "postgres://{role}:${{WALHOOK_DB_PASSWORD}}@127.0.0.1:{}/{}?sslmode=prefer",
        db.pg.port(),
        db.name
    );
    let text = crate::support::config_text(
        &url,
        &db.name,
        "my-project",
        LOOPBACK_DELIVERY,
        &subscription(
            "orders",
            "orders",
            &format!("{}/webhooks/orders", rx.url),
            "${ORDERS_SECRET}",
        ),
    );
    let (child, _cfg) = run_streaming(
        &format!("quickstart-{}", db.name),
        &text,
        &[
            ("WALHOOK_DB_PASSWORD", "change-me"),
            ("ORDERS_SECRET", "whsec_quickstart"),
        ],
    )
    .await;

    // README step 6: make a change; the receiver gets it, signed.
    db.sql("INSERT INTO orders (total, status) VALUES (99.50, 'new')");
    let reqs = rx.wait_for(1, Duration::from_secs(20)).await;
    let r = &reqs[0];
    assert_eq!(r.path, "/webhooks/orders");
    assert_eq!(
        r.header("x-archie-signature"),
        format!("sha256={}", hmac_hex("whsec_quickstart", &r.body))
    );
    let body = r.json();
    assert_eq!(body["event"], "INSERT");
    assert_eq!(body["table"], "orders");
    assert_eq!(body["record"]["status"], "new");
    assert_eq!(body["project_id"], "my-project");
    // What walhook created, it created as that role: its schema, publication and slot.
    crate::support::daemon::wait_value(
        &db,
        "SELECT status FROM walhook.delivery_states",
        "delivered",
        20,
    )
    .await;
    assert_eq!(
        db.sql(
            "SELECT (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'walhook')
                 || ' ' || (SELECT pubowner::regrole::text FROM pg_publication WHERE pubname = 'walhook')
                 || ' ' || (SELECT relreplident FROM pg_class WHERE relname = 'orders')::text"
        ),
        format!("{role} {role} f")
    );
    let log = child.log();
    assert!(
        !log.contains("change-me") && !log.contains("whsec_quickstart"),
        "no secret in the log:\n{log}"
    );
    assert!(child.stop().await.success());
    drop_slot(&db, &db.name);
}
