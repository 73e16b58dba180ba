use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::model::{Filter, Format, Lsn, Origin, Secret, SignatureScheme};

fn shape() -> Arc<TableShape> {
    Arc::new(TableShape {
        table: TableName::parse("orders").unwrap(),
        columns: vec!["id".into(), "total".into(), "status".into(), "note".into()],
        key_columns: vec![0],
    })
}

fn change(kind: EventKind, record: Value, changed: Vec<usize>) -> RowChange {
    RowChange {
        omitted: Vec::new(),
        commit_lsn: Lsn(0x1_0000_0020),
        commit_ts: 819_126_000_000_000,
        ordinal: 2,
        shape: shape(),
        kind,
        record: record.as_object().unwrap().clone(),
        changed,
    }
}

fn route(
    id: &str,
    events: &[EventKind],
    filter: Option<Value>,
    select: Option<&[&str]>,
) -> Subscription {
    Subscription {
        id: id.into(),
        origin: Origin::Config,
        table: TableName::parse("orders").unwrap(),
        events: events.to_vec(),
        url: "https://hooks.test/h".into(),
        secret: Secret::new("whsec_test"),
        active: true,
        filter: filter.map(|f| Filter::from_json(&f).unwrap()),
        select: select.map(|s| s.iter().map(|c| c.to_string()).collect()),
        format: Format::Json,
        signature: SignatureScheme::Archie,
        previous_secret: None,
        previous_secret_expires_at: None,
        headers: Vec::new(),
        signature_header: None,
        template: None,
        rate_limit: None,
        batch: None,
    }
}

fn router(routes: Vec<Subscription>) -> Router {
    Router::new(PayloadContext::new("my-project", "master"), routes)
}

fn run(r: &Router, c: &RowChange) -> Vec<Routed> {
    let mut out = Vec::new();
    r.route(c, &mut out);
    out
}

const ALL: &[EventKind] = &[EventKind::Insert, EventKind::Update, EventKind::Delete];

#[test]
fn insert_payload_is_exact() {
    let r = router(vec![route("all", ALL, None, None)]);
    let rec: Value =
        serde_json::from_str(r#"{"id": "a1", "total": 99.50, "status": "pending", "note": null}"#)
            .unwrap();
    let c = change(EventKind::Insert, rec, vec![]);
    let out = run(&r, &c);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].body,
        r#"{"id":"evt_000000010000002000000002","timestamp":"2025-12-15T15:00:00.000000Z","project_id":"my-project","environment":"master","table":"orders","event":"INSERT","record":{"id":"a1","total":99.50,"status":"pending","note":null},"data":{"id":"a1","total":99.50,"status":"pending","note":null},"changed_fields":[]}"#
    );
    assert_eq!(out[0].key, r#"["a1"]"#);
    assert_eq!(out[0].event_id, "evt_000000010000002000000002");
    assert_eq!(&*out[0].subscription, "all");
}

#[test]
fn events_filter_and_active_select_subscriptions() {
    let mut paused = route("paused", ALL, None, None);
    paused.active = false;
    let r = router(vec![
        route("inserts", &[EventKind::Insert], None, None),
        route(
            "completed",
            &[EventKind::Update],
            Some(json!({"status": "completed"})),
            None,
        ),
        route("big", ALL, Some(json!({"total": {"gte": 100}})), None),
        paused,
    ]);
    let upd = change(
        EventKind::Update,
        json!({"id": "a", "total": 150, "status": "completed", "note": null}),
        vec![2],
    );
    let ids: Vec<String> = run(&r, &upd)
        .iter()
        .map(|x| x.subscription.to_string())
        .collect();
    assert_eq!(ids, vec!["completed", "big"]);
    let small = change(
        EventKind::Update,
        json!({"id": "a", "total": 15, "status": "pending", "note": null}),
        vec![2],
    );
    assert!(run(&r, &small).is_empty());
}

#[test]
fn select_narrows_record_and_changed_fields() {
    let r = router(vec![route("sel", ALL, None, Some(&["id", "status"]))]);
    let c = change(
        EventKind::Update,
        json!({"id": "a", "total": 1, "status": "paid", "note": "x"}),
        vec![1, 2],
    );
    let out = run(&r, &c);
    let v: Value = serde_json::from_str(&out[0].body).unwrap();
    assert_eq!(v["record"], json!({"id": "a", "status": "paid"}));
    assert_eq!(v["data"], v["record"]);
    assert_eq!(v["changed_fields"], json!(["status"]));
    // An UPDATE that touched none of the selected columns is not sent.
    let c = change(
        EventKind::Update,
        json!({"id": "a", "total": 2, "status": "paid", "note": "x"}),
        vec![1, 3],
    );
    assert!(run(&r, &c).is_empty());
}

#[test]
fn unknown_columns_are_reported_with_the_table_columns() {
    let cols: Vec<String> = shape().columns.clone();
    let r = route("bad", ALL, Some(json!({"stauts": "x"})), None);
    let err = check_columns(&r, &cols, &[]).unwrap_err().to_string();
    assert!(
        err.contains("\"stauts\"")
            && err.contains("filter")
            && err.contains("id, total, status, note"),
        "{err}"
    );
    let r = route("bad", ALL, None, Some(&["id", "totl"]));
    assert!(check_columns(&r, &cols, &[])
        .unwrap_err()
        .to_string()
        .contains("select"));
    let ok = route("ok", ALL, Some(json!({"status": "x"})), Some(&["id"]));
    assert!(check_columns(&ok, &cols, &[]).is_ok());
    // A generated column the server does not stream is named as such.
    let r = route("gen", ALL, None, Some(&["id", "twice"]));
    let err = check_columns(&r, &cols, &["twice".to_string()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "column \"twice\" of table public.orders (used in select) is a generated column"
        ) && err.contains("computed from instead: id, total, status, note"),
        "{err}"
    );
}

#[test]
fn retain_only_keeps_one_subscription() {
    let mut r = router(vec![
        route("a", ALL, None, None),
        route("b", ALL, None, None),
    ]);
    assert!(r.retain_only("b"));
    let c = change(
        EventKind::Delete,
        json!({"id": "a", "total": 1, "status": "x", "note": null}),
        vec![],
    );
    let out = run(&r, &c);
    assert_eq!(out.len(), 1);
    assert_eq!(&*out[0].subscription, "b");
    assert!(!r.retain_only("zzz"));
}

#[test]
fn oversize_changes_say_what_was_left_out_and_stay_within_the_limit() {
    use crate::model::change::{OmitReason, Omitted};
    let subs = vec![route("s", &[EventKind::Insert], None, None)];
    let r = Router::new(
        PayloadContext::new("my-project", "master").with_limit(400),
        subs,
    );
    // A value left out at decoding: the rest of the record is sent, with `oversize`.
    let mut c = change(
        EventKind::Insert,
        json!({"id": 7, "total": "1.50", "status": "new"}),
        vec![],
    );
    c.omitted = vec![Omitted {
        column: "note".into(),
        reason: OmitReason::TooLarge { bytes: 600_000_000 },
    }];
    let out = run(&r, &c);
    let v: Value = serde_json::from_str(&out[0].body).unwrap();
    assert_eq!(
        v["record"],
        json!({"id": 7, "total": "1.50", "status": "new"})
    );
    assert_eq!(
        v["oversize"],
        json!({"limit_bytes": 400, "payload_bytes": null,
               "omitted_columns": [{"column": "note", "bytes": 600_000_000}]})
    );
    // A payload over the limit: only the key stays, every other column is named with its size.
    let c = change(
        EventKind::Insert,
        json!({"id": 8, "total": "2.00", "status": "new", "note": "x".repeat(500)}),
        vec![],
    );
    let out = run(&r, &c);
    assert!(out[0].body.len() <= 400, "{}", out[0].body);
    let v: Value = serde_json::from_str(&out[0].body).unwrap();
    assert_eq!(v["record"], json!({"id": 8}));
    assert_eq!(v["data"], json!({"id": 8}));
    assert_eq!(v["id"], c.event_id().as_str());
    assert_eq!(v["oversize"]["limit_bytes"], 400);
    assert!(v["oversize"]["payload_bytes"].as_u64().unwrap() > 400);
    assert_eq!(
        v["oversize"]["omitted_columns"],
        json!([{"column": "total", "bytes": 6}, {"column": "status", "bytes": 5},
               {"column": "note", "bytes": 502}])
    );
    // Within the limit, nothing changes.
    let small = change(EventKind::Insert, json!({"id": 9}), vec![]);
    assert!(!run(&r, &small)[0].body.contains("oversize"));
}

#[test]
fn unpublished_generated_columns_are_listed_as_omitted_within_select() {
    use crate::model::change::{OmitReason, Omitted};
    let subs = vec![
        route("all", &[EventKind::Insert], None, None),
        route("narrow", &[EventKind::Insert], None, Some(&["id"])),
    ];
    let r = Router::new(PayloadContext::new("p", "e"), subs);
    let mut c = change(EventKind::Insert, json!({"id": 7, "total": "1.50"}), vec![]);
    c.omitted = vec![Omitted {
        column: "twice".into(),
        reason: OmitReason::GeneratedNotPublished,
    }];
    let out = run(&r, &c);
    let all = out.iter().find(|o| &*o.subscription == "all").unwrap();
    assert!(
        all.body.ends_with(
            r#""changed_fields":[],"omitted":[{"column":"twice","reason":"generated_not_published"}]}"#
        ),
        "{}",
        all.body
    );
    let narrow = out.iter().find(|o| &*o.subscription == "narrow").unwrap();
    assert!(!narrow.body.contains("omitted"), "{}", narrow.body);
    assert!(
        narrow.body.ends_with(r#""changed_fields":[]}"#),
        "{}",
        narrow.body
    );
}

#[test]
fn resync_markers_go_to_every_active_subscription_with_the_archie_shape() {
    let mut paused = route("paused", &[EventKind::Insert], None, None);
    paused.active = false;
    let r = Router::new(
        PayloadContext::new("p1", "master"),
        [
            route(
                "a",
                &[EventKind::Insert],
                Some(json!({"status": "paid"})),
                None,
            ),
            paused,
        ],
    );
    let out = r.resync_markers(
        "evt_resync_7",
        819_126_000_000_000,
        r#"{"recovery":7,"reason":"lost"}"#,
    );
    assert_eq!(out.len(), 1, "the paused subscription gets none");
    assert_eq!(&*out[0].subscription, "a");
    assert_eq!(out[0].key, "", "a marker belongs to no row");
    assert_eq!(
        out[0].body,
        r#"{"id":"evt_resync_7","timestamp":"2025-12-15T15:00:00.000000Z","project_id":"p1","environment":"master","table":"orders","event":"RESYNC","record":{},"data":{},"changed_fields":[],"resync":{"recovery":7,"reason":"lost"}}"#
    );
    let v: Value = serde_json::from_str(&out[0].body).unwrap();
    assert_eq!(v["event"], "RESYNC");
}

#[test]
fn a_payload_is_written_into_one_allocation() {
    // Sized up front (see `build_payload`): a reallocation would at least double the capacity,
    // and an estimate far too large wastes memory held by every queued payload.
    let r = router(vec![route("all", ALL, None, None)]);
    let rec: Value = serde_json::from_str(
        r#"{"id": "a1", "total": 1, "status": "a longer status text than most", "note": "x"}"#,
    )
    .unwrap();
    for (kind, changed) in [
        (EventKind::Insert, vec![]),
        (EventKind::Update, vec![1, 2, 3]),
    ] {
        let body = &run(&r, &change(kind, rec.clone(), changed))[0].body;
        assert!(
            body.capacity() >= body.len() && body.capacity() < body.len() + 100,
            "capacity {} for {} bytes",
            body.capacity(),
            body.len()
        );
    }
}

#[test]
fn a_backfilled_row_is_routed_as_its_insert_named_read() {
    let r = router(vec![
        route("all", ALL, None, None),
        route(
            "paid",
            &[EventKind::Insert],
            Some(json!({"status": "paid"})),
            Some(&["id", "status"]),
        ),
        route("updates", &[EventKind::Update], None, None),
    ]);
    let rec: Value =
        serde_json::from_str(r#"{"id": "a1", "total": 1, "status": "paid", "note": null}"#)
            .unwrap();
    let c = change(EventKind::Insert, rec, vec![]);
    let mut out = Vec::new();
    r.route_read(&c, 7, &mut out);
    // The same subscriptions as the INSERT, with filter and select; a READ id stable per key.
    let id = crate::model::read_event_id(7, r#"["a1"]"#);
    assert_eq!(id, "evt_bf_7_fa17105616474d39");
    let head = r#"{"id":"evt_bf_7_fa17105616474d39","timestamp":"2025-12-15T15:00:00.000000Z","project_id":"my-project","environment":"master","table":"orders","event":"READ","#;
    let bodies: Vec<(&str, &str, &str)> = out
        .iter()
        .map(|o| (&*o.subscription, o.event_id.as_str(), o.body.as_str()))
        .collect();
    assert_eq!(
        bodies,
        vec![
            (
                "all",
                id.as_str(),
                &*format!(
                    r#"{head}"record":{{"id":"a1","total":1,"status":"paid","note":null}},"data":{{"id":"a1","total":1,"status":"paid","note":null}},"changed_fields":[]}}"#
                )
            ),
            (
                "paid",
                id.as_str(),
                &*format!(
                    r#"{head}"record":{{"id":"a1","status":"paid"}},"data":{{"id":"a1","status":"paid"}},"changed_fields":[]}}"#
                )
            ),
        ]
    );
    assert_eq!(out[0].key, r#"["a1"]"#);
    // The stream's INSERT of the same change keeps its own id and event.
    let streamed = run(&r, &c);
    assert_eq!(streamed[0].event_id, "evt_000000010000002000000002");
    assert!(streamed[0].body.contains(r#""event":"INSERT""#));
}
