//! The wait before a backfill chunk's read (`outbox::backfills::settle_commits`): for which
//! transactions it waits, and that it ends as soon as they do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use walhook::model::TableName;
use walhook::outbox::backfills::settle_commits;

use crate::support::TestDb;

/// Before a chunk is read, the transactions in progress at its low watermark that wrote to the
/// table must end (one may have committed before the watermark without being visible yet): the
/// read waits for them, and goes on as soon as they end, or at its 5 s bound, saying how many
/// are still open (the runner logs it once). Transactions that wrote only other tables (walhook's
/// own outbox writer and delivery, the host's other work) or only read the table are not waited
/// for; one that wrote a partition of a partitioned table is.
#[tokio::test]
async fn a_chunk_read_waits_for_the_transactions_open_at_its_low_watermark() {
    let db = TestDb::new();
    let writer = db.client().await;
    let other = db.client().await;
    let reader = db.client().await;
    reader
        .batch_execute(
            "CREATE TABLE t (a int); CREATE TABLE u (a int);
             CREATE TABLE p (a int) PARTITION BY RANGE (a);
             CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10)",
        )
        .await
        .unwrap();
    let t_name = TableName::parse("t").unwrap();
    // Open transactions that did not write t: one wrote u, one only read t. Back at once (it
    // waits up to 5 s otherwise).
    writer
        .batch_execute("BEGIN; INSERT INTO u VALUES (1)")
        .await
        .unwrap();
    other
        .batch_execute("BEGIN; SELECT txid_current(); SELECT * FROM t")
        .await
        .unwrap();
    let open = tokio::time::timeout(Duration::from_secs(2), settle_commits(&reader, &t_name))
        .await
        .expect("waited for transactions that did not write the table")
        .unwrap();
    assert!(open.is_empty(), "{open:?}");
    other.batch_execute("COMMIT").await.unwrap();
    // One that wrote t is waited for, at most 5 s, and said to be still open then.
    writer
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let t = Instant::now();
    let open = settle_commits(&reader, &t_name).await.unwrap();
    let pid = backend_pid(&writer).await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (open[0].pid, open[0].prepared.as_deref()),
        (Some(pid), None)
    );
    assert!(
        open[0]
            .to_string()
            .starts_with(&format!("pid {pid} (since 20")),
        "{}",
        open[0]
    );
    assert!(t.elapsed() >= Duration::from_secs(5), "{:?}", t.elapsed());
    // ... and as soon as it ends, the wait ends.
    let reader = Arc::new(reader);
    settles_at_commit(&reader, "t", &writer, "a transaction").await;
    // A write made directly to a partition holds the backfill of the partitioned table.
    writer
        .batch_execute("BEGIN; INSERT INTO p1 VALUES (1)")
        .await
        .unwrap();
    settles_at_commit(&reader, "p", &writer, "a partition's writer").await;
}

/// `settle_commits` for `table` while `writer`'s transaction is open: still waiting after
/// 300 ms, and back with nothing left open, well before its 5 s bound, once it commits.
async fn settles_at_commit(
    reader: &Arc<tokio_postgres::Client>,
    table: &str,
    writer: &tokio_postgres::Client,
    what: &str,
) {
    let (r, name) = (reader.clone(), TableName::parse(table).unwrap());
    let t = Instant::now();
    let settle = tokio::spawn(async move { settle_commits(&r, &name).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!settle.is_finished(), "returned while {what} was open");
    writer.batch_execute("COMMIT").await.unwrap();
    assert_eq!(settle.await.unwrap().unwrap(), vec![]);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "returned only at its 5 s bound ({:?}), not when {what} ended",
        t.elapsed()
    );
}

/// A backfill whose chunk waits for a transaction that wrote the table and stays open: the daemon
/// says so, naming the backend to end, and the rows still arrive (a chunk waits at most 5 s),
/// the uncommitted row not among them. One chunk only: while the transaction is open, no other
/// test on the server can create its replication slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_writer_of_the_table_is_named_in_the_log() {
    use crate::backfill::{record_ids, spawn, stop, sub, wait_distinct};
    let db = TestDb::new();
    db.sql("CREATE TABLE lw (id int PRIMARY KEY); INSERT INTO lw SELECT generate_series(1, 4)");
    let rx = crate::support::receiver::Receiver::ok().await;
    let (mut child, api) = spawn(&db, &sub("lw", "lw", &rx.url, ""), "lw").await;
    let writer = db.client().await;
    writer
        .batch_execute("BEGIN; INSERT INTO lw VALUES (100)")
        .await
        .unwrap();
    let pid = backend_pid(&writer).await;
    let (status, body) = api.start("lw", serde_json::json!({"chunk_size": 10})).await;
    assert_eq!(status, 202, "{body}");
    let reqs = wait_distinct(&rx, 4, 60).await;
    assert_eq!(record_ids(&reqs), [1, 2, 3, 4]);
    let log = child
        .wait_log(
            "transactions that wrote to the table were still open",
            Duration::from_secs(5),
        )
        .await;
    let line = log.lines().find(|l| l.contains("were still open")).unwrap();
    assert!(
        line.contains(&format!("open=pid {pid} (since 20")),
        "{line}"
    );
    assert!(line.contains("table=public.lw"), "{line}");
    writer.batch_execute("ROLLBACK").await.unwrap();
    stop(child, &db).await;
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    let row = client.query_one("SELECT pg_backend_pid()", &[]).await;
    row.unwrap().get(0)
}
