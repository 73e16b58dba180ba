//! Backfill READ rows rendered as the stream renders the same rows: generated columns the
//! server does not publish, types whose cast to json the stream does not apply, and session
//! settings (time zone, interval style, bytea output) that differ from the stream's.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backfill::{spawn, stop, sub, wait_distinct};
use crate::support::receiver::Receiver;
use crate::support::TestDb;
use crate::values_catalog::JCOLOR;

/// A READ event renders a row as the stream renders its INSERT: a generated column that
/// pgoutput does not publish (every one before PostgreSQL 18) is left out of `record` and listed
/// under `omitted` in both, and `select` without it states nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_columns_are_read_as_the_stream_sends_them() {
    let db = TestDb::new();
    db.sql(
        "CREATE TABLE gen (id int PRIMARY KEY, price numeric,
                           twice int GENERATED ALWAYS AS (id * 2) STORED);
         INSERT INTO gen VALUES (1, 1.50), (2, 2.50)",
    );
    assert!(
        db.sql("SELECT current_setting('server_version_num')::int < 180000") == "t",
        "this test pins the behaviour before PostgreSQL 18"
    );
    let rx = Receiver::ok().await;
    let subs = sub("gen", "gen", &rx.url, "")
        + &sub("narrow", "gen", &rx.url, "select = [\"id\", \"price\"]");
    let (child, api) = spawn(&db, &subs, "gen").await;
    for s in ["gen", "narrow"] {
        let (status, body) = api.start(s, json!({})).await;
        assert_eq!(status, 202, "{body}");
    }
    wait_distinct(&rx, 4, 60).await;
    db.sql("INSERT INTO gen VALUES (3, 3.50)");
    // Both subscriptions get the INSERT under one event id: wait for its second copy.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx
        .snapshot()
        .iter()
        .filter(|r| r.json()["event"] == "INSERT")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the INSERT did not reach both subscriptions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reqs = rx.snapshot();
    let omitted = r#","omitted":[{"column":"twice","reason":"generated_not_published"}]"#;
    let mut seen = HashSet::new();
    for r in &reqs {
        let body = String::from_utf8_lossy(&r.body).to_string();
        let v = r.json();
        let id = v["record"]["id"].as_i64().unwrap();
        let want_event = if id == 3 { "INSERT" } else { "READ" };
        assert_eq!(v["event"], want_event, "{body}");
        let record = format!(r#"{{"id":{id},"price":{id}.50}}"#);
        let tail = match r.path.as_str() {
            "/gen" => {
                format!(r#""record":{record},"data":{record},"changed_fields":[]{omitted}}}"#)
            }
            _ => format!(r#""record":{record},"data":{record},"changed_fields":[]}}"#),
        };
        assert!(
            body.ends_with(&tail),
            "{} row {id}: {body}\nwant the end: {tail}",
            r.path
        );
        seen.insert((r.path.clone(), id));
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    stop(child, &db).await;
}

/// The database's own settings (a time zone, an interval style, a bytea output other than the
/// stream's) and a type whose cast to json the stream does not apply: a READ record equals the
/// stream's INSERT record of the same values, column for column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_read_as_the_stream_renders_them() {
    let db = TestDb::new();
    db.sql(&format!(
        "ALTER DATABASE \"{n}\" SET timezone = 'Asia/Kolkata';
         ALTER DATABASE \"{n}\" SET intervalstyle = 'iso_8601';
         ALTER DATABASE \"{n}\" SET bytea_output = 'escape'",
        n = db.name
    ));
    db.sql(&format!(
        "CREATE EXTENSION hstore; {JCOLOR}
         CREATE TYPE painted AS (n int, c jcolor, at timestamptz);
         CREATE TABLE odd (id int PRIMARY KEY, at timestamptz, span interval, raw bytea,
                           c jcolor, cs jcolor[], p painted, h hstore);
         CREATE FUNCTION odd_row(i int) RETURNS odd LANGUAGE sql AS $$
             SELECT i, timestamptz '2024-01-01 10:00:00+00', interval '1 day 2 hours',
                    '\\x0102'::bytea, 'red'::jcolor, ARRAY['red', 'green']::jcolor[],
                    ROW(7, 'green', timestamptz '2024-01-01 10:00:00+00')::painted,
                    'a=>1, b=>NULL'::hstore $$;
         INSERT INTO odd SELECT * FROM odd_row(1)"
    ));
    let rx = Receiver::ok().await;
    let (child, api) = spawn(&db, &sub("odd", "odd", &rx.url, ""), "odd").await;
    let (status, body) = api.start("odd", json!({})).await;
    assert_eq!(status, 202, "{body}");
    wait_distinct(&rx, 1, 60).await;
    db.sql("INSERT INTO odd SELECT * FROM odd_row(2)");
    let reqs = wait_distinct(&rx, 2, 30).await;
    let record = |event: &str| -> Value {
        let r = reqs
            .iter()
            .find(|r| r.json()["event"] == event)
            .unwrap_or_else(|| panic!("no {event} among {} requests", reqs.len()));
        let mut record = r.json()["record"].clone();
        record.as_object_mut().unwrap().shift_remove("id");
        record
    };
    let (read, insert) = (record("READ"), record("INSERT"));
    // The stream's rendering, pinned: offsets in UTC, intervals in the postgres style, bytea in
    // hex, the enum with the json cast as its text (not the cast's object).
    let want = json!({
        "at": "2024-01-01T10:00:00+00:00",
        "span": "1 day 02:00:00",
        "raw": "\\x0102",
        "c": "red",
        "cs": ["red", "green"],
        "p": {"n": 7, "c": "green", "at": "2024-01-01T10:00:00+00:00"},
        "h": {"a": "1", "b": null},
    });
    assert_eq!(insert, want, "the stream's INSERT");
    assert_eq!(
        serde_json::to_string(&read).unwrap(),
        serde_json::to_string(&insert).unwrap(),
        "READ and INSERT records differ"
    );
    stop(child, &db).await;
}
