//! Differential test over the catalog: for every base, range, multirange, enum and domain type
//! a sample literal can produce (and the array of each), rows streamed through the real pipeline
//! (temporary slot, pgoutput, decode, route) must carry a `record` equal to the server's own
//! `to_jsonb(row)`, digit for digit. The types are found in `pg_type`, not listed by hand; the
//! samples come from one pool of literals (edge cases included), each kept for the types whose
//! input function accepts it. Composites (nested two deep, in arrays, under domains, altered
//! while streaming) and extension types (hstore, citext, ltree, cube) are covered too.
//!
//! The one documented exception: a non-built-in type with a cast to json other than hstore is
//! sent as its text (README, "Payload and headers"); the test pins that it differs exactly so.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::support::{start, sub, TestDb};

const ALL: &str = r#"["INSERT", "UPDATE", "DELETE"]"#;

/// walhook's replication session pins these; `to_jsonb` renders some types (interval, time,
/// money, timestamptz's zone) through them, so the comparing session pins them too.
const SESSION: &str = "SET DateStyle=ISO; SET TimeZone='UTC'; SET extra_float_digits=3; \
    SET bytea_output=hex; SET IntervalStyle=postgres";

/// A type with a cast to json that walhook does not reproduce (the documented fallback).
pub(crate) const JCOLOR: &str = "CREATE TYPE jcolor AS ENUM ('red', 'green');
    CREATE FUNCTION jcolor_json(jcolor) RETURNS json LANGUAGE sql IMMUTABLE
        AS $$ SELECT json_build_object('color', $1::text) $$;
    CREATE CAST (jcolor AS json) WITH FUNCTION jcolor_json(jcolor);";

const SETUP: &str = r#"
CREATE EXTENSION hstore; CREATE EXTENSION citext; CREATE EXTENSION ltree; CREATE EXTENSION cube;
CREATE TYPE mood AS ENUM ('happy', 'sad', 'so "so"', 'ünï cödé');
CREATE DOMAIN posnum AS numeric CHECK (VALUE >= 0);
CREATE DOMAIN posnum2 AS posnum;
CREATE DOMAIN tags AS text[];
CREATE FUNCTION walhook_try(typ text, lit text) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('SELECT CAST(%L AS %s)', lit, typ);
    RETURN true;
EXCEPTION WHEN OTHERS THEN
    RETURN false;
END $$;
"#;

/// Candidate literals: each type keeps those its input function accepts. Edge cases: extreme
/// and exotic numbers, infinities, BC dates, empty and blank strings, quotes, backslashes,
/// non-ASCII and control characters.
const POOL: &[&str] = &[
    "0",
    "1",
    "-1",
    "32767",
    "-32768",
    "2147483647",
    "-2147483648",
    "9223372036854775807",
    "-9223372036854775808",
    "4294967295",
    "1.5",
    "0.1",
    "-0.0001",
    "123.4500",
    "0.000",
    "12345678901234567890.123456789012345678901234567890",
    "1e-7",
    "1.5e-7",
    "1e100",
    "2.5e3",
    "1.7976931348623157e308",
    "5e-324",
    "3.4028235e38",
    "-0",
    "NaN",
    "Infinity",
    "-Infinity",
    "t",
    "f",
    "true",
    "x",
    "a",
    "ab",
    "",
    " ",
    "NULL",
    "null",
    "a b",
    " sp ",
    "héllo \"q\" \\ back\ttab ☃",
    "\u{1}ctl\u{1f}\u{7f}",
    "line\nbreak",
    "(1,\"x\")",
    "{}",
    "2024-01-02",
    "0044-03-15 BC",
    "infinity",
    "-infinity",
    "2024-01-02 03:04:05.123456",
    "2024-06-30 12:00:00.000001+02",
    "1999-12-31 23:59:59.5-08",
    "0044-03-15 12:34:56.5 BC",
    "12:34:56.789",
    "24:00",
    "12:00+02",
    "23:59:59.999999-05:30",
    "00:00+14",
    "1 year 2 mons -3 days 04:05:06.7",
    "-1 days",
    "00:00:00.000001",
    "\\x00ff",
    "\\x",
    "192.168.0.1/24",
    "10.0.0.0/8",
    "::1",
    "::/0",
    "08:00:2b:01:02:03",
    "08:00:2b:01:02:03:04:05",
    "12.34",
    "(1,2)",
    "(1.5,-2)",
    "((0,0),(1,1))",
    "(1,2),(3,4)",
    "[(0,0),(1,1)]",
    "((0,0),(1,1),(2,0))",
    "<(1,2),3>",
    "{1,2,3}",
    "[1,5)",
    "empty",
    "(,)",
    "[2024-01-01,2024-02-01)",
    "[\"2024-01-01 00:00+00\",infinity)",
    "{[1,5), [7,9)}",
    "{empty}",
    "a fat:2 cat",
    "fat & !cat",
    "101",
    "1 2",
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "{\"a\":[1.50, 1e3, -0, 1E-2],\"a\":2, \"s\":\"\\u00e9\"}",
    "[]",
    "\"\\u2603\"",
    "{\"x\":[1,2,{\"y\":null}],\"n\":1.0e+2}",
    "$.a[*] ? (@ > 1)",
    "10:20:10,14,15",
    "0/16B3748",
    "(0,1)",
    "pg_catalog",
    "int4",
    "pg_class",
    "now",
    "+(int4,int4)",
    "english",
    "simple",
    "\"C\"",
    "<a>x &amp; y</a>",
    "a.b.c",
    "Top.*{1,2}.c",
    "Europe & Russia*@",
    "(1.5e-7, 2), (3, 4)",
    "(1,2,3)",
    "MiXeD CaSe",
    "\"a\"=>\"1\", \"b c\"=>NULL",
    "a=>\"q\\\"x\"",
    "happy",
    "so \"so\"",
    "ünï cödé",
    "red",
    "YES",
    "{a,\"b c\",NULL}",
];

/// Samples kept per type (first ones of the pool that the type accepts).
const MAX_SAMPLES: usize = 8;

/// A quoted SQL string literal (standard_conforming_strings is on).
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

struct Catalog {
    /// (qualified type name, samples) for every type with at least one sample.
    covered: Vec<(String, Vec<String>)>,
    /// Types no sample literal produced.
    without_sample: Vec<String>,
}

async fn catalog_types(client: &tokio_postgres::Client) -> Catalog {
    let rows = client
        .query(
            "SELECT format('%I.%I', n.nspname, t.typname)
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE t.typtype IN ('b', 'r', 'm', 'e', 'd') AND t.typisdefined
               -- Array types have no array type of their own: this leaves them out.
               AND t.typarray <> 0
               AND (t.typtype <> 'd' OR (SELECT b.typtype FROM pg_type b
                                         WHERE b.oid = t.typbasetype) <> 'c')
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let pool: Vec<String> = POOL.iter().map(|s| s.to_string()).collect();
    let mut covered = Vec::new();
    let mut without_sample = Vec::new();
    for row in rows {
        let ty: String = row.get(0);
        let ok: Vec<String> = client
            .query_one(
                "SELECT coalesce(array_agg(l ORDER BY o), '{}')
                 FROM unnest($1::text[]) WITH ORDINALITY u(l, o) WHERE walhook_try($2, l)",
                &[&pool, &ty],
            )
            .await
            .unwrap()
            .get(0);
        if ok.is_empty() {
            without_sample.push(ty);
        } else {
            covered.push((ty, ok.into_iter().take(MAX_SAMPLES).collect()));
        }
    }
    Catalog {
        covered,
        without_sample,
    }
}

async fn session(db: &TestDb) -> tokio_postgres::Client {
    let client = db.client().await;
    client.batch_execute(SESSION).await.unwrap();
    client
}

#[tokio::test]
async fn every_catalog_type_equals_to_jsonb() {
    let db = TestDb::new();
    let client = session(&db).await;
    client.batch_execute(SETUP).await.unwrap();
    client.batch_execute(JCOLOR).await.unwrap();
    let cat = catalog_types(&client).await;

    // One column per type in `s`, its array in `a`: row k holds each type's k-th sample; the
    // arrays hold all samples with a NULL inside, then `{}`, then `{NULL}`, then NULL.
    let rows = MAX_SAMPLES.max(4);
    let mut s_cols = vec!["id int PRIMARY KEY".to_string()];
    let mut a_cols = s_cols.clone();
    for (i, (ty, _)) in cat.covered.iter().enumerate() {
        s_cols.push(format!("c{i} {ty}"));
        a_cols.push(format!("c{i} {ty}[]"));
    }
    client
        .batch_execute(&format!(
            "CREATE TABLE s ({}); CREATE TABLE a ({});",
            s_cols.join(", "),
            a_cols.join(", ")
        ))
        .await
        .unwrap();
    let subs = sub("s", "s", ALL, "") + &sub("a", "a", ALL, "");
    let mut p = start(&db.config(&subs)).await.unwrap();
    for k in 0..rows {
        let mut s_vals = vec![k.to_string()];
        let mut a_vals = vec![k.to_string()];
        for (ty, samples) in &cat.covered {
            s_vals.push(samples.get(k).map_or("NULL".into(), |v| lit(v)));
            a_vals.push(match k {
                0 => {
                    let mut items: Vec<String> = samples.iter().map(|v| lit(v)).collect();
                    items.insert(items.len().min(1), "NULL".into());
                    format!("ARRAY[{}]::{ty}[]", items.join(", "))
                }
                1 => format!("'{{}}'::{ty}[]"),
                2 => format!("ARRAY[NULL]::{ty}[]"),
                _ => "NULL".into(),
            });
        }
        client
            .batch_execute(&format!(
                "INSERT INTO s VALUES ({}); INSERT INTO a VALUES ({});",
                s_vals.join(", "),
                a_vals.join(", ")
            ))
            .await
            .unwrap();
    }
    let mut diffs = Vec::new();
    // Payloads of both tables interleave in commit order: take them all, split by table.
    let got = p.take(2 * rows).await;
    for table in ["s", "a"] {
        let bodies: Vec<(String, Value)> = got
            .iter()
            .filter(|(sub, _)| sub == table)
            .cloned()
            .collect();
        for (id, col, ours, theirs) in compare(&client, table, bodies).await {
            let i: usize = col[1..].parse().unwrap();
            diffs.push((table, cat.covered[i].0.clone(), id, ours, theirs));
        }
    }
    p.stop().await;

    let names: Vec<&str> = cat.covered.iter().map(|(t, _)| t.as_str()).collect();
    println!(
        "{} types covered (and the array of each): {}",
        names.len(),
        names.join(" ")
    );
    println!("no sample literal for: {}", cat.without_sample.join(" "));
    for ext in [
        "public.hstore",
        "public.citext",
        "public.ltree",
        "public.cube",
    ] {
        assert!(names.contains(&ext), "{ext} not covered");
    }
    assert!(names.len() >= 60, "only {} types covered", names.len());

    // The documented exception: jcolor's json cast is not reproduced; its text is sent.
    let (exceptions, real): (Vec<_>, Vec<_>) = diffs
        .into_iter()
        .partition(|(_, ty, ..)| ty == "public.jcolor");
    println!("documented exceptions (json cast not reproduced, text sent): public.jcolor");
    assert!(!exceptions.is_empty(), "jcolor should differ from to_jsonb");
    for (_, _, id, ours, theirs) in &exceptions {
        assert_eq!(&as_jcolor_cast(ours), theirs, "row {id}");
    }
    let report: Vec<String> = real
        .iter()
        .map(|(table, ty, id, ours, theirs)| {
            format!("{table} row {id} {ty}:\n    ours:   {ours}\n    server: {theirs}")
        })
        .collect();
    assert!(
        report.is_empty(),
        "{} differences from to_jsonb:\n{}",
        report.len(),
        report.join("\n")
    );
}

/// What `to_jsonb` makes of jcolor text through its cast: `"red"` → `{"color": "red"}`.
fn as_jcolor_cast(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::json!({ "color": s }),
        Value::Array(a) => Value::Array(a.iter().map(as_jcolor_cast).collect()),
        other => other.clone(),
    }
}

/// Compares routed bodies of `table` with `to_jsonb` of its rows: (id, column, ours, server).
async fn compare(
    client: &tokio_postgres::Client,
    table: &str,
    bodies: Vec<(String, Value)>,
) -> Vec<(String, String, Value, Value)> {
    let expected: BTreeMap<String, Value> = client
        .query(
            &format!("SELECT id::text, to_jsonb(x)::text FROM {table} x ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                serde_json::from_str(r.get::<_, &str>(1)).unwrap(),
            )
        })
        .collect();
    assert_eq!(expected.len(), bodies.len(), "{table}: rows vs payloads");
    let mut diffs = Vec::new();
    for (_, body) in bodies {
        let record = body["record"].as_object().unwrap().clone();
        let id = record["id"].to_string();
        let server = expected[&id].as_object().unwrap();
        let ours: Vec<&String> = record.keys().collect();
        let theirs: Vec<&String> = server.keys().collect();
        let mut ours_sorted = ours.clone();
        ours_sorted.sort();
        let mut theirs_sorted = theirs.clone();
        theirs_sorted.sort();
        assert_eq!(
            ours_sorted, theirs_sorted,
            "{table} row {id}: columns differ"
        );
        for (col, v) in &record {
            if v != &server[col] {
                diffs.push((id.clone(), col.clone(), v.clone(), server[col].clone()));
            }
        }
    }
    diffs
}

const COMPOSITES: &str = r#"
CREATE EXTENSION hstore; CREATE EXTENSION citext;
CREATE TYPE pair AS (a int, b text);
CREATE TYPE inner2 AS (p pair, ps pair[], n numeric, t timestamptz, h hstore, tags text[], f float8);
CREATE TYPE outer2 AS (i inner2, "is" inner2[], note citext);
CREATE DOMAIN pair_d AS pair;
CREATE TYPE empty0 AS ();
CREATE TABLE comp (id int PRIMARY KEY, p pair, o outer2, os outer2[], pd pair_d, pds pair_d[],
                   e empty0, ps pair[]);
"#;

/// Inner values with quotes, backslashes, parentheses, commas, blanks, non-ASCII and control
/// characters, empty strings and NULL attributes, at every level.
const COMPOSITE_ROWS: &[&str] = &[
    r#"INSERT INTO comp VALUES (1,
        ROW(1, 'q"x\y (a,b) ☃ '),
        ROW(ROW(ROW(-2, 'a'), ARRAY[ROW(2, 'b "c"')::pair, NULL, ROW(NULL, '')::pair],
                1.50, '2024-01-02 03:04:05+02', 'a=>1, "b c"=>NULL, "q\"x"=>"\\"',
                '{x,"y z",NULL}', '1e-7')::inner2,
            ARRAY[ROW(NULL, '{}', 'NaN', 'infinity', '', '{}', 'Infinity')::inner2, NULL],
            'MiXeD'),
        ARRAY[ROW(NULL, NULL, 'ünï')::outer2, NULL, ROW(ROW(NULL, NULL, NULL, NULL, NULL, NULL, NULL), '{}', '')::outer2],
        ROW(3, E'tab\there\nnl\x01'), ARRAY[ROW(4, ',')::pair_d, ROW(5, ')')::pair_d],
        ROW(), ARRAY[ROW(6, '"')::pair, ROW(7, '\')::pair])"#,
    r#"INSERT INTO comp VALUES (2, ROW(NULL, NULL), ROW(NULL, NULL, NULL), '{}', ROW(NULL, ''),
        '{NULL}', ROW(), '{}')"#,
    "INSERT INTO comp (id) VALUES (3)",
    r#"INSERT INTO comp VALUES (4, ROW(0, 'NULL'), ROW(ROW(ROW(0, ' '), NULL, '12345678901234567890.123456789012345678901234567890', '0044-03-15 12:34:56.5 BC', '', NULL, '-0'), NULL, ''),
        NULL, ROW(0, 'null'), NULL, ROW(), ARRAY[ROW(NULL, NULL)::pair])"#,
];

#[tokio::test]
async fn composites_equal_to_jsonb() {
    let db = TestDb::new();
    let client = session(&db).await;
    client.batch_execute(COMPOSITES).await.unwrap();
    let mut p = start(&db.config(&sub("comp", "comp", ALL, "")))
        .await
        .unwrap();
    for sql in COMPOSITE_ROWS {
        client.batch_execute(sql).await.unwrap();
    }
    let inserted = p.take(COMPOSITE_ROWS.len()).await;
    let diffs = compare(&client, "comp", inserted.clone()).await;
    assert!(diffs.is_empty(), "{diffs:#?}");
    // An UPDATE and a DELETE render new and old rows the same way.
    client
        .batch_execute("UPDATE comp SET id = 5 WHERE id = 4; DELETE FROM comp WHERE id = 2")
        .await
        .unwrap();
    let changed = p.take(2).await;
    let want_update: String = client
        .query_one("SELECT to_jsonb(comp)::text FROM comp WHERE id = 5", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        changed[0].1["record"],
        serde_json::from_str::<Value>(&want_update).unwrap()
    );
    assert_eq!(changed[1].1["event"], "DELETE");
    assert_eq!(changed[1].1["record"], inserted[1].1["record"]);
    p.stop().await;
}

/// `ALTER TYPE` sends no Relation message: a value with more or fewer fields than the cached
/// attributes makes the decoder re-read the type. Each row is streamed before the next ALTER,
/// so the catalog matches the row's own type.
#[tokio::test]
async fn composites_follow_alter_type() {
    let db = TestDb::new();
    let client = session(&db).await;
    client
        .batch_execute(
            "CREATE TYPE pair AS (a int, b text);
             CREATE TABLE alt (id int PRIMARY KEY, p pair, ps pair[])",
        )
        .await
        .unwrap();
    let mut p = start(&db.config(&sub("alt", "alt", ALL, "")))
        .await
        .unwrap();
    let steps = [
        (
            "",
            "INSERT INTO alt VALUES (1, ROW(1, 'a'), ARRAY[ROW(2, 'b')::pair])",
        ),
        (
            "ALTER TYPE pair ADD ATTRIBUTE c bool",
            "INSERT INTO alt VALUES (2, ROW(1, 'a', true), ARRAY[ROW(2, 'b', NULL)::pair])",
        ),
        (
            "ALTER TYPE pair DROP ATTRIBUTE a",
            "INSERT INTO alt VALUES (3, ROW('z', false), ARRAY[ROW('y', true)::pair])",
        ),
    ];
    for (ddl, insert) in steps {
        if !ddl.is_empty() {
            client.batch_execute(ddl).await.unwrap();
        }
        let want: String = client
            .query_one(&format!("{insert} RETURNING to_jsonb(alt)::text"), &[])
            .await
            .unwrap()
            .get(0);
        let want: Value = serde_json::from_str(&want).unwrap();
        let got = p.take(1).await;
        assert_eq!(got[0].1["record"], want, "after {ddl:?}");
    }
    p.stop().await;
}

/// `walhook check` names each column whose value cannot equal `to_jsonb`'s, and why; a table
/// without such columns gets one "ok" line.
#[tokio::test]
async fn check_reports_columns_that_differ_from_to_jsonb() {
    let db = TestDb::new();
    db.sql(&format!(
        "CREATE EXTENSION hstore; {JCOLOR}
         CREATE TYPE painted AS (n int, c jcolor);
         CREATE DOMAIN jcolor_d AS jcolor;
         CREATE TABLE odd (id int PRIMARY KEY, h hstore, c jcolor, cs jcolor[], p painted,
                           d jcolor_d, twice int GENERATED ALWAYS AS (id * 2) STORED);
         CREATE TYPE pair AS (a int, b text);
         CREATE TABLE plain (id int PRIMARY KEY, h hstore, ps pair[])"
    ));
    let subs = sub("odd", "odd", ALL, "") + &sub("plain", "plain", ALL, "");
    let report = walhook::cmd::check::run(&db.config(&subs)).await;
    let lines: Vec<String> = report
        .lines
        .iter()
        .map(|(l, m)| format!("{l:?} {m}"))
        .filter(|l| l.contains("to_jsonb"))
        .collect();
    let cast = |col: &str, ty: &str| {
        format!(
            "Warn table public.odd: column {col} ({ty}) is sent as its text: its type has a cast to \
             json, which to_jsonb(row) applies and walhook does not (only hstore's is reproduced)"
        )
    };
    // Postgres 15: generated columns are never published.
    let generated =
        "Warn table public.odd: generated column twice is not in record (pgoutput publishes \
        stored generated columns from PostgreSQL 18 on, virtual ones never); to_jsonb(row) \
        includes it; each payload lists it under \"omitted\"";
    assert_eq!(
        lines,
        [
            cast("c", "jcolor"),
            cast("cs", "jcolor[]"),
            cast("p", "painted"),
            cast("d", "jcolor_d"),
            generated.to_string(),
            "Ok table public.plain: every column's value in record equals to_jsonb(row)"
                .to_string(),
        ],
        "{report}"
    );
}

/// Before PostgreSQL 18 pgoutput leaves generated columns out; the payload says so, column by
/// column, so `record` plus `omitted` accounts for every key of `to_jsonb(row)`. A generated
/// column added while streaming is listed from the next change on (its Relation message).
#[tokio::test]
async fn unpublished_generated_columns_are_stated_in_the_payload() {
    let db = TestDb::new();
    let client = session(&db).await;
    client
        .batch_execute(
            "CREATE TABLE gen (id int PRIMARY KEY, price numeric,
                              twice int GENERATED ALWAYS AS (id * 2) STORED)",
        )
        .await
        .unwrap();
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        version < 180_000,
        "this test pins the behaviour before PostgreSQL 18"
    );
    let subs = sub("gen", "gen", ALL, "") + &sub("narrow", "gen", ALL, "select = [\"price\"]");
    let mut p = start(&db.config(&subs)).await.unwrap();
    let want: String = client
        .query_one(
            "INSERT INTO gen VALUES (21, 1.50) RETURNING to_jsonb(gen)::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let bodies = raw(&mut p, 2).await;
    let v: Value = serde_json::from_str(&bodies["gen"]).unwrap();
    let (id, ts) = (v["id"].as_str().unwrap(), v["timestamp"].as_str().unwrap());
    assert_eq!(
        bodies["gen"],
        format!(
            "{{\"id\":\"{id}\",\"timestamp\":\"{ts}\",\"project_id\":\"test-project\",\
             \"environment\":{},\"table\":\"gen\",\"event\":\"INSERT\",\
             \"record\":{{\"id\":21,\"price\":1.50}},\"data\":{{\"id\":21,\"price\":1.50}},\
             \"changed_fields\":[],\
             \"omitted\":[{{\"column\":\"twice\",\"reason\":\"generated_not_published\"}}]}}",
            v["environment"]
        )
    );
    // record + omitted = to_jsonb(row)'s keys, and every value in record equals to_jsonb's.
    let want: serde_json::Map<String, Value> = serde_json::from_str(&want).unwrap();
    let mut keys: Vec<&str> = v["record"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.extend(
        v["omitted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["column"].as_str().unwrap()),
    );
    keys.sort();
    let mut want_keys: Vec<&str> = want.keys().map(String::as_str).collect();
    want_keys.sort();
    assert_eq!(keys, want_keys);
    for (k, val) in v["record"].as_object().unwrap() {
        assert_eq!(&want[k], val, "{k}");
    }
    // `select` without the generated column: nothing to state.
    let narrow: Value = serde_json::from_str(&bodies["narrow"]).unwrap();
    assert!(narrow.get("omitted").is_none(), "{narrow}");

    client
        .batch_execute(
            "ALTER TABLE gen ADD COLUMN thrice int GENERATED ALWAYS AS (id * 3) STORED;
             INSERT INTO gen VALUES (22, 2)",
        )
        .await
        .unwrap();
    let bodies = raw(&mut p, 2).await;
    let v: Value = serde_json::from_str(&bodies["gen"]).unwrap();
    assert_eq!(
        v["omitted"],
        serde_json::json!([
            {"column": "twice", "reason": "generated_not_published"},
            {"column": "thrice", "reason": "generated_not_published"}
        ])
    );
    p.stop().await;
}

/// The next `n` routed bodies, unparsed, by subscription.
async fn raw(p: &mut crate::support::Pipeline, n: usize) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    while out.len() < n {
        match tokio::time::timeout(std::time::Duration::from_secs(10), p.rx.recv()).await {
            Ok(Some(r)) => {
                out.insert(r.subscription.to_string(), r.body.to_string());
            }
            _ => panic!("expected {n} payloads, got {out:#?}"),
        }
    }
    out
}
