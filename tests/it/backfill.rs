//! Backfills (`POST /api/rest/_webhooks/{id}/backfill`): validation refuses and runs nothing;
//! existing rows arrive as READ events equal to `to_jsonb(row)` with filter/select/where
//! applied; kill -9 mid-backfill resumes without re-storing finished chunks; a backfill racing a
//! writer ends with every key's last event equal to the row's final state.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::bin::{self, Walhook};
use crate::support::daemon::{config_text, fast_delivery, wait_value};
use crate::support::receiver::Receiver;
use crate::support::TestDb;

pub(crate) const TOKEN: &str = "bf-token";

pub(crate) fn sub(id: &str, table: &str, url: &str, extra: &str) -> String {
    format!(
        "[[subscriptions]]\nid = \"{id}\"\ntable = \"{table}\"\n\
         events = [\"INSERT\", \"UPDATE\", \"DELETE\"]\nurl = \"{url}/{id}\"\nsecret = \"whsec_bf\"\n{extra}\n"
    )
}

pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
}

impl Api {
    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/rest/_webhooks/{path}", self.base))
            .bearer_auth(TOKEN)
            .header("X-Project-ID", "test-project")
            .header("environment", "master");
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub(crate) async fn start(&self, sub: &str, body: Value) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            &format!("{sub}/backfill"),
            Some(body),
        )
        .await
    }
}

pub(crate) fn config_path(db: &TestDb, tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("walhook-bf-{}-{tag}.toml", db.name))
}

/// `walhook run` spawned with the API on port 0; waits until it streams.
pub(crate) async fn spawn(db: &TestDb, subs: &str, tag: &str) -> (Walhook, Api) {
    let text = config_text(
        db,
        &fast_delivery(&format!(
            "[api]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
        )),
        subs,
    );
    let path = config_path(db, tag);
    std::fs::write(&path, text).unwrap();
    let mut cmd = bin::with_config("run", &path);
    cmd.stdout(Stdio::null());
    let log = std::env::temp_dir().join(format!("walhook-test-bf-{}.log", db.name));
    let mut child = Walhook::spawn_logging(cmd, &log);
    let addr = child.api_addr().await;
    child.wait_log("streaming", Duration::from_secs(30)).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        base: format!("http://{addr}"),
    };
    (child, api)
}

/// Stops the daemon and drops the test's slot (slots are cluster-wide and limited on the shared
/// server).
pub(crate) async fn stop(child: Walhook, db: &TestDb) {
    child.stop().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        db.sql(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = '{}' AND NOT active",
            db.name
        ));
        let left = db.sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.name
        ));
        if left == "0" {
            return;
        }
        assert!(Instant::now() < deadline, "slot {} still active", db.name);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The distinct `record.id`s of `reqs`, ascending.
pub(crate) fn record_ids(reqs: &[crate::support::receiver::Request]) -> Vec<i64> {
    let mut ids: Vec<i64> = reqs
        .iter()
        .map(|r| r.json()["record"]["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The receiver's requests once it has `n` distinct deliveries (`X-Archie-Delivery`): a request
/// that timed out on a loaded machine is sent again (at-least-once), so counting requests alone
/// could stop early.
pub(crate) async fn wait_distinct(
    rx: &Receiver,
    n: usize,
    secs: u64,
) -> Vec<crate::support::receiver::Request> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let reqs = rx.snapshot();
        let ids: HashSet<&str> = reqs.iter().map(|r| r.header("x-archie-delivery")).collect();
        if ids.len() >= n {
            return reqs;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} deliveries received",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `to_jsonb(row)` of every row, by id.
pub(crate) fn rows_jsonb(db: &TestDb, table: &str) -> HashMap<i64, Value> {
    let out = db.sql(&format!(
        "SELECT coalesce(json_agg(json_build_array(id, to_jsonb(t))), '[]') FROM {table} t"
    ));
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].clone()))
        .collect()
}

pub(crate) fn items(db: &TestDb, n: i64) {
    db.sql(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, status text, total numeric(10,2),
                             at timestamptz, tags text[], doc jsonb);
         ALTER TABLE items REPLICA IDENTITY FULL;
         INSERT INTO items SELECT g, CASE WHEN g % 3 = 0 THEN 'paid' ELSE 'open' END,
                (g * 1.25)::numeric(10,2), timestamptz '2025-01-01 00:00:00+00' + g * interval '1 minute',
                ARRAY['a', g::text], jsonb_build_object('k', g, 'nested', jsonb_build_object('x', 'y'))
         FROM generate_series(1, {n}) g"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_run_nothing() {
    let db = TestDb::new();
    db.sql(
        "CREATE TABLE nopk (a int, b text); ALTER TABLE nopk REPLICA IDENTITY FULL;
         INSERT INTO nopk VALUES (1, 'x')",
    );
    items(&db, 10);
    let rx = Receiver::ok().await;
    let subs = sub("nopk", "nopk", &rx.url, "") + &sub("items", "items", &rx.url, "");
    let (child, api) = spawn(&db, &subs, "refused").await;

    let (status, body) = api.start("nopk", json!({})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("has no primary key"),
        "{body}"
    );
    for (expr, says) in [
        ("true; DELETE FROM items", "';'"),
        ("id > 1; SELECT 1", "';'"),
        ("true) OR (SELECT count(*) FROM pg_sleep(5)) > (0", "')'"),
        ("id > 0 SELECT 1", "syntax error"),
        ("no_such_column = 1", "no_such_column"),
        ("id", "boolean"),
        ("true -- comment", "comment"),
    ] {
        let (status, body) = api.start("items", json!({ "where": expr })).await;
        assert_eq!(status, 422, "{expr}: {body}");
        assert_eq!(body["field"], "where", "{expr}: {body}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(says), "{expr}: {msg}");
    }
    let (status, body) = api.start("items", json!({ "chunk_size": 0 })).await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = api.start("missing", json!({})).await;
    assert_eq!(status, 404);
    // Nothing ran: no backfill stored, the table untouched, nothing sent.
    assert_eq!(db.sql("SELECT count(*) FROM walhook.backfills"), "0");
    assert_eq!(db.sql("SELECT count(*) FROM items"), "10");
    assert_eq!(db.sql("SELECT count(*) FROM walhook.delivery_states"), "0");
    assert_eq!(rx.count(), 0);
    stop(child, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_arrive_as_read_events_equal_to_to_jsonb() {
    let db = TestDb::new();
    items(&db, 3000);
    let rx = Receiver::ok().await;
    let subs = sub("all", "items", &rx.url, "")
        + &sub(
            "narrow",
            "items",
            &rx.url,
            "filter = { status = \"paid\" }\nselect = [\"id\", \"total\", \"doc\"]",
        );
    let (child, api) = spawn(&db, &subs, "read").await;
    let (status, all) = api.start("all", json!({ "chunk_size": 700 })).await;
    assert_eq!(status, 202, "{all}");
    let (status, narrow) = api
        .start("narrow", json!({ "where": "id <= 1500 AND status <> 'x'" }))
        .await;
    assert_eq!(status, 202, "{narrow}");
    assert_eq!(all["state"], "running");
    assert!(all["id"].as_str().unwrap().starts_with("bf_"));
    // 3000 rows to `all`; to `narrow`, the paid rows (every third) among ids 1..=1500.
    let reqs = wait_distinct(&rx, 3000 + 500, 60).await;
    let want = rows_jsonb(&db, "items");
    let mut seen: HashMap<&str, HashSet<i64>> = HashMap::new();
    for r in &reqs {
        let v = r.json();
        assert_eq!(v["event"], "READ", "{v}");
        assert_eq!(r.header("x-archie-event"), "READ");
        assert_eq!(v["changed_fields"], json!([]));
        assert_eq!(v["record"], v["data"]);
        assert_eq!(v["table"], "items");
        let id = v["record"]["id"].as_i64().unwrap();
        let which = r.path.trim_start_matches('/');
        let expected = match which {
            "all" => want[&id].clone(),
            "narrow" => {
                assert_eq!(id % 3, 0, "filter applies: {v}");
                assert!(id <= 1500, "where applies: {v}");
                let w = &want[&id];
                json!({ "id": w["id"], "total": w["total"], "doc": w["doc"] })
            }
            other => panic!("unexpected path {other}"),
        };
        assert_eq!(v["record"], expected, "{which} row {id}");
        let eid = v["id"].as_str().unwrap();
        assert!(eid.starts_with("evt_bf_"), "{eid}");
        assert_eq!(r.header("x-archie-delivery"), eid);
        seen.entry(if which == "all" { "all" } else { "narrow" })
            .or_default()
            .insert(id);
    }
    assert_eq!(seen["all"].len(), 3000);
    assert_eq!(seen["narrow"].len(), 500);
    // Columns keep the table's order, as the stream renders them.
    let first = reqs.iter().find(|r| r.path == "/all").unwrap();
    let body = String::from_utf8_lossy(&first.body).to_string();
    assert!(body.contains("\"record\":{\"id\":"), "{body}");
    let bid = all["id"].as_str().unwrap();
    wait_value(
        &db,
        &format!(
            "SELECT state || ' ' || rows_done FROM walhook.backfills WHERE id = {}",
            &bid[3..]
        ),
        "done 3000",
        30,
    )
    .await;
    let (status, one) = api
        .send(reqwest::Method::GET, &format!("all/backfills/{bid}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(one["state"], "done", "{one}");
    assert_eq!(one["rowsDone"], 3000);
    assert!(one["finishedAt"].is_string());
    let (_, list) = api
        .send(reqwest::Method::GET, "narrow/backfills", None)
        .await;
    assert_eq!(list["backfills"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        list["backfills"][0]["where"],
        "id <= 1500 AND status <> 'x'"
    );
    // The stream goes on after the backfill (`narrow` selects no changed column: not sent).
    db.sql("UPDATE items SET status = 'paid' WHERE id = 1");
    let reqs = wait_distinct(&rx, 3500 + 1, 20).await;
    let last = reqs.last().unwrap().json();
    assert_eq!(
        (&last["event"], &last["record"]["id"]),
        (&json!("UPDATE"), &json!(1)),
        "{last}"
    );
    stop(child, &db).await;
}

/// A primary key on a generated column stays in READ records: chunks resume after the last
/// key, so leaving it out would end the backfill after its first chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_primary_key_is_read_chunk_after_chunk() {
    let db = TestDb::new();
    db.sql(
        "CREATE TABLE gk (a int, id int GENERATED ALWAYS AS (a * 2) STORED PRIMARY KEY);
         INSERT INTO gk (a) SELECT generate_series(1, 5)",
    );
    let rx = Receiver::ok().await;
    let (child, api) = spawn(&db, &sub("gk", "gk", &rx.url, ""), "gk").await;
    let (status, body) = api.start("gk", json!({"chunk_size": 2})).await;
    assert_eq!(status, 202, "{body}");
    let reqs = wait_distinct(&rx, 5, 60).await;
    assert_eq!(record_ids(&reqs), [2, 4, 6, 8, 10]);
    stop(child, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_at_once() {
    let db = TestDb::new();
    items(&db, 5000);
    let rx = Receiver::ok().await;
    let (child, api) = spawn(&db, &sub("s", "items", &rx.url, ""), "cancel").await;
    let (status, b) = api
        .start("s", json!({ "chunk_size": 100, "pause_ms": 200 }))
        .await;
    assert_eq!(status, 202, "{b}");
    let bid = b["id"].as_str().unwrap().to_string();
    rx.wait_for(100, Duration::from_secs(20)).await;
    // Progress per backfill in /metrics while it runs (set once the runner hears of the commit).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (metrics, done_line) = loop {
        let metrics = api
            .http
            .get(format!("{}/metrics", api.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("walhook_backfill_rows_done{"))
            .map(str::to_string);
        if let Some(line) = line {
            break (metrics, line);
        }
        assert!(Instant::now() < deadline, "no backfill metrics: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        done_line.contains(&format!("backfill=\"{bid}\""))
            && done_line.contains("subscription=\"s\""),
        "{done_line}"
    );
    let rows: i64 = done_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(rows >= 100 && rows % 100 == 0, "{done_line}");
    assert!(
        metrics.contains("walhook_backfill_rows_estimated{"),
        "{metrics}"
    );
    let (status, c) = api
        .send(reqwest::Method::DELETE, &format!("s/backfills/{bid}"), None)
        .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["state"], "cancelled");
    let stored = db.sql("SELECT count(*) FROM walhook.delivery_states");
    // At most the chunk in flight is stored after the cancel.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: i64 = db
        .sql("SELECT count(*) FROM walhook.delivery_states")
        .parse()
        .unwrap();
    assert!(
        after <= stored.parse::<i64>().unwrap() + 100,
        "{stored} → {after}"
    );
    assert!(after < 5000);
    let (status, _) = api
        .send(reqwest::Method::GET, "s/backfills/bf_999", None)
        .await;
    assert_eq!(status, 404);
    stop(child, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_resumes_after_the_last_stored_chunk() {
    let db = TestDb::new();
    items(&db, 20_000);
    let rx = Receiver::ok().await;
    let subs = sub("s", "items", &rx.url, "");
    let (mut child, api) = spawn(&db, &subs, "kill1").await;
    let (status, b) = api
        .start("s", json!({ "chunk_size": 500, "pause_ms": 50 }))
        .await;
    assert_eq!(status, 202, "{b}");
    let bid = b["id"].as_str().unwrap()[3..].to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done: i64 = db
            .sql(&format!(
                "SELECT rows_done FROM walhook.backfills WHERE id = {bid}"
            ))
            .parse()
            .unwrap();
        if done >= 5000 {
            break;
        }
        assert!(Instant::now() < deadline, "backfill stuck at {done}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.sigkill().await;
    let at_kill: i64 = db
        .sql(&format!(
            "SELECT rows_done FROM walhook.backfills WHERE id = {bid}"
        ))
        .parse()
        .unwrap();
    assert!(at_kill < 20_000, "finished before the kill");
    // Progress and rows are stored together: exactly the finished chunks are in the outbox.
    assert_eq!(
        db.sql("SELECT count(*) FROM walhook.delivery_states WHERE event = 'READ'"),
        at_kill.to_string()
    );
    let (child, _api) = spawn(&db, &subs, "kill2").await;
    wait_value(
        &db,
        &format!("SELECT state || ' ' || rows_done FROM walhook.backfills WHERE id = {bid}"),
        "done 20000",
        60,
    )
    .await;
    let log = child.log();
    assert!(
        log.contains(&format!("rows_done={at_kill}")),
        "the restart resumed from the stored chunk: {}",
        child.log_tail(30)
    );
    // Finished chunks were not stored again: every row once, with its stable event id.
    assert_eq!(
        db.sql(
            "SELECT count(*) || ' ' || count(DISTINCT event_id) || ' ' || count(DISTINCT ordering_key)
             FROM walhook.delivery_states WHERE event = 'READ'"
        ),
        "20000 20000 20000"
    );
    // Every row reaches the receiver (a delivery sent but not recorded before the kill is sent
    // again: at-least-once, same event id). Generous: a loaded 2-core machine delivers slowly.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let reqs = rx.snapshot();
        let mut by_row: std::collections::HashMap<i64, HashSet<String>> = Default::default();
        for r in &reqs {
            by_row
                .entry(r.json()["record"]["id"].as_i64().unwrap())
                .or_default()
                .insert(r.header("x-archie-delivery").to_string());
        }
        if let Some((row, events)) = by_row.iter().find(|(_, e)| e.len() > 1) {
            panic!(
                "row {row} arrived with event ids {events:?}; its deliveries: {}",
                db.sql(&format!(
                    "SELECT string_agg(id || ' ' || event || ' ' || event_id || ' ' || status || ' ' || attempts, '; ')
                     FROM walhook.delivery_states WHERE ordering_key = (SELECT ordering_key FROM walhook.delivery_states
                     WHERE payload::jsonb->'record'->>'id' = '{row}' LIMIT 1)"
                ))
            );
        }
        let ids: HashSet<i64> = by_row.keys().copied().collect();
        if ids.len() == 20_000 {
            break;
        }
        assert!(Instant::now() < deadline, "{} rows received", ids.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(child, &db).await;
}

/// The acceptance test: a 100k-row table backfilled while a writer UPDATEs and DELETEs
/// random rows and INSERTs new ones at ~1k row changes a second. The subscription batches
/// (`max_events = 500`), so that 100k deliveries reach the receiver in seconds in a debug build;
/// a key's events keep their order across batches, which the checks below rely on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writer_last_event_per_key_is_the_final_row() {
    let db = TestDb::new();
    const N: i64 = 100_000;
    const CHUNK: i64 = 1000;
    /// Row changes per second the writer aims at.
    const RATE: f64 = 1000.0;
    items(&db, N);
    let rx = Receiver::ok().await;
    let batch = "batch = { max_events = 500, max_wait = \"20ms\" }";
    let (child, api) = spawn(&db, &sub("s", "items", &rx.url, batch), "race").await;
    let started = Instant::now();
    // 100 chunks: the writer below runs through every one of them.
    let (status, b) = api.start("s", json!({ "chunk_size": CHUNK })).await;
    assert_eq!(status, 202, "{b}");
    let bid: i64 = b["id"].as_str().unwrap()[3..].parse().unwrap();
    // The writer: random UPDATEs, DELETEs and new INSERTs while the backfill runs.
    let client = db.client().await;
    let mut next = N + 1;
    let mut deleted: HashSet<i64> = HashSet::new();
    let (mut round, mut changes) = (0u64, 0u64);
    let mut cursor = 0i64;
    loop {
        if round % 4 == 0 {
            let row = client
                .query_one(
                    "SELECT state, coalesce((last_key ->> 'id')::int8, 0) FROM walhook.backfills WHERE id = $1",
                    &[&bid],
                )
                .await
                .unwrap();
            let state: String = row.get(0);
            cursor = row.get(1);
            if state != "running" && round > 20 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "backfill not done"
        );
        round += 1;
        // Most writes land just ahead of the backfill's cursor, in the chunk being read, where
        // a stale READ would overtake a streamed change; the others anywhere.
        let near = |r: i64| {
            if r % 4 != 0 {
                (cursor + r.rem_euclid(CHUNK + CHUNK / 2)).min(N - 1) + 1
            } else {
                r.rem_euclid(N) + 1
            }
        };
        let ups: Vec<String> = (0..6).map(|_| near(rand::random()).to_string()).collect();
        let d = near(rand::random());
        // Three transactions (explicit: a multi-statement query is one implicit transaction).
        client
            .batch_execute(&format!(
                "BEGIN; UPDATE items SET status = 'u{round}', total = total + 1 WHERE id IN ({}); COMMIT;
                 BEGIN; DELETE FROM items WHERE id = {d}; COMMIT;
                 BEGIN; INSERT INTO items (id, status) VALUES ({next}, 'new'); COMMIT;",
                ups.join(", ")
            ))
            .await
            .unwrap();
        changes += 8;
        deleted.insert(d);
        next += 1;
        // Paced to RATE: ahead of it, wait; behind it (a loaded machine), go on at once.
        let ahead = changes as f64 / RATE - started.elapsed().as_secs_f64();
        if ahead > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(ahead)).await;
        }
    }
    let want = rows_jsonb(&db, "items");
    let dropped = db.sql(&format!(
        "SELECT b.rows_done - (SELECT count(*) FROM walhook.delivery_states WHERE event = 'READ')
         FROM walhook.backfills b WHERE id = {bid}"
    ));
    eprintln!(
        "backfill done after {:?}; rows left to the stream (changed during their chunk): \
         {dropped}; writer: {round} rounds, ~{:.0} row changes/s",
        started.elapsed(),
        changes as f64 / started.elapsed().as_secs_f64(),
    );
    // A last row: once its delivery is stored, ingest has stored every change before it.
    client
        .batch_execute("INSERT INTO items (id, status) VALUES (0, 'end')")
        .await
        .unwrap();
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_states WHERE ordering_key = '[0]'",
        "1",
        60,
    )
    .await;
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_states WHERE status <> 'delivered'",
        "0",
        300,
    )
    .await;
    eprintln!("every delivery delivered after {:?}", started.elapsed());
    // Each event's sequence (per subscription, in commit order), by event id.
    let out = db.sql(
        "SELECT coalesce(json_object_agg(event_id, sequence), '{}') FROM walhook.delivery_states",
    );
    let sequence: HashMap<String, i64> = serde_json::from_str(&out).unwrap();
    // The events as they arrived (a batch sent again after a timed-out attempt repeats them).
    let deadline = Instant::now() + Duration::from_secs(30);
    let events: Vec<Value> = loop {
        let events: Vec<Value> = rx
            .snapshot()
            .iter()
            .flat_map(|r| r.json()["events"].as_array().cloned().unwrap_or_default())
            .collect();
        let distinct: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        if distinct.len() >= sequence.len() {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events received",
            distinct.len(),
            sequence.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "{} events ({} deliveries) received after {:?}",
        events.len(),
        sequence.len(),
        started.elapsed()
    );
    let mut last: HashMap<i64, &Value> = HashMap::new();
    let mut seq: HashMap<i64, i64> = HashMap::new();
    for v in &events {
        let id = v["record"]["id"].as_i64().unwrap();
        let s = sequence[v["id"].as_str().unwrap()];
        // Per-key order: a key's events arrive in sequence order (a repeat of the same event,
        // after a timed-out attempt, comes before the next one).
        if let Some(prev) = seq.insert(id, s) {
            assert!(s >= prev, "key {id}: sequence {s} after {prev}");
        }
        last.insert(id, v);
    }
    for id in 1..next {
        let got = last.get(&id);
        match want.get(&id) {
            Some(row) => {
                let got = got.unwrap_or_else(|| panic!("key {id} never sent"));
                assert_ne!(got["event"], "DELETE", "key {id}");
                assert_eq!(&got["record"], row, "key {id}: {}", got["event"]);
            }
            None if deleted.contains(&id) => {
                let got = got.unwrap_or_else(|| panic!("deleted key {id}: no event"));
                assert_eq!(got["event"], "DELETE", "deleted key {id}");
            }
            None => {}
        }
    }
    // Keys present at the start and never deleted were all sent.
    for id in 1..=N {
        if !deleted.contains(&id) {
            assert!(last.contains_key(&id), "key {id} never sent");
        }
    }
    stop(child, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_twin_checks_starts_and_follows_to_done() {
    let db = TestDb::new();
    items(&db, 2000);
    let rx = Receiver::ok().await;
    let (child, _api) = spawn(&db, &sub("s", "items", &rx.url, ""), "cli").await;
    let cfg = config_path(&db, "cli");
    let refused = bin::with_config("backfill", &cfg)
        .args(["--subscription", "s", "--where", "true; DELETE FROM items"])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("where: contains ';'"), "{err}");
    assert_eq!(db.sql("SELECT count(*) FROM walhook.backfills"), "0");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        bin::with_config("backfill", &cfg)
            .args([
                "--subscription",
                "s",
                "--where",
                "id <= 1200",
                "--chunk-size",
                "300",
            ])
            .output(),
    )
    .await
    .expect("walhook backfill ends")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a terminal: plain lines, the first one saying what started, the last one the end.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("backfill bf_1 of s started"),
        "{stdout}"
    );
    assert!(
        lines.last().unwrap().starts_with("bf_1 done: 1200"),
        "{stdout}"
    );
    assert!(!stdout.contains('\r'), "{stdout:?}");
    let reqs = wait_distinct(&rx, 1200, 30).await;
    assert!(reqs.iter().all(|r| r.json()["event"] == "READ"));
    stop(child, &db).await;
}
