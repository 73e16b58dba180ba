//! The decoder against what a real server sends: every message pgoutput (protocol 1) produced
//! for a scripted workload decodes, and decodes to what the workload did.

use bytes::Bytes;
use walhook::source::pgoutput::{decode, Message, OldTuple, TupleValue};

// One psql call per entry: psql runs a multi-statement -c string as a single transaction.
const SETUP: &[&str] = &[
    "CREATE TYPE mood AS ENUM ('sad', 'happy');
     CREATE TABLE t (id int PRIMARY KEY, note text, big text, m mood);
     ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
     CREATE TABLE f (id int, note text);
     ALTER TABLE f REPLICA IDENTITY FULL;
     CREATE PUBLICATION p FOR TABLE t, f",
    "SELECT 1 FROM pg_create_logical_replication_slot('s', 'pgoutput')",
];

const WORKLOAD: &[&str] = &[
    "INSERT INTO t VALUES (1, 'a', repeat('x', 10000), 'happy')",
    "UPDATE t SET note = NULL WHERE id = 1",
    "UPDATE t SET id = 2 WHERE id = 1",
    "DELETE FROM t",
    "INSERT INTO f VALUES (7, 'seven')",
    "DELETE FROM f",
    "TRUNCATE t, f",
    "SELECT 1 FROM pg_logical_emit_message(false, 'walhook', 'hi')",
    "SELECT 1 FROM pg_logical_emit_message(true, 'walhook', '\\x00ff'::bytea)",
];

fn changes(pg: &walhook::embedded_pg::PgServer, db: &str, binary: bool) -> Vec<Message> {
    let sql = format!(
        "SELECT encode(data, 'hex') FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL, \
         'proto_version', '1', 'publication_names', 'p', 'messages', 'true', 'binary', '{binary}')"
    );
    pg.psql(db, &sql)
        .unwrap()
        .lines()
        .map(|line| {
            let raw = Bytes::from(hex::decode(line).unwrap());
            decode(raw.clone()).unwrap_or_else(|e| panic!("{e} in {line}"))
        })
        .collect()
}

fn tags(msgs: &[Message]) -> String {
    msgs.iter().map(Message::tag).collect()
}

#[test]
fn decodes_everything_a_real_server_sends() {
    let pg = crate::support::pg::shared();
    let db = pg.create_database().unwrap();
    for sql in SETUP {
        pg.psql(&db, sql).unwrap();
    }
    // The test server runs with synchronous_commit = off, but the slot functions only decode
    // flushed WAL, so without this the tail of the workload may not be visible yet.
    for sql in WORKLOAD {
        pg.psql(&db, &format!("SET synchronous_commit = on; {sql}"))
            .unwrap();
    }

    let msgs = changes(pg, &db, false);
    // TRUNCATE invalidates the cached relations, so their schema (Y R R) is sent again first.
    assert_eq!(tags(&msgs), "BYRICBUCBUCBDCBRICBDCBYRRTCMBMC", "{msgs:#?}");

    let Message::Relation(rel) = &msgs[2] else {
        unreachable!()
    };
    assert_eq!((rel.namespace.as_str(), rel.name.as_str()), ("public", "t"));
    assert_eq!(rel.replica_identity, b'd');
    let names: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "note", "big", "m"]);
    assert!(rel.columns[0].is_key && !rel.columns[1].is_key);
    assert_eq!(rel.columns[0].type_oid, 23);
    let Message::Type { id, name, .. } = &msgs[1] else {
        unreachable!()
    };
    assert_eq!((*id, name.as_str()), (rel.columns[3].type_oid, "mood"));

    let Message::Insert { new, .. } = &msgs[3] else {
        unreachable!()
    };
    assert_eq!(new.0[0], TupleValue::Text(Bytes::from_static(b"1")));
    assert_eq!(new.0[3], TupleValue::Text(Bytes::from_static(b"happy")));

    // Key unchanged: no old tuple; the untouched TOASTed column is not resent.
    let Message::Update { old, new, .. } = &msgs[6] else {
        unreachable!()
    };
    assert_eq!(*old, None);
    assert_eq!(new.0[1], TupleValue::Null);
    assert_eq!(new.0[2], TupleValue::UnchangedToast);

    // Key changed: the old key comes along.
    let Message::Update { old, .. } = &msgs[9] else {
        unreachable!()
    };
    assert!(
        matches!(old, Some(OldTuple::Key(k)) if k.0[0] == TupleValue::Text(Bytes::from_static(b"1")))
    );
    assert!(matches!(
        &msgs[12],
        Message::Delete {
            old: OldTuple::Key(_),
            ..
        }
    ));
    assert!(matches!(&msgs[15], Message::Relation(r) if r.replica_identity == b'f'));
    assert!(
        matches!(&msgs[19], Message::Delete { old: OldTuple::Full(t), .. }
        if t.0[1] == TupleValue::Text(Bytes::from_static(b"seven")))
    );
    assert!(matches!(&msgs[25], Message::Truncate { relation_ids, .. } if relation_ids.len() == 2));
    assert!(
        matches!(&msgs[27], Message::LogicalMessage { transactional: false, prefix, content, .. }
        if prefix == "walhook" && content == "hi")
    );
    assert!(
        matches!(&msgs[29], Message::LogicalMessage { transactional: true, content, .. }
        if content[..] == [0x00, 0xff])
    );
    assert!(matches!(
        (&msgs[0], &msgs[4]),
        (Message::Begin { final_lsn, .. }, Message::Commit { commit_lsn, .. }) if final_lsn == commit_lsn
    ));

    // Binary mode: same shape, values in send format.
    let bin = changes(pg, &db, true);
    assert_eq!(tags(&bin), tags(&msgs));
    let Message::Insert { new, .. } = &bin[3] else {
        unreachable!()
    };
    assert_eq!(
        new.0[0],
        TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 1]))
    );
}
