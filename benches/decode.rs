//! Decode + route + payload build on W1-like rows (workload W1, README Benchmarks), one core, no database.
//!
//! Prints row changes/s per phase and overall, and peak RSS. Run:
//! `cargo bench --bench decode`

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use walhook::config::TableName;
use walhook::model::{EventKind, Format, Origin, Secret, SignatureScheme, Subscription};
use walhook::route::{PayloadContext, Routed, Router};
use walhook::source::decode::{ChangeDecoder, Decoded};
use walhook::source::pgoutput::{self, Column, Relation};

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
    let route = Subscription {
        id: "orders".into(),
        origin: Origin::Config,
        table: TableName::parse("orders").unwrap(),
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
    };
    let router = Router::new(PayloadContext::new("bench", "master"), vec![route]);

    let mut out: Vec<Routed> = Vec::with_capacity(16);
    let mut total_rows = 0usize;
    let mut total_bytes = 0usize;
    let overall = Instant::now();
    for (phase, kind) in [("INSERT", b'I'), ("UPDATE", b'U'), ("DELETE", b'D')] {
        // Inputs are built outside the timed loop: the server, not us, produces these bytes.
        let msgs: Vec<Bytes> = (0..ROWS).map(|i| msg(kind, i)).collect();
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
                total_bytes += out.iter().map(|r| r.body.len()).sum::<usize>();
            }
            dec.apply(pgoutput::decode(commit(lsn)).unwrap()).unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        total_rows += ROWS;
        println!("{phase:<7} {ROWS} rows  {:>9.0} rows/s", ROWS as f64 / secs);
    }
    let secs = overall.elapsed().as_secs_f64();
    println!(
        "overall {total_rows} rows  {:>9.0} rows/s (incl. building inputs)  payload bytes {total_bytes}  peak RSS {:.1} MB",
        total_rows as f64 / secs,
        peak_rss_mb()
    );
}
