//! Unit tests of [`super`]: the exposition format, label sets and series removal.

use super::*;

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn renders_labelled_counters_gauges_and_the_histogram() {
    let m = Metrics::new();
    m.add_changes(3);
    let sub = "orders \"a\"";
    m.attempt(sub, Attempt::Failure);
    m.attempt(sub, Attempt::Success);
    m.attempt(sub, Attempt::Success);
    m.finished(sub, Outcome::Delivered);
    m.breaker(sub, BreakerState::Open);
    m.delivered_latency(Duration::from_millis(3));
    let text = m.render(&DbGauges {
        pending: vec![(sub.into(), 7)],
        dead: vec![(sub.into(), 0)],
        oldest_pending_seconds: vec![(sub.into(), 12.5)],
        slot_lag_bytes: Some(1024),
        slot_retained_bytes: Some(4096),
        streaming: true,
    });
    let l = lines(&text);
    let has = |line: &str| assert!(l.contains(&line), "missing {line:?} in:\n{text}");
    has("# HELP walhook_changes_decoded_total Row changes decoded from the replication slot.");
    has("# TYPE walhook_changes_decoded_total counter");
    has("walhook_changes_decoded_total 3");
    has("# TYPE walhook_delivery_attempts_total counter");
    has(r#"walhook_delivery_attempts_total{subscription="orders \"a\"",result="success"} 2"#);
    has(r#"walhook_delivery_attempts_total{subscription="orders \"a\"",result="failure"} 1"#);
    has("# TYPE walhook_deliveries_total counter");
    has(r#"walhook_deliveries_total{subscription="orders \"a\"",outcome="delivered"} 1"#);
    assert!(!text.contains("outcome=\"dead\""), "nothing died: {text}");
    has(r#"walhook_breaker_state{subscription="orders \"a\""} 1"#);
    has("# TYPE walhook_outbox_pending gauge");
    has(r#"walhook_outbox_pending{subscription="orders \"a\""} 7"#);
    has(r#"walhook_dead_letters{subscription="orders \"a\""} 0"#);
    has("# TYPE walhook_outbox_oldest_pending_seconds gauge");
    has(r#"walhook_outbox_oldest_pending_seconds{subscription="orders \"a\""} 12.5"#);
    has("# TYPE walhook_slot_lag_bytes gauge");
    has("walhook_slot_lag_bytes 1024");
    has("walhook_slot_retained_bytes 4096");
    has("walhook_source_streaming 1");
    has("# TYPE walhook_delivery_latency_seconds histogram");
    has(r#"walhook_delivery_latency_seconds_bucket{le="0.0025"} 0"#);
    has(r#"walhook_delivery_latency_seconds_bucket{le="0.005"} 1"#);
    has(r#"walhook_delivery_latency_seconds_bucket{le="60"} 1"#);
    has(r#"walhook_delivery_latency_seconds_bucket{le="+Inf"} 1"#);
    has("walhook_delivery_latency_seconds_sum 0.003");
    has("walhook_delivery_latency_seconds_count 1");
    // Every sample belongs to a described family.
    for sample in l.iter().filter(|l| !l.starts_with('#')) {
        let name = sample.split(['{', ' ']).next().unwrap();
        assert!(
            l.iter()
                .any(|d| d.starts_with("# TYPE ")
                    && name.starts_with(d.split(' ').nth(2).unwrap())),
            "{sample} has no # TYPE"
        );
    }
}

#[test]
fn a_forgotten_subscription_leaves_no_series() {
    let m = Metrics::new();
    for sub in ["gone", "kept"] {
        m.attempt(sub, Attempt::Success);
        m.attempt(sub, Attempt::Failure);
        m.finished(sub, Outcome::Delivered);
        m.finished(sub, Outcome::Dead);
        m.breaker(sub, BreakerState::HalfOpen);
    }
    m.forget_subscription("gone");
    let text = m.render(&DbGauges::default());
    assert!(!text.contains("\"gone\""), "{text}");
    let l = lines(&text);
    for line in [
        r#"walhook_delivery_attempts_total{subscription="kept",result="success"} 1"#,
        r#"walhook_delivery_attempts_total{subscription="kept",result="failure"} 1"#,
        r#"walhook_deliveries_total{subscription="kept",outcome="delivered"} 1"#,
        r#"walhook_deliveries_total{subscription="kept",outcome="dead"} 1"#,
        r#"walhook_breaker_state{subscription="kept"} 2"#,
    ] {
        assert!(l.contains(&line), "missing {line:?} in:\n{text}");
    }
    // A subscription re-created with the same id starts from zero.
    m.attempt("gone", Attempt::Success);
    let text = m.render(&DbGauges::default());
    assert!(lines(&text)
        .contains(&r#"walhook_delivery_attempts_total{subscription="gone",result="success"} 1"#));
}

#[test]
fn unknown_database_figures_leave_only_their_description() {
    let text = Metrics::new().render(&DbGauges::default());
    let l = lines(&text);
    assert!(
        l.contains(&"# TYPE walhook_slot_retained_bytes gauge"),
        "{text}"
    );
    assert!(!l.iter().any(|l| l.starts_with("walhook_slot_")), "{text}");
    assert!(l.contains(&"walhook_source_streaming 0"), "{text}");
}

#[test]
fn openmetrics_when_asked() {
    let m = Metrics::new();
    m.add_changes(1);
    m.delivered_latency(Duration::from_millis(20));
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
    let format = Format::from_accept(Some(accept));
    assert_eq!(format, Format::OpenMetrics);
    assert_eq!(Format::from_accept(None), Format::Prometheus);
    let text = m.render_as(&DbGauges::default(), format);
    let l = lines(&text);
    assert!(
        l.contains(&"# TYPE walhook_changes_decoded counter"),
        "{text}"
    );
    assert!(l.contains(&"walhook_changes_decoded_total 1"), "{text}");
    assert!(
        l.contains(&"# UNIT walhook_delivery_latency_seconds seconds"),
        "{text}"
    );
    assert_eq!(l.last(), Some(&"# EOF"), "{text}");
}
