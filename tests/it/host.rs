//! Never harm the host: partitioned tables keep working for the app and are published under the
//! subscribed table's name, partitions created while walhook runs are made safe, and tables walhook
//! cannot manage are refused up front (API 422) with what to do, and a start that fails for good
//! changes nothing or says what it left (with the statements that undo it, which work).

use serde_json::json;
use walhook::app::Handles;
use walhook::outbox::Schema;

use crate::api::{body, loopback_only, start_with_source, PROJECT};
use crate::support::daemon::{wait_value, Daemon};
use crate::support::{sub, TestDb, DELIVERY_OFF};

#[tokio::test]
async fn partitioned_tables_publish_via_the_root_and_new_partitions_are_made_safe() {
    let db = TestDb::new();
    // No primary key: a partition without REPLICA IDENTITY FULL would make the app's UPDATE and
    // DELETE fail once the table is published.
    db.sql(
        "CREATE TABLE ev(id int, ts date, v text) PARTITION BY RANGE (ts);
         CREATE TABLE ev1 PARTITION OF ev FOR VALUES FROM ('2026-01-01') TO ('2026-07-01');",
    );
    let subs = sub("ev-all", "ev", r#"["INSERT", "UPDATE", "DELETE"]"#, "");
    let daemon = Daemon::start(&db, DELIVERY_OFF, &subs).await;
    assert_eq!(
        db.sql("SELECT relreplident FROM pg_class WHERE relname = 'ev1'"),
        "f"
    );
    db.sql("INSERT INTO ev VALUES (1, '2026-02-01', 'a')");
    db.sql("UPDATE ev SET v = 'b' WHERE id = 1");
    db.sql("DELETE FROM ev WHERE id = 1");

    // A partition created while walhook runs gets FULL from the sweep; the app's writes to it
    // then work, and its changes too carry the root's name.
    db.sql("CREATE TABLE ev2 PARTITION OF ev FOR VALUES FROM ('2026-07-01') TO ('2027-01-01')");
    wait_value(
        &db,
        "SELECT relreplident FROM pg_class WHERE relname = 'ev2'",
        "f",
        30,
    )
    .await;
    db.sql("INSERT INTO ev VALUES (2, '2026-08-01', 'c')");
    db.sql("UPDATE ev SET v = 'd' WHERE id = 2");
    // An attached partition likewise.
    db.sql(
        "CREATE TABLE ev3 (id int, ts date, v text);
         ALTER TABLE ev ATTACH PARTITION ev3 FOR VALUES FROM ('2027-01-01') TO ('2027-07-01');",
    );
    wait_value(
        &db,
        "SELECT relreplident FROM pg_class WHERE relname = 'ev3'",
        "f",
        30,
    )
    .await;
    db.sql("INSERT INTO ev VALUES (3, '2027-02-01', 'e')");
    db.sql("DELETE FROM ev WHERE id = 3");

    let events = "SELECT string_agg(event || ':' || (payload::jsonb->>'table') || ':' || \
                  (payload::jsonb->'record'->>'id'), ',' ORDER BY id) FROM walhook.delivery_states";
    wait_value(
        &db,
        events,
        "INSERT:ev:1,UPDATE:ev:1,DELETE:ev:1,INSERT:ev:2,UPDATE:ev:2,INSERT:ev:3,DELETE:ev:3",
        30,
    )
    .await;
    daemon.stop().await;

    // A restart finds the publication as it left it (no "already member of publication").
    let daemon = Daemon::start(&db, DELIVERY_OFF, &subs).await;
    db.sql("UPDATE ev SET v = 'f' WHERE id = 2");
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_states WHERE event = 'UPDATE'",
        "3",
        30,
    )
    .await;
    daemon.stop().await;
    assert_eq!(
        db.sql(
            "SELECT pubviaroot || ':' || (SELECT string_agg(tablename, ',') FROM pg_publication_tables \
             WHERE pubname = 'walhook') FROM pg_publication WHERE pubname = 'walhook'"
        ),
        "true:ev"
    );
}

#[tokio::test]
async fn tables_walhook_cannot_manage_are_refused_with_what_to_do() {
    let db = TestDb::new();
    db.sql(
        "CREATE TABLE orders(id uuid PRIMARY KEY DEFAULT gen_random_uuid(), total numeric(12,2),
                             status text, customer_id text);
         CREATE UNLOGGED TABLE scratch(id int PRIMARY KEY);
         CREATE TABLE parent(id int PRIMARY KEY);
         CREATE TABLE child() INHERITS (parent);
         CREATE TABLE theirs(id int PRIMARY KEY);",
    );
    let role = format!("lim_{}", db.name);
    db.sql(&format!(
        "CREATE ROLE \"{role}\" LOGIN REPLICATION;
         GRANT CREATE ON DATABASE \"{db}\" TO \"{role}\";
         GRANT USAGE, CREATE ON SCHEMA public TO \"{role}\";
         ALTER TABLE orders OWNER TO \"{role}\";",
        db = db.name
    ));
    let mut client = db.client().await;
    walhook::outbox::migrate(&mut client, &Schema::new("walhook"))
        .await
        .unwrap();
    // The API connects to the source as the limited role, which owns `orders` only.
    let limited_url = db.url().replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(
        limited_url,
        db.url(),
        "the test database URL names its user"
    );
    let handles = Handles::default();
    let api = start_with_source(db, &limited_url, PROJECT, true, loopback_only(), &handles).await;

    // A temporary table lives in its session's pg_temp_N schema; refer to it by that name.
    let (temp_client, conn) = tokio_postgres::connect(&api.db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    temp_client
        .batch_execute("CREATE TEMP TABLE tmp(id int PRIMARY KEY)")
        .await
        .unwrap();
    let temp_schema: String = temp_client
        .query_one(
            "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = 'tmp'",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let refused = [
        ("pg_catalog.pg_authid".to_string(), "system catalog"),
        ("scratch".to_string(), "UNLOGGED"),
        (format!("{temp_schema}.tmp"), "temporary"),
        ("parent".to_string(), "inheritance"),
        ("theirs".to_string(), "GRANT"),
    ];
    for (table, text) in refused {
        let r = api.create(body(json!({ "table": table }))).await;
        assert_eq!(r.status, 422, "{table}: {}", r.text);
        let v = r.json();
        assert_eq!(v["field"], "table", "{table}: {}", r.text);
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(text), "{table}: {e}");
    }
    // The owned table is accepted, and nothing was left half-created for the refused ones.
    let r = api.create(body(json!({"table": "orders"}))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        api.db
            .sql("SELECT count(*) FROM walhook.subscriptions WHERE source = 'api'"),
        "1"
    );
}

/// `walhook run` until it exits (it must: these failures need a human), with its stderr.
async fn run_until_exit(db: &TestDb, url: &str) -> (bool, String) {
    let slot = format!("s_{}", db.name);
    let f = crate::support::write_config(&crate::support::config_text(
        url,
        &slot,
        "host",
        DELIVERY_OFF,
        &sub("orders", "orders", r#"["INSERT", "UPDATE", "DELETE"]"#, ""),
    ));
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        crate::support::bin::with_config("run", f.path()).output(),
    )
    .await
    .expect("a start that fails for good exits")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_failed_start_changes_nothing_or_says_what_it_left() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders(id int PRIMARY KEY, status text)");
    let slot = format!("s_{}", db.name);
    let state = |db: &TestDb| {
        db.sql(&format!(
            "SELECT (SELECT relreplident::text FROM pg_class WHERE oid = 'orders'::regclass) || ':' ||
                    (SELECT count(*) FROM pg_publication) || ':' ||
                    (SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}')"
        ))
    };

    // A role without REPLICATION: the replication connection is refused before anything in
    // the database is changed.
    let role = format!("norepl_{}", db.name);
    db.sql(&format!(
        "CREATE ROLE \"{role}\" LOGIN;
         GRANT CREATE ON DATABASE \"{db}\" TO \"{role}\";
         ALTER TABLE orders OWNER TO \"{role}\";",
        db = db.name
    ));
    let url = db.url().replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, db.url());
    let (ok, err) = run_until_exit(&db, &url).await;
    assert!(!ok, "{err}");
    assert!(err.contains("replication role"), "{err}");
    assert!(!err.contains("left in place"), "{err}");
    assert_eq!(state(&db), "d:0:0", "nothing changed: {err}");

    // A policy (an event trigger) refuses ALTER PUBLICATION: replica identity and the new
    // publication are in place when the start fails, and the log says so with the undo.
    db.sql(
        "CREATE FUNCTION deny() RETURNS event_trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'publication changes need a change ticket'
               USING ERRCODE = 'insufficient_privilege'; END $$;
         CREATE EVENT TRIGGER no_pub_changes ON ddl_command_start
             WHEN TAG IN ('ALTER PUBLICATION') EXECUTE FUNCTION deny();",
    );
    let (ok, err) = run_until_exit(&db, &db.url()).await;
    assert!(!ok, "{err}");
    assert!(
        err.contains("publication changes need a change ticket"),
        "{err}"
    );
    assert_eq!(state(&db), "f:1:0", "{err}");
    let undo_pub = "created publication walhook (to undo: DROP PUBLICATION \"walhook\")";
    let undo_ident =
        "set REPLICA IDENTITY FULL on public.orders (it was DEFAULT; to undo, once it is in \
        no publication that publishes UPDATE or DELETE: ALTER TABLE \"public\".\"orders\" \
        REPLICA IDENTITY DEFAULT)";
    let line = err
        .lines()
        .find(|l| l.contains("left in place"))
        .unwrap_or_else(|| panic!("no leftovers line: {err}"));
    assert!(
        line.contains(&format!("{undo_pub}; {undo_ident}")),
        "{line}"
    );
    // The printed statements work, in the printed order.
    db.sql("DROP EVENT TRIGGER no_pub_changes");
    db.sql(
        "DROP PUBLICATION \"walhook\"; ALTER TABLE \"public\".\"orders\" REPLICA IDENTITY DEFAULT",
    );
    assert_eq!(state(&db), "d:0:0");
}

/// `walhook check` finds what `run` would be refused for: a table the role does not own, a
/// publication it may not create; each line's advice, followed, clears it.
#[tokio::test]
async fn check_reports_ownership_and_publication_privilege_and_the_advice_works() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders(id int PRIMARY KEY, status text)");
    let role = format!("chk_{}", db.name);
    db.sql(&format!(
        "CREATE ROLE \"{role}\" LOGIN REPLICATION;
         REVOKE CREATE ON DATABASE \"{db}\" FROM PUBLIC;",
        db = db.name
    ));
    let url = db.url().replacen("postgres@", &format!("{role}@"), 1);
    let config = db.config_with_url(
        &url,
        &sub("orders", "orders", r#"["INSERT", "UPDATE", "DELETE"]"#, ""),
    );
    let fails = |report: &walhook::cmd::check::Report| -> Vec<String> {
        report
            .lines
            .iter()
            .filter(|(l, _)| format!("{l:?}") == "Fail")
            .map(|(_, m)| m.clone())
            .collect()
    };
    let report = walhook::cmd::check::run(&config).await;
    let f = fails(&report);
    assert_eq!(f.len(), 2, "{report}");
    assert!(
        f[0].starts_with(&format!(
            "walhook's role {role} cannot prepare public.orders: it is owned by postgres"
        )) && f[0].contains(&format!("GRANT \"postgres\" TO \"{role}\";")),
        "{report}"
    );
    let grant_create = format!(
        "GRANT CREATE ON DATABASE \"{db}\" TO \"{role}\";",
        db = db.name
    );
    assert_eq!(
        f[1],
        format!(
            "publication walhook does not exist yet and role {role} may not create it: run \
             {grant_create}"
        ),
        "{report}"
    );
    // Following the advice clears both.
    db.sql(&format!("GRANT \"postgres\" TO \"{role}\"; {grant_create}"));
    let report = walhook::cmd::check::run(&config).await;
    assert!(fails(&report).is_empty(), "{report}");
}

/// The leftovers report drops a replication slot the failed start created (it would keep WAL
/// while walhook is stopped) and lists the rest with the statements that undo it.
#[tokio::test]
async fn leftovers_drop_a_slot_the_failed_start_created() {
    use walhook::model::TableName;
    use walhook::source::leftovers::{report, Snapshot};
    let db = TestDb::new();
    db.sql("CREATE TABLE orders(id int PRIMARY KEY)");
    let client = db.client().await;
    let tables = vec![TableName::parse("orders").unwrap()];
    let slot = format!("s_{}", db.name);
    let before = Snapshot::take(&client, &tables, "walhook", &slot)
        .await
        .unwrap();
    db.sql("ALTER TABLE orders REPLICA IDENTITY FULL; CREATE PUBLICATION walhook FOR TABLE orders");
    db.sql(&format!(
        "SELECT 1 FROM pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ));
    let left = report(&client, &before, &tables, "walhook", &slot).await;
    assert_eq!(
        left,
        [
            "created publication walhook (to undo: DROP PUBLICATION \"walhook\")",
            "set REPLICA IDENTITY FULL on public.orders (it was DEFAULT; to undo, once it is in no \
             publication that publishes UPDATE or DELETE: ALTER TABLE \"public\".\"orders\" \
             REPLICA IDENTITY DEFAULT)",
        ]
    );
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )),
        "0",
        "the slot this start created is gone"
    );
}
