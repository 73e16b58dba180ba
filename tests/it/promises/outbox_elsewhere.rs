//! README `[outbox]`: `url` puts the outbox in another database and `schema` names its schema;
//! changes of the source database land there, and nothing of walhook's is created in the source
//! (but its publication and slot, which must live there).

use crate::support::daemon::wait_value;
use crate::support::{TestDb, DELIVERY_OFF};

use super::{drop_slot, run_streaming, subscription};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_land_in_the_other_databases_custom_schema_only() {
    let source = TestDb::new();
    let outbox = TestDb::new();
    source.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    let text = crate::support::config_text(
        &source.url(),
        &source.name,
        "p",
        &format!(
            "{DELIVERY_OFF}[outbox]\nurl = \"{}\"\nschema = \"hooks_elsewhere\"\n",
            outbox.url()
        ),
        &subscription("orders", "orders", "https://127.0.0.1:9/h", "whsec_x"),
    );
    let (child, _cfg) =
        run_streaming(&format!("outbox-elsewhere-{}", source.name), &text, &[]).await;
    source.sql("INSERT INTO orders VALUES (1, 'new'), (2, 'new')");
    source.sql("UPDATE orders SET status = 'paid' WHERE id = 1");
    wait_value(
        &outbox,
        "SELECT string_agg(payload::jsonb->>'event' || ':' || (payload::jsonb->'record'->>'id'), ',' ORDER BY id)
         FROM hooks_elsewhere.deliveries",
        "INSERT:1,INSERT:2,UPDATE:1",
        20,
    )
    .await;
    // The checkpoint went with the deliveries (one transaction, README "Exactly once").
    assert_eq!(
        outbox.sql("SELECT count(*) > 0 FROM hooks_elsewhere.checkpoint"),
        "t"
    );
    let schemas = "SELECT coalesce(string_agg(nspname, ',' ORDER BY nspname), '')
                   FROM pg_namespace WHERE nspname IN ('walhook', 'hooks_elsewhere')";
    assert_eq!(
        source.sql(schemas),
        "",
        "nothing of the outbox in the source"
    );
    assert_eq!(outbox.sql(schemas), "hooks_elsewhere", "no default schema");
    // The publication and the slot belong to the source database.
    assert_eq!(
        source.sql("SELECT count(*) FROM pg_publication WHERE pubname = 'walhook'"),
        "1"
    );
    assert_eq!(outbox.sql("SELECT count(*) FROM pg_publication"), "0");
    assert_eq!(
        source.sql(&format!(
            "SELECT database FROM pg_replication_slots WHERE slot_name = '{}'",
            source.name
        )),
        source.name
    );
    let status = child.stop().await;
    assert!(status.success(), "{status}");
    drop_slot(&source, &source.name);
}
