//! OpenTelemetry: spans exported over OTLP/HTTP (JSON) to a collector on loopback, with one trace
//! per change (`walhook.change`), one child `walhook.deliver` span per request, and the request's
//! `traceparent` naming that span.

use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::daemon::{fast_delivery, Daemon};
use crate::support::receiver::{Answer, Receiver};
use crate::support::TestDb;

/// Every span the collector received, flattened.
fn spans(collector: &Receiver) -> Vec<Value> {
    collector
        .snapshot()
        .iter()
        .filter(|r| r.path == "/v1/traces")
        .flat_map(|r| {
            let body = r.json();
            let mut out = Vec::new();
            for rs in body["resourceSpans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                for ss in rs["scopeSpans"].as_array().cloned().unwrap_or_default() {
                    out.extend(ss["spans"].as_array().cloned().unwrap_or_default());
                }
            }
            out
        })
        .collect()
}

fn attr(span: &Value, key: &str) -> Value {
    span["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|kv| kv["key"] == key))
        .map(|kv| {
            let v = &kv["value"];
            v.get("stringValue")
                .or_else(|| v.get("intValue"))
                .cloned()
                .unwrap_or(Value::Null)
        })
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_change_is_a_trace_with_one_child_span_per_request_and_a_matching_traceparent() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    let collector = Receiver::ok().await;
    let ok = Receiver::ok().await;
    // The first request fails, the retry succeeds: two requests, two spans.
    let flaky = Receiver::scripted(|_, i| {
        if i == 0 {
            Answer::Status(503)
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let sections = format!(
        "{}\n[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"walhook-test\"\nexport_interval = \"200ms\"\n",
        fast_delivery("retry_schedule = [\"0s\", \"50ms\"]"),
        collector.url
    );
    let subs = format!(
        "[[subscriptions]]\nid = \"a\"\ntable = \"orders\"\nevents = [\"INSERT\"]\nurl = \"{}/a\"\nsecret = \"s\"\n\n\
         [[subscriptions]]\nid = \"b\"\ntable = \"orders\"\nevents = [\"INSERT\"]\nurl = \"{}/b\"\nsecret = \"s\"\n",
        ok.url, flaky.url
    );
    let d = Daemon::start(&db, &sections, &subs).await;
    db.sql("INSERT INTO orders VALUES (1, 'new')");
    let a = ok.wait_for(1, Duration::from_secs(20)).await;
    let b = flaky.wait_for(2, Duration::from_secs(20)).await;
    let event_id = a[0].json()["id"].as_str().unwrap().to_string();
    assert_eq!(b[1].json()["id"], event_id.as_str());

    // The trace id and the change span's id are the first 24 bytes of SHA-256 of the event id.
    let h = Sha256::digest(event_id.as_bytes());
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let (trace, change_id) = (hex(&h[..16]), hex(&h[16..24]));

    let deadline = Instant::now() + Duration::from_secs(20);
    let all = loop {
        let all = spans(&collector);
        let mine = |name: &str| {
            all.iter()
                .filter(|s| s["name"] == name && s["traceId"] == trace.as_str())
                .count()
        };
        if mine("walhook.change") >= 1 && mine("walhook.deliver") >= 3 {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "spans of trace {trace} not exported within 20 s; collector got {} requests, spans: {all:?}",
            collector.count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exports = collector.snapshot();
    assert_eq!(
        exports[0].header("content-type"),
        "application/json",
        "OTLP/HTTP with JSON encoding"
    );
    assert!(
        all.iter().all(|s| s["traceId"] == trace.as_str()),
        "one change, one trace: {all:?}"
    );

    let change: Vec<&Value> = all
        .iter()
        .filter(|s| s["name"] == "walhook.change")
        .collect();
    assert_eq!(change.len(), 1, "{change:?}");
    let change = change[0];
    assert_eq!(change["spanId"], change_id.as_str());
    assert!(
        change["parentSpanId"].as_str().unwrap_or("").is_empty(),
        "the change span is the root: {change}"
    );
    assert_eq!(attr(change, "db.collection.name"), "public.orders");
    assert_eq!(attr(change, "walhook.event"), "INSERT");
    assert_eq!(attr(change, "walhook.event_id"), event_id.as_str());
    assert_eq!(attr(change, "walhook.deliveries"), "2", "{change}");

    let deliver: Vec<&Value> = all
        .iter()
        .filter(|s| s["name"] == "walhook.deliver")
        .collect();
    assert_eq!(deliver.len(), 3, "{deliver:?}");
    for s in &deliver {
        assert_eq!(
            s["parentSpanId"],
            change_id.as_str(),
            "child of the change: {s}"
        );
        assert_eq!(s["kind"], 3, "SPAN_KIND_CLIENT: {s}");
    }
    let of = |sub: &str, attempt: &str| -> &Value {
        deliver
            .iter()
            .find(|s| {
                attr(s, "walhook.subscription") == sub && attr(s, "walhook.attempt") == attempt
            })
            .unwrap_or_else(|| panic!("no span for {sub} attempt {attempt}: {deliver:?}"))
    };
    let expect = [
        (&a[0], of("a", "1"), "200"),
        (&b[0], of("b", "1"), "503"),
        (&b[1], of("b", "2"), "200"),
    ];
    for (request, span, status) in expect {
        assert_eq!(attr(span, "http.response.status_code"), status, "{span}");
        assert_eq!(
            request.header("traceparent"),
            format!("00-{trace}-{}-01", span["spanId"].as_str().unwrap()),
            "the request names its own span"
        );
    }
    // A failed request is an error span; a 2xx is OK.
    assert_eq!(of("b", "1")["status"]["code"], 2, "STATUS_CODE_ERROR");
    assert_eq!(of("b", "2")["status"]["code"], 1, "STATUS_CODE_OK");
    // Resource: the configured service name.
    let body = exports[0].json();
    let service = body["resourceSpans"][0]["resource"]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv["key"] == "service.name")
        .map(|kv| kv["value"]["stringValue"].clone());
    assert_eq!(service, Some(Value::from("walhook-test")));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_telemetry_requests_carry_no_traceparent() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    let rx = Receiver::ok().await;
    let subs = format!(
        "[[subscriptions]]\nid = \"a\"\ntable = \"orders\"\nevents = [\"INSERT\"]\nurl = \"{}/a\"\nsecret = \"s\"\n",
        rx.url
    );
    let d = Daemon::start(&db, &fast_delivery(""), &subs).await;
    db.sql("INSERT INTO orders VALUES (1, 'new')");
    let got = rx.wait_for(1, Duration::from_secs(20)).await;
    assert!(got[0].headers.get("traceparent").is_none());
    d.stop().await;
}
