//! Decode + route + payload build on W1-like rows (workload W1, README Benchmarks), one core, no database.
//!
//! Prints row changes/s per phase and overall, and peak RSS; then, beside it, the INSERT figure
//! for a composite-heavy row (nested composites, an array of composites, hstore). Run:
//! `cargo bench --bench decode`

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use walhook::config::TableName;
use walhook::model::{EventKind, Format, Origin, Secret, SignatureScheme, Subscription};
use walhook::route::{PayloadContext, Routed, Router};
use walhook::source::decode::{ChangeDecoder, Decoded};
use walhook::source::pgoutput::{self, Column, Relation};
use walhook::source::types::TypeKind;

const ROWS: usize = 100_000;

fn tuple(buf: &mut BytesMut, marker: u8, vals: &[&str]) {
    buf.put_u8(marker);
    buf.put_i16(vals.len() as i16);
    for v in vals {
        buf.put_u8(b't');
        buf.put_i32(v.len() as i32);
        buf.put_slice(v.as_bytes());
    }
}

fn row(i: usize, status: &str) -> Vec<String> {
    vec![
        format!("{:08x}-58cc-4372-a567-0e02b2c3d479", i),
        format!("{}.{:02}", i % 100_000, i % 100),
        status.to_string(),
        format!("cust-{:05}", i % 5000),
        "2026-11-23 09:31:46.123456+00".to_string(),
        format!(
            "{{\"sku\": \"sku-{}\", \"qty\": {}, \"tags\": [\"a\", \"b\"]}}",
            i % 977,
            i % 7
        ),
    ]
}

/// A row of `shipments` (see [`install_composite`]): composite text as `record_out` writes it.
fn composite_row(i: usize) -> Vec<String> {
    vec![
        format!("{i}"),
        format!(
            "(\"{} Main St\",Springfield,\"(45.{:04},-122.{:04})\")",
            i % 1000,
            i % 9973,
            i % 7919
        ),
        format!(
            "{{\"(sku-{},{},19.99)\",\"(sku-{},1,5.00)\",\"(\\\"gift \\\"\\\"wrap\\\"\\\"\\\",1,0.00)\"}}",
            i % 977,
            i % 7,
            i % 13
        ),
        format!("\"carrier\"=>\"ups\", \"priority\"=>\"{}\", \"note\"=>NULL", i % 3),
    ]
}

fn insert_msg(relation_id: u32, vals: &[String]) -> Bytes {
    let mut b = BytesMut::with_capacity(256);
    b.put_u8(b'I');
    b.put_u32(relation_id);
    tuple(
        &mut b,
        b'N',
        &vals.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    b.freeze()
}

/// `shipments(id int, address (street text, city text, geo (lat float8, lon float8)),
/// items (sku text, qty int, price numeric)[], extra hstore)`, described without a database.
fn install_composite(dec: &mut ChangeDecoder) {
    let geo = TypeKind::composite(
        90_001,
        vec![
            ("lat".into(), TypeKind::Float),
            ("lon".into(), TypeKind::Float),
        ],
    );
    let address = TypeKind::composite(
        90_002,
        vec![
            ("street".into(), TypeKind::Text),
            ("city".into(), TypeKind::Text),
            ("geo".into(), geo),
        ],
    );
    let item = TypeKind::composite(
        90_003,
        vec![
            ("sku".into(), TypeKind::Text),
            ("qty".into(), TypeKind::Integer),
            ("price".into(), TypeKind::Numeric),
        ],
    );
    dec.types_mut().insert(90_002, address);
    dec.types_mut()
        .insert(90_004, TypeKind::array_of(item, b','));
    dec.types_mut().insert(90_005, TypeKind::Hstore);
    let col = |name: &str, oid: u32| Column {
        is_key: name == "id",
        name: name.into(),
        type_oid: oid,
        type_modifier: -1,
    };
    dec.install_relation(
        Relation {
            id: 16385,
            namespace: "public".into(),
            name: "shipments".into(),
            replica_identity: b'f',
            columns: vec![
                col("id", 23),
                col("address", 90_002),
                col("items", 90_004),
                col("extra", 90_005),
            ],
        },
        &["id".to_string()],
    );
}

/// Decodes and routes `msgs` in transactions of 1000; returns rows/s and payload bytes.
fn run(dec: &mut ChangeDecoder, router: &Router, msgs: &[Bytes]) -> (f64, usize) {
    let mut out: Vec<Routed> = Vec::with_capacity(16);
    let mut bytes = 0usize;
    let t = Instant::now();
    let mut lsn = 0x1_0000_0000u64;
    for chunk in msgs.chunks(1000) {
        lsn += 0x10_0000;
        dec.apply(pgoutput::decode(begin(lsn)).unwrap()).unwrap();
        for m in chunk {
            let Decoded::Change(c) = dec.apply(pgoutput::decode(m.clone()).unwrap()).unwrap()
            else {
                panic!("expected a change");
            };
            out.clear();
            router.route(&c, &mut out);
            bytes += out.iter().map(|r| r.body.len()).sum::<usize>();
        }
        dec.apply(pgoutput::decode(commit(lsn)).unwrap()).unwrap();
    }
    (msgs.len() as f64 / t.elapsed().as_secs_f64(), bytes)
}

fn msg(kind: u8, i: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(256);
    b.put_u8(kind);
    b.put_u32(16384);
    let old = row(i, "pending");
    let old: Vec<&str> = old.iter().map(String::as_str).collect();
    match kind {
        b'I' => tuple(&mut b, b'N', &old),
        b'U' => {
            tuple(&mut b, b'O', &old);
            let new = row(i, "shipped");
            tuple(
                &mut b,
                b'N',
                &new.iter().map(String::as_str).collect::<Vec<_>>(),
            );
        }
        _ => tuple(&mut b, b'O', &old),
    }
    b.freeze()
}

fn begin(lsn: u64) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'B');
    b.put_u64(lsn);
    b.put_i64(817_000_000_000_000);
    b.put_u32(1234);
    b.freeze()
}

fn commit(lsn: u64) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'C');
    b.put_u8(0);
    b.put_u64(lsn);
    b.put_u64(lsn + 48);
    b.put_i64(817_000_000_000_000);
    b.freeze()
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let mut dec = ChangeDecoder::new();
    let col = |name: &str, oid: u32| Column {
        is_key: true,
        name: name.into(),
        type_oid: oid,
        type_modifier: -1,
    };
    dec.install_relation(
        Relation {
            id: 16384,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity: b'f',
            columns: vec![
                col("id", 2950),
                col("total", 1700),
                col("status", 25),
                col("customer_id", 25),
                col("created_at", 1184),
                col("meta", 3802),
            ],
        },
        &["id".to_string()],
    );
    install_composite(&mut dec);
    let sub = |id: &str, table: &str| Subscription {
        id: id.into(),
        origin: Origin::Config,
        table: TableName::parse(table).unwrap(),
        events: vec![EventKind::Insert, EventKind::Update, EventKind::Delete],
        url: "http://127.0.0.1:9/bench".into(),
        secret: Secret::new("whsec_bench"),
        active: true,
        filter: None,
        select: None,
        format: Format::Json,
        signature: SignatureScheme::Archie,
        previous_secret: None,
        previous_secret_expires_at: None,
        headers: Vec::new(),
        signature_header: None,
        template: None,
        rate_limit: None,
        batch: None,
    };
    let router = Router::new(
        PayloadContext::new("bench", "master"),
        vec![sub("orders", "orders")],
    );

    let mut total_rows = 0usize;
    let mut total_bytes = 0usize;
    let overall = Instant::now();
    for (phase, kind) in [("INSERT", b'I'), ("UPDATE", b'U'), ("DELETE", b'D')] {
        // Inputs are built outside the timed loop: the server, not us, produces these bytes.
        let msgs: Vec<Bytes> = (0..ROWS).map(|i| msg(kind, i)).collect();
        let (rate, bytes) = run(&mut dec, &router, &msgs);
        total_bytes += bytes;
        total_rows += ROWS;
        println!("{phase:<7} {ROWS} rows  {rate:>9.0} rows/s");
    }
    let secs = overall.elapsed().as_secs_f64();
    println!(
        "overall {total_rows} rows  {:>9.0} rows/s (incl. building inputs)  payload bytes {total_bytes}  peak RSS {:.1} MB",
        total_rows as f64 / secs,
        peak_rss_mb()
    );
    let msgs: Vec<Bytes> = (0..ROWS)
        .map(|i| insert_msg(16385, &composite_row(i)))
        .collect();
    // The row must really decode to objects, or the figure measures the text fallback.
    dec.apply(pgoutput::decode(begin(1)).unwrap()).unwrap();
    let Decoded::Change(c) = dec
        .apply(pgoutput::decode(msgs[0].clone()).unwrap())
        .unwrap()
    else {
        panic!("expected a change");
    };
    dec.apply(pgoutput::decode(commit(1)).unwrap()).unwrap();
    let want = r#"{"id":0,"address":{"street":"0 Main St","city":"Springfield","geo":{"lat":45.0000,"lon":-122.0000}},"items":[{"sku":"sku-0","qty":0,"price":19.99},{"sku":"sku-0","qty":1,"price":5.00},{"sku":"gift \"wrap\"","qty":1,"price":0.00}],"extra":{"carrier":"ups","priority":"0","note":null}}"#;
    assert_eq!(serde_json::to_string(&c.record).unwrap(), want);
    let router = Router::new(
        PayloadContext::new("bench", "master"),
        vec![sub("shipments", "shipments")],
    );
    let (rate, bytes) = run(&mut dec, &router, &msgs);
    println!(
        "composite-heavy INSERT {ROWS} rows  {rate:>9.0} rows/s  payload bytes {bytes} \
         (nested composite, array of 3 composites, hstore per row)"
    );
}
