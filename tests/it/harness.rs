//! The test harness itself: a real server with logical WAL, reachable, per-test databases.

#[test]
fn shared_server_has_logical_wal_and_fresh_databases() {
    let pg = crate::support::pg::shared();
    assert_eq!(pg.psql("postgres", "SHOW wal_level").unwrap(), "logical");
    let a = pg.create_database().unwrap();
    let b = pg.create_database().unwrap();
    assert_ne!(a, b);
    assert_eq!(pg.psql(&a, "SELECT current_database()").unwrap(), a);
}
