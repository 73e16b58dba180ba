//! `text_to_json` against a real server: for every row of a table with one column per supported
//! type, the record built from each column's text output must equal the server's own
//! `to_jsonb(row)`, digit for digit.

use serde_json::Value;
use walhook::source::types::{TypeKind, TypeResolver};
use walhook::source::values::text_to_json;

const SESSION: &str = "SET DateStyle=ISO; SET TimeZone='UTC'; SET extra_float_digits=3; \
    SET bytea_output=hex; SET IntervalStyle=postgres";

const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('happy', 'sad', 'so "so"');
CREATE DOMAIN posnum AS numeric CHECK (VALUE >= 0);
CREATE DOMAIN posnum2 AS posnum;
CREATE DOMAIN intarr AS int[];
CREATE DOMAIN tstz_d AS timestamptz;
CREATE TABLE t (
    id int PRIMARY KEY,
    c_int2 int2, c_int4 int4, c_int8 int8, c_numeric numeric, c_numeric_s numeric(10,4),
    c_float4 float4, c_float8 float8, c_bool bool,
    c_text text, c_varchar varchar(20), c_char char(5), c_qchar "char", c_name name, c_uuid uuid,
    c_json json, c_jsonb jsonb,
    c_date date, c_time time, c_timetz timetz, c_ts timestamp, c_tstz timestamptz,
    c_interval interval, c_bytea bytea,
    c_int4_arr int4[], c_text_arr text[], c_int_2d int[][], c_numeric_arr numeric[],
    c_float8_arr float8[], c_float4_arr float4[], c_bool_arr bool[], c_jsonb_arr jsonb[],
    c_json_arr json[], c_tstz_arr timestamptz[], c_ts_arr timestamp[], c_date_arr date[],
    c_mood mood, c_mood_arr mood[], c_posnum posnum, c_posnum2 posnum2, c_posnum_arr posnum[],
    c_intarr intarr, c_intarr_arr intarr[], c_tstz_d tstz_d,
    c_inet inet, c_cidr cidr, c_macaddr macaddr, c_money money, c_box_arr box[], c_box box,
    c_point point, c_oid oid, c_int2vector int2vector, c_oidvector oidvector,
    c_int4range int4range, c_tsvector tsvector, c_bit bit(3), c_varbit varbit,
    c_int8_arr int8[], c_uuid_arr uuid[]
);
"#;

const ROWS: &str = r#"
INSERT INTO t VALUES (
    1,
    32767, -2147483648, 9223372036854775807,
    '12345678901234567890.123456789012345678901234567890', 1.5,
    '1.5e-7', '1e100', true,
    'héllo "q" \ back	tab ☃', 'v', 'ab', 'x', 'nm', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '{"b":1,"a":[1.50, 1e3, -0, 1E-2, -0.0, 12e-1],"a":2, "s":"\u00e9"}',
    '{"x":[1,2,{"y":null}],"n":1.0e+2}',
    '0044-03-15 BC', '12:34:56.789', '12:00+02', '2024-01-02 03:04:05.123456',
    '0044-03-15 12:34:56.5 BC',
    '1 year 2 mons -3 days 04:05:06.7', '\x00ff',
    '[0:2]={1,NULL,3}', '{"a b","c\"d","NULL",NULL,"x\\y",""," sp ","{}",null}',
    '{{1,2},{3,4}}', '{1.50,NaN,-Infinity,1e-3}',
    '{1e100,-0,NaN,1.5e-7}', '{1.5e-7,Infinity}', '{t,f,NULL}',
    ARRAY['{"a":1}', '[1,2]', '1e2', NULL]::jsonb[],
    ARRAY['{"a":1,"a":2}', '-0']::json[],
    '{"2024-01-02 03:04:05+00",infinity,NULL,"0044-03-15 12:34:56.5 BC"}',
    '{"2024-01-02 03:04:05.5",-infinity}', '{2024-01-02,infinity,"0044-03-15 BC"}',
    'so "so"', '{happy,"so \"so\"",NULL}', 1.50, '2.5e3', '{1.5e3,NULL}',
    '{1,2}', '{"{1,2}","{3}",NULL}', '2024-06-30 12:00:00.000001+02',
    '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 12.34,
    '{(1,2),(3,4);(0,0),(1,1)}', '(1,2),(3,4)',
    '(1.5,-2)', 12, '1 2', '3 4',
    '[1,5)', 'a fat:2 cat', B'101', B'1',
    '{-9223372036854775808,0}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'
), (
    2,
    -32768, 0, -1,
    'NaN', -0.0001,
    'Infinity', '-0', false,
    '', '', '', '', '', '00000000-0000-0000-0000-000000000000',
    '[]', '"\u2603"',
    'infinity', '00:00', '23:59:59.999999-05:30', '-infinity', 'infinity',
    '-1 days', '\x',
    '{}', '{}', '{{NULL,NULL}}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',
    'happy', '{}', 0, 0, '{}', '{}', '{}', '-infinity',
    '::1', '::/0', '00:00:00:00:00:00', -1.5,
    '{}', '(0,0),(0,0)', '(0,0)', 0, '', '',
    'empty', '', B'000', B'',
    '{}', '{}'
), (
    3,
    0, 1, 1,
    'Infinity', 0,
    '-Infinity', '5e-324', NULL,
    'NULL', 'null', 'a b', ' ', 'n', NULL,
    '1e-7', '-0.0',
    '-infinity', '24:00', '00:00+14', '1999-12-31 23:59:59.000001', '1999-12-31 23:59:59.5-08',
    '00:00:00.000001', '\xdeadbeef',
    '{{{1},{2}},{{3},{4}}}', '{{a,b},{c,NULL}}', '[2:2][3:4]={{5,6}}', '{-0.000,0e5,123.4500}',
    '{1.7976931348623157e308,5e-324,-Infinity}', '{-0,3.4028235e38}', '{{t},{f}}',
    '{"{\"z\": [1.0, 2e1]}"}', '{"\"s\"",null}', '{-infinity}',
    '{"0001-01-01 00:00:00 BC"}', '{-infinity}',
    NULL, '{sad,sad}', '0.000', '1e-20', '{0.10}',
    '[0:0]={7}', '{}', '0044-03-15 12:34:56.5 BC',
    NULL, NULL, NULL, '-0.01',
    '{"(1,1),(1,1)"}', NULL, NULL, 4294967295, '-1', '4294967295',
    '(,)', NULL, NULL, NULL,
    '{NULL}', '{NULL}'
);
INSERT INTO t (id) VALUES (4);
"#;

async fn connect() -> tokio_postgres::Client {
    let pg = crate::support::pg::shared();
    let db = pg.create_database().unwrap();
    let (client, conn) = tokio_postgres::connect(&pg.url(&db), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("connection error: {e}");
        }
    });
    client.batch_execute(SESSION).await.unwrap();
    client
}

#[tokio::test]
async fn records_equal_server_to_jsonb() {
    let client = connect().await;
    client.batch_execute(SCHEMA).await.unwrap();
    client.batch_execute(ROWS).await.unwrap();

    let columns: Vec<(String, u32)> = client
        .query(
            "SELECT a.attname::text, a.atttypid FROM pg_attribute a \
             WHERE a.attrelid = 't'::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    let mut resolver = TypeResolver::new();
    let oids: Vec<u32> = columns.iter().map(|c| c.1).collect();
    resolver.resolve(&client, &oids).await.unwrap();
    let kinds: Vec<TypeKind> = oids
        .iter()
        .map(|o| resolver.get(*o).expect("resolved").clone())
        .collect();
    // Spot-check catalog resolution of the user-defined types.
    let kind_of = |name: &str| &kinds[columns.iter().position(|c| c.0 == name).unwrap()];
    assert_eq!(kind_of("c_posnum2"), &TypeKind::Numeric);
    assert_eq!(kind_of("c_mood"), &TypeKind::Text);
    assert_eq!(kind_of("c_tstz_d"), &TypeKind::TimestampTz);
    let int_arr = TypeKind::Array {
        element: Box::new(TypeKind::Integer),
        delimiter: b',',
    };
    assert_eq!(kind_of("c_intarr"), &int_arr);
    assert_eq!(
        kind_of("c_intarr_arr"),
        &TypeKind::Array {
            element: Box::new(int_arr),
            delimiter: b','
        }
    );

    // The simple-query protocol returns each column's output-function text, exactly what
    // pgoutput sends. A `::text` cast would not: bool::text is `true`, char(5)::text loses its
    // padding and inet::text adds the `/128` mask.
    let select = format!(
        "SELECT to_jsonb(t)::text, {} FROM t ORDER BY id",
        columns
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rows: Vec<tokio_postgres::SimpleQueryRow> = client
        .simple_query(&select)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 4);

    let mut diffs = Vec::new();
    for row in &rows {
        let server: Value = serde_json::from_str(row.get(0).unwrap()).unwrap();
        let mut record = serde_json::Map::new();
        for (i, (name, _)) in columns.iter().enumerate() {
            let text: Option<&str> = row.get(i + 1);
            let value = text.map_or(Value::Null, |t| text_to_json(&kinds[i], t));
            record.insert(name.clone(), value);
        }
        let id = &server["id"];
        for (name, ours) in &record {
            let theirs = &server[name.as_str()];
            if ours != theirs {
                diffs.push(format!(
                    "row id={id} column {name} ({:?}):\n    ours:   {ours}\n    server: {theirs}",
                    kinds[columns.iter().position(|c| &c.0 == name).unwrap()]
                ));
            }
        }
        if diffs.is_empty() {
            assert_eq!(Value::Object(record), server);
        }
    }
    assert!(
        diffs.is_empty(),
        "{} mismatches with to_jsonb:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// Composite types resolve to their attributes' names and kinds; unknown OIDs to text.
#[tokio::test]
async fn composite_types_resolve_to_their_attributes() {
    let client = connect().await;
    client
        .batch_execute("CREATE TYPE pair AS (a int, b text)")
        .await
        .unwrap();
    let oid: u32 = client
        .query_one("SELECT 'pair'::regtype::oid", &[])
        .await
        .unwrap()
        .get(0);
    let mut resolver = TypeResolver::new();
    resolver.resolve(&client, &[oid, 999_999]).await.unwrap();
    let pair = TypeKind::composite(
        oid,
        vec![
            ("a".into(), TypeKind::Integer),
            ("b".into(), TypeKind::Text),
        ],
    );
    assert_eq!(resolver.get(oid), Some(&pair));
    assert_eq!(resolver.get(999_999), Some(&TypeKind::Text));
    let text: String = client
        .query_one("SELECT ROW(1, 'a b')::pair::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        text_to_json(resolver.get(oid).unwrap(), &text),
        serde_json::json!({"a": 1, "b": "a b"})
    );
    // ALTER TYPE keeps the OID: resolve() keeps the cached kind, refresh() re-reads it.
    client
        .batch_execute("ALTER TYPE pair ADD ATTRIBUTE c bool")
        .await
        .unwrap();
    resolver.resolve(&client, &[oid]).await.unwrap();
    assert_eq!(resolver.get(oid), Some(&pair));
    resolver.refresh(&client, &[oid]).await.unwrap();
    let TypeKind::Composite(c) = resolver.get(oid).unwrap() else {
        panic!("not a composite")
    };
    let names: Vec<&str> = c.fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
}
