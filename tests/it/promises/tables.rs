//! README: "use `schema.table` outside `public`": a subscription to `sales.orders` gets that
//! table's changes, with `"table": "sales.orders"` in the payload, and none of `public.orders`.

use std::time::Duration;

use crate::support::receiver::Receiver;
use crate::support::TestDb;

use super::{drop_slot, run_streaming, subscription, LOOPBACK_DELIVERY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_outside_public_is_delivered_with_its_qualified_name() {
    let db = TestDb::new();
    db.sql(
        "CREATE SCHEMA sales;
         CREATE TABLE sales.orders (id int PRIMARY KEY, status text);
         CREATE TABLE public.orders (id int PRIMARY KEY, status text);",
    );
    let rx = Receiver::ok().await;
    let text = crate::support::config_text(
        &db.url(),
        &db.name,
        "p",
        LOOPBACK_DELIVERY,
        &subscription("sales", "sales.orders", &rx.url, "whsec_x"),
    );
    let (child, _cfg) = run_streaming(&format!("schema-table-{}", db.name), &text, &[]).await;
    // public.orders first: were it delivered, it would arrive first.
    db.sql("INSERT INTO public.orders VALUES (1, 'public')");
    db.sql("INSERT INTO sales.orders VALUES (2, 'sales')");
    db.sql("UPDATE sales.orders SET status = 'paid'");
    db.sql("DELETE FROM sales.orders");
    let reqs = rx.wait_for(3, Duration::from_secs(20)).await;
    let got: Vec<String> = reqs
        .iter()
        .map(|r| {
            let b = r.json();
            format!(
                "{} {} {}",
                b["table"],
                b["event"].as_str().unwrap(),
                b["record"]["id"]
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "\"sales.orders\" INSERT 2",
            "\"sales.orders\" UPDATE 2",
            "\"sales.orders\" DELETE 2"
        ]
    );
    // The qualified table joined the publication; public.orders did not.
    assert_eq!(
        db.sql(
            "SELECT string_agg(schemaname || '.' || tablename, ',')
             FROM pg_publication_tables WHERE pubname = 'walhook'"
        ),
        "sales.orders"
    );
    assert!(child.stop().await.success());
    assert_eq!(rx.count(), 3, "nothing of public.orders");
    drop_slot(&db, &db.name);
}
