//! README Troubleshooting: every refusal at start, in `walhook run` (exits non-zero with the
//! documented message) and in `walhook check` (a blocking line, non-zero exit): wal_level =
//! replica, a role without REPLICATION, a FOR ALL TABLES publication with walhook's name,
//! another program's slot with walhook's slot name; and no free slot.

use std::time::Duration;

use walhook::embedded_pg::{PgServer, StopMode};

use crate::support::bin;
use crate::support::{TestDb, DELIVERY_OFF};

use super::subscription;

fn config(url: &str, slot: &str) -> String {
    crate::support::config_text(
        url,
        slot,
        "p",
        DELIVERY_OFF,
        &subscription("orders", "orders", "https://127.0.0.1:9/h", "whsec_x"),
    )
}

/// `walhook check`: (exit success, stdout).
async fn check(text: &str) -> (bool, String) {
    let cfg = crate::support::write_config(text);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        bin::with_config("check", cfg.path()).output(),
    )
    .await
    .expect("check finishes within 60 s")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `walhook run`, which must stop by itself: (exit success, stderr).
async fn run_refused(text: &str) -> (bool, String) {
    let cfg = crate::support::write_config(text);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        bin::with_config("run", cfg.path()).output(),
    )
    .await
    .expect("a refusal at start is not retried forever: run stops within 60 s")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn assert_both_refuse(text: &str, check_says: &str, run_says: &str) {
    let (ok, out) = check(text).await;
    assert!(!ok, "check exits non-zero:\n{out}");
    let line = out
        .lines()
        .find(|l| l.contains(check_says))
        .unwrap_or_else(|| panic!("check does not say {check_says:?}:\n{out}"));
    assert!(
        line.trim_start().starts_with("FAIL"),
        "a blocking line: {line}"
    );
    let (ok, err) = run_refused(text).await;
    assert!(!ok, "run exits non-zero:\n{err}");
    assert!(
        err.contains(run_says),
        "run does not say {run_says:?}:\n{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_replication_is_refused() {
    let db = TestDb::new();
    let role = format!("norepl_{}", &db.name[2..14]);
    db.sql(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw';
         GRANT CREATE ON DATABASE {db} TO {role};
         CREATE TABLE orders (id int PRIMARY KEY);
         ALTER TABLE orders OWNER TO {role};",
        db = db.name
    ));
    let text = config(&db.pg.url_as(&role, "pw", &db.name), &db.name);
    assert_both_refuse(
        &text,
        &format!("role {role} lacks the REPLICATION attribute"),
        // The replication connection is opened before anything is changed, so the server
        // refuses it ("… to start walsender") before a slot is ever asked for.
        "must be superuser or replication role",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_for_all_tables_publication_with_walhooks_name_is_refused() {
    let db = TestDb::new();
    db.sql(
        "CREATE TABLE orders (id int PRIMARY KEY);
         CREATE PUBLICATION walhook FOR ALL TABLES;",
    );
    let text = config(&db.url(), &db.name);
    let (ok, err) = run_refused(&text).await;
    assert!(!ok, "run exits non-zero:\n{err}");
    assert!(
        err.contains("publication walhook is FOR ALL TABLES"),
        "{err}"
    );
    // Nothing was made of it: the publication still covers all tables and no slot was created.
    assert_eq!(
        db.sql("SELECT puballtables FROM pg_publication WHERE pubname = 'walhook'"),
        "t"
    );
    let (ok, out) = check(&text).await;
    assert!(!ok, "check exits non-zero:\n{out}");
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("FAIL")
            && l.contains("publication walhook is FOR ALL TABLES")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_programs_slot_with_walhooks_slot_name_is_refused() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY)");
    // Slots are cluster-wide: the test's slot is named after its database.
    db.sql(&format!(
        "SELECT 1 FROM pg_create_logical_replication_slot('{}', 'test_decoding')",
        db.name
    ));
    let text = config(&db.url(), &db.name);
    assert_both_refuse(
        &text,
        &format!(
            "replication slot {} exists but is not a pgoutput slot",
            db.name
        ),
        &format!(
            "replication slot {} exists but is not a pgoutput slot",
            db.name
        ),
    )
    .await;
    // The other program's slot is left as it was.
    assert_eq!(
        db.sql(&format!(
            "SELECT plugin FROM pg_replication_slots WHERE slot_name = '{}'",
            db.name
        )),
        "test_decoding"
    );
    db.sql(&format!("SELECT pg_drop_replication_slot('{}')", db.name));
}

/// One server of its own, first with `wal_level = replica`, then logical with its only slot
/// taken: starting a server costs seconds, so both refusals share it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_and_no_free_slot_are_refused() {
    let mut pg = PgServer::start(&[("wal_level", "replica"), ("max_replication_slots", "1")])
        .unwrap_or_else(|e| panic!("a second PostgreSQL server: {e}"));
    let db = pg.create_database().unwrap();
    let sql = |pg: &PgServer, q: &str| pg.psql(&db, q).unwrap_or_else(|e| panic!("{q}: {e}"));
    sql(&pg, "CREATE TABLE orders (id int PRIMARY KEY)");
    let text = config(&pg.url(&db), "walhook");
    assert_both_refuse(
        &text,
        "wal_level = replica: run ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL",
        "logical decoding requires wal_level >= logical",
    )
    .await;

    // The one slot taken by another program (a physical standby's), then wal_level = logical.
    sql(
        &pg,
        "SELECT 1 FROM pg_create_physical_replication_slot('standby', true)",
    );
    sql(&pg, "ALTER SYSTEM SET wal_level = logical");
    pg.stop(StopMode::Fast).unwrap();
    pg.restart().unwrap();
    assert_eq!(sql(&pg, "SHOW wal_level"), "logical");
    let (ok, out) = check(&text).await;
    assert!(!ok, "check exits non-zero:\n{out}");
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("FAIL")
            && l.contains("slot walhook does not exist yet and no replication slot is free")),
        "{out}"
    );
    // run treats a full server as a passing shortage (SQLSTATE 53400, like too many
    // connections): it says so in its reconnect warning and takes the slot once one is free.
    let (mut child, _cfg) = super::spawn_run("no-free-slot", &text, &[]);
    child
        .wait_log("all replication slots are in use", Duration::from_secs(30))
        .await;
    sql(&pg, "SELECT pg_drop_replication_slot('standby')");
    child.wait_log("streaming", Duration::from_secs(60)).await;
    assert!(child.stop().await.success());
}
