//! End-to-end CDC: a real Postgres, a temporary slot, pgoutput decoding, routing, payloads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{start, strip_volatile, sub, TestDb};
use serde_json::{json, Value};

const ALL: &str = r#"["INSERT", "UPDATE", "DELETE"]"#;

fn orders(db: &TestDb) {
    db.sql(
        "CREATE TABLE orders(id int PRIMARY KEY, total numeric(12,2), status text, customer_id text,
                             created_at timestamptz, meta jsonb)",
    );
}

#[tokio::test]
async fn insert_update_delete_payloads_are_exact() {
    let db = TestDb::new();
    orders(&db);
    let mut p = start(&db.config(&sub("all", "orders", ALL, "")))
        .await
        .unwrap();
    // One psql call per statement: a multi-statement -c string is a single transaction.
    db.sql("INSERT INTO orders VALUES (1, 99.50, 'pending', 'cust-001', '2025-12-15 15:00:00+00', '{\"k\": [1, 2.50]}')");
    db.sql("UPDATE orders SET status = 'completed', total = 100 WHERE id = 1");
    db.sql("DELETE FROM orders WHERE id = 1");
    let got = p.take(3).await;
    // Parsed from text: json! would turn 99.50 into an f64 and lose the scale we check.
    let record_ins: Value = serde_json::from_str(
        r#"{"id": 1, "total": 99.50, "status": "pending", "customer_id": "cust-001",
            "created_at": "2025-12-15T15:00:00+00:00", "meta": {"k": [1, 2.50]}}"#,
    )
    .unwrap();
    let record_upd: Value = serde_json::from_str(
        r#"{"id": 1, "total": 100.00, "status": "completed", "customer_id": "cust-001",
            "created_at": "2025-12-15T15:00:00+00:00", "meta": {"k": [1, 2.50]}}"#,
    )
    .unwrap();
    let base = |event: &str, record: &Value, changed: Value| {
        json!({"project_id": "test-project", "environment": "master", "table": "orders",
               "event": event, "record": record, "data": record, "changed_fields": changed})
    };
    assert_eq!(
        strip_volatile(got[0].1.clone()),
        base("INSERT", &record_ins, json!([]))
    );
    assert_eq!(
        strip_volatile(got[1].1.clone()),
        base("UPDATE", &record_upd, json!(["total", "status"]))
    );
    // DELETE's record is the full row before deletion, not just its key.
    assert_eq!(
        strip_volatile(got[2].1.clone()),
        base("DELETE", &record_upd, json!([]))
    );
    // numeric keeps its scale exactly as Postgres prints it.
    let raw = serde_json::to_string(&got[1].1["record"]["total"]).unwrap();
    assert_eq!(raw, "100.00");
    // One statement per transaction: ordinal 0 each; ids differ by commit LSN.
    let ids: Vec<&str> = got.iter().map(|(_, v)| v["id"].as_str().unwrap()).collect();
    assert!(ids.iter().all(|i| i.ends_with("00000000")), "{ids:?}");
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "{ids:?}");
    p.stop().await;
}

#[tokio::test]
async fn ordinals_count_changes_within_a_transaction() {
    let db = TestDb::new();
    orders(&db);
    let mut p = start(&db.config(&sub("all", "orders", ALL, "")))
        .await
        .unwrap();
    db.sql("BEGIN; INSERT INTO orders(id) VALUES (1), (2); UPDATE orders SET status = 'x' WHERE id = 2; COMMIT;");
    let got = p.take(3).await;
    let ids: Vec<&str> = got.iter().map(|(_, v)| v["id"].as_str().unwrap()).collect();
    let lsn = &ids[0][4..20];
    assert!(
        ids.iter().all(|i| &i[4..20] == lsn),
        "one commit LSN: {ids:?}"
    );
    assert_eq!(
        ids.iter().map(|i| &i[20..]).collect::<Vec<_>>(),
        vec!["00000000", "00000001", "00000002"]
    );
    assert!(got
        .iter()
        .all(|(_, v)| v["timestamp"] == got[0].1["timestamp"]));
    p.stop().await;
}

#[tokio::test]
async fn unchanged_toast_column_is_filled_from_the_old_row() {
    let db = TestDb::new();
    db.sql("CREATE TABLE docs(id int PRIMARY KEY, body text, n int)");
    // Random hex does not compress, so 40 kB is stored out of line (TOAST).
    db.sql("INSERT INTO docs SELECT 1, string_agg(md5(random()::text), ''), 0 FROM generate_series(1, 1250)");
    let body = db.sql("SELECT body FROM docs");
    assert_eq!(body.len(), 40_000);
    let mut p = start(&db.config(&sub("docs", "docs", ALL, "")))
        .await
        .unwrap();
    db.sql("UPDATE docs SET n = n + 1");
    let got = p.take(1).await;
    let v = &got[0].1;
    assert_eq!(
        v["record"]["body"].as_str().unwrap(),
        body,
        "TOAST value must be the real one"
    );
    assert_eq!(v["changed_fields"], json!(["n"]));
    assert_eq!(v["record"]["n"], json!(1));
    p.stop().await;
}

#[tokio::test]
async fn add_and_drop_column_mid_stream() {
    let db = TestDb::new();
    db.sql("CREATE TABLE t(id int PRIMARY KEY, a text)");
    let mut p = start(&db.config(&sub("t", "t", ALL, ""))).await.unwrap();
    db.sql("INSERT INTO t VALUES (1, 'x')");
    db.sql("ALTER TABLE t ADD COLUMN b numeric DEFAULT 1.5");
    db.sql("INSERT INTO t VALUES (2, 'y', 2.25)");
    db.sql("ALTER TABLE t DROP COLUMN a");
    db.sql("INSERT INTO t VALUES (3, 3.125)");
    db.sql("ALTER TABLE t ALTER COLUMN b TYPE text");
    db.sql("UPDATE t SET b = 'now text' WHERE id = 3");
    let got = p.take(4).await;
    let recs: Vec<&Value> = got.iter().map(|(_, v)| &v["record"]).collect();
    assert_eq!(recs[0], &json!({"id": 1, "a": "x"}));
    assert_eq!(
        serde_json::to_string(recs[1]).unwrap(),
        r#"{"id":2,"a":"y","b":2.25}"#
    );
    assert_eq!(
        serde_json::to_string(recs[2]).unwrap(),
        r#"{"id":3,"b":3.125}"#
    );
    assert_eq!(recs[3], &json!({"id": 3, "b": "now text"}));
    p.stop().await;
}

#[tokio::test]
async fn pk_less_table_is_made_safe_while_the_app_keeps_updating() {
    let db = TestDb::new();
    db.sql("CREATE TABLE events(kind text, n int); INSERT INTO events SELECT 'k', g FROM generate_series(1, 50) g");
    let app = db.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
    let app_task = tokio::spawn(async move {
        let mut last_err = None;
        while !s.load(Ordering::Relaxed) {
            match app
                .execute(
                    "UPDATE events SET n = n + 1 WHERE n = (SELECT min(n) FROM events)",
                    &[],
                )
                .await
            {
                Ok(_) => o.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    last_err = Some(e.to_string());
                    f.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        last_err
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut p = start(&db.config(&sub("ev", "events", r#"["UPDATE"]"#, "")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let last_err = app_task.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "app UPDATEs failed: {last_err:?}"
    );
    assert!(ok.load(Ordering::Relaxed) > 10);
    assert_eq!(
        db.sql("SELECT relreplident FROM pg_class WHERE relname = 'events'"),
        "f"
    );
    // Updates made after streaming began arrive with full old rows (changed_fields known).
    let got = p.take(1).await;
    assert_eq!(got[0].1["changed_fields"], json!(["n"]));
    p.stop().await;
}

#[tokio::test]
async fn without_managed_replica_identity_an_unsafe_table_is_refused_and_left_alone() {
    let db = TestDb::new();
    db.sql("CREATE TABLE events(kind text, n int)");
    let mut cfg = db.config(&sub("ev", "events", ALL, ""));
    cfg.source.manage_replica_identity = false;
    let err = match start(&cfg).await {
        Ok(_) => panic!("must refuse"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("public.events")
            && err.contains("ALTER TABLE \"public\".\"events\" REPLICA IDENTITY FULL"),
        "{err}"
    );
    assert_eq!(
        db.sql("SELECT relreplident FROM pg_class WHERE relname = 'events'"),
        "d"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM pg_publication_tables WHERE tablename = 'events'"),
        "0"
    );
    // The app can still update it.
    db.sql("UPDATE events SET n = 1");
}

#[tokio::test]
async fn filter_and_select_route_per_subscription() {
    let db = TestDb::new();
    orders(&db);
    let subs = [
        sub(
            "completed",
            "orders",
            r#"["UPDATE"]"#,
            r#"filter = { status = "completed" }"#,
        ),
        sub(
            "big",
            "orders",
            ALL,
            "filter = { total = { gte = 100 } }\nselect = [\"id\", \"total\"]",
        ),
        sub(
            "cust",
            "orders",
            r#"["INSERT", "DELETE"]"#,
            r#"filter = { customer_id = { in = ["c1", "c2"] }, status = { ne = "void" } }"#,
        ),
    ]
    .concat();
    let mut p = start(&db.config(&subs)).await.unwrap();
    db.sql("INSERT INTO orders(id, total, status, customer_id) VALUES (1, 50, 'new', 'c1')"); // cust
    db.sql("INSERT INTO orders(id, total, status, customer_id) VALUES (2, 150, 'void', 'c2')"); // big
    db.sql("UPDATE orders SET status = 'completed' WHERE id = 1"); // completed (total 50)
    db.sql("UPDATE orders SET customer_id = 'c9' WHERE id = 2"); // big? select has no customer_id → not sent
    db.sql("UPDATE orders SET total = 200 WHERE id = 2"); // big, changed [total]
    db.sql("DELETE FROM orders WHERE id = 1"); // cust (old row: c1, completed)
    let got = p.take(5).await;
    let seen: Vec<(&str, &str)> = got
        .iter()
        .map(|(s, v)| (s.as_str(), v["event"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("cust", "INSERT"),
            ("big", "INSERT"),
            ("completed", "UPDATE"),
            ("big", "UPDATE"),
            ("cust", "DELETE")
        ]
    );
    assert_eq!(
        serde_json::to_string(&got[1].1["record"]).unwrap(),
        r#"{"id":2,"total":150.00}"#
    );
    assert_eq!(got[3].1["changed_fields"], json!(["total"]));
    assert_eq!(got[3].1["record"], got[3].1["data"]);
    p.assert_quiet(300).await;
    p.stop().await;
}

#[tokio::test]
async fn unknown_filter_or_select_column_is_an_error_naming_it() {
    let db = TestDb::new();
    orders(&db);
    let cfg = db.config(&sub("x", "orders", ALL, "select = [\"id\", \"totl\"]"));
    let err = start(&cfg).await.err().expect("must fail").to_string();
    assert!(
        err.contains("\"totl\"") && err.contains("public.orders") && err.contains("select"),
        "{err}"
    );
    let cfg = db.config(&sub("x", "nope", ALL, ""));
    let err = start(&cfg).await.err().expect("must fail").to_string();
    assert!(err.contains("public.nope does not exist"), "{err}");
}

#[tokio::test]
async fn scram_authenticated_source_streams() {
    use crate::support::pg::{SCRAM_USER, TEST_PASSWORD};
    let db = TestDb::new();
    orders(&db);
    let url = db.pg.url_as(SCRAM_USER, TEST_PASSWORD, &db.name);
    let mut p = start(&db.config_with_url(&url, &sub("all", "orders", ALL, "")))
        .await
        .unwrap();
    db.sql("INSERT INTO orders(id, status) VALUES (7, 'via scram')");
    let got = p.take(1).await;
    assert_eq!(got[0].1["record"]["status"], json!("via scram"));
    p.stop().await;
    let bad = db.pg.url_as(SCRAM_USER, "wrong-password", &db.name);
    let err = start(&db.config_with_url(&bad, &sub("all", "orders", ALL, "")))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(!err.contains("wrong-password"), "{err}");
}

/// Every type we support, end to end through pgoutput: the record equals `to_jsonb(row)`.
#[tokio::test]
async fn records_equal_to_jsonb_for_every_type() {
    let db = TestDb::new();
    db.sql(
        "CREATE TYPE mood AS ENUM ('happy', 'sad');
         CREATE DOMAIN money_amount AS numeric(10,2);
         CREATE DOMAIN int_list AS int[];
         CREATE TABLE every(
           id int PRIMARY KEY, i2 int2, i8 int8, num numeric, f4 float4, f8 float8, b bool, t text,
           vc varchar(10), ch char(5), u uuid, j json, jb jsonb, d date, tm time, ttz timetz,
           ts timestamp, tstz timestamptz, iv interval, by bytea, ia int[], ta text[], i2d int[][],
           na numeric[], jba jsonb[], tsa timestamptz[], e mood, dom money_amount, doma int_list,
           ip inet, cid cidr, m money, bx box[], o oid, bits bit varying, rng int4range, pt point)",
    );
    let mut p = start(&db.config(&sub("every", "every", r#"["INSERT"]"#, "")))
        .await
        .unwrap();
    db.sql(
        r#"INSERT INTO every VALUES
         (1, -32768, 9223372036854775807, 12345678901234567890.123456789012345678901234567890,
          3.14159, 1.5e-7, true, E'multi\nline "quoted" \\ back', 'héllo', 'ab',
          'f47ac10b-58cc-4372-a567-0e02b2c3d479', '{"b": 1, "a": [1.0, null]}', '{"b": 1, "a": [1.0, null]}',
          '2024-02-29', '13:14:15.5', '13:14:15+05:30', '2024-02-29 13:14:15.123456',
          '2024-02-29 13:14:15.123456+02', '1 year 2 mons 3 days 04:05:06.7', '\x00ff10',
          '{1,NULL,3}', '{"a b","c\"d","NULL",NULL,""}', '{{1,2},{3,4}}', '{1.50,NaN,-0.001}',
          ARRAY['{"x": 1}'::jsonb, 'null'::jsonb], '{"2024-01-01 00:00:00+00","infinity"}', 'sad', 12.5,
          '{5,6}', '192.168.0.1/24', '10.0.0.0/8', 12.34, '{(1,2),(3,4);(5,6),(7,8)}', 42, B'1011',
          '[1,5)', '(1.5,2)'),
         (2, NULL, NULL, 'NaN', 'NaN', 'Infinity', false, '', NULL, NULL, NULL, 'null', '"str"',
          'infinity', NULL, NULL, '-infinity', 'infinity', '-1 days', '\x', '{}', '{}', NULL,
          '{Infinity,-Infinity}', '{}', NULL, NULL, NULL, NULL, '::1', '::/0', NULL, NULL, NULL, NULL,
          'empty', NULL),
         (3, 0, -1, '0.000', '-Infinity', '1e100', NULL, 'x', 'x', 'x', NULL, '[]', '{}', '0044-03-15 BC',
          '00:00', '00:00+00', '0044-03-15 12:00:00 BC', '2000-01-01 00:00:00.000001+00', '0',
          NULL, '[0:1]={7,8}', '{"\\","{}"}', '{{NULL}}', NULL, NULL, NULL, 'happy', 0, '{}', NULL,
          NULL, '-1.5', '{}', 0, '', NULL, NULL),
         (4, 1, 1, '-0', '-0', '-0', true, 'y', 'y', 'y', NULL, '1.0e2', '1.0e2', '5874897-12-31',
          '24:00:00', '23:59:59.999999-12', '294276-12-31 23:59:59.999999', '4713-01-01 00:00:00+00 BC',
          '178000000 years', NULL, NULL, NULL, NULL, '{1e-5}', NULL, NULL, NULL, 1.005, NULL, NULL, NULL,
          NULL, NULL, 4294967295, NULL, NULL, NULL)"#,
    );
    let got = p.take(4).await;
    let client = db.client().await;
    client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET IntervalStyle = postgres; SET extra_float_digits = 3",
        )
        .await
        .unwrap();
    for (_, payload) in got {
        let id: i32 = payload["record"]["id"]
            .to_string()
            .parse()
            .unwrap_or_else(|_| panic!("{payload}"));
        let row = client
            .query_one(
                "SELECT to_jsonb(r)::text FROM every r WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let expected: Value = serde_json::from_str(&row.get::<_, String>(0)).unwrap();
        let ours = payload["record"].as_object().unwrap();
        let theirs = expected.as_object().unwrap();
        for (col, want) in theirs {
            let have = ours
                .get(col)
                .unwrap_or_else(|| panic!("row {id}: column {col} missing"));
            // Value equality: numbers digit-exact (arbitrary_precision), object key order ignored
            // (jsonb reorders keys).
            assert_eq!(have, want, "row {id}, column {col}");
        }
        assert_eq!(ours.len(), theirs.len());
    }
    p.stop().await;
}
