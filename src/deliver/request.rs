//! What one delivery attempt sends: the body in the subscription's format (or its template), the
//! signed headers, the per-delivery id and the subscription's static headers. The worker and
//! the API's test send build requests here, so a ping is exactly what a delivery would be.
//!
//! Guarantees:
//! - `X-Walhook-Delivery-Id: del_<24 hex>` derives from (subscription id, event id) alone: the
//!   same on every retry and replay of one delivery, different for each subscription that
//!   receives the event;
//! - static headers come after walhook's own and can never replace one of them (the validator
//!   refuses those names); their values never appear in an error;
//! - a template that renders invalid JSON for some event fails that attempt with a message, it
//!   is never sent;
//! - a batch (subscription option `batch`) is one body `{"events":[<body>,...]}` holding each
//!   event's body exactly as it would be sent alone, in the order given, signed as one body. Its
//!   `X-Archie-Delivery` (and Standard Webhooks' `webhook-id`) is the batch id `bat_<24 hex>`,
//!   derived from (subscription id, the events' ids in order): the same for the same events;
//!   `X-Archie-Event` is `BATCH` and `X-Walhook-Batch-Size` the number of events. Per-event
//!   headers (`X-Walhook-Delivery-Id`, `X-Walhook-Sequence`) are left out: each event's `id` is
//!   in its body.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::format;
use super::sign::{self, Headers};
use crate::model::Subscription;

/// The row-change fields a request needs.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The stored Archie payload.
    pub payload: &'a str,
    /// The ordering key (JSON array of the key's values), "" without one.
    pub ordering_key: &'a str,
    pub event_id: &'a str,
    /// `INSERT`, `UPDATE`, `DELETE` or `PING`.
    pub event: &'a str,
    /// The subscription's sequence number of this delivery, when it has one.
    pub sequence: Option<i64>,
}

/// `del_` + 24 hex digits of SHA-256(subscription id, NUL, event id).
pub fn delivery_id(subscription: &str, event_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(subscription.as_bytes());
    h.update([0u8]);
    h.update(event_id.as_bytes());
    let digest = h.finalize();
    format!("del_{}", hex::encode(&digest[..12]))
}

/// `bat_` + 24 hex digits of SHA-256(subscription id, then NUL and each event id in order).
pub fn batch_id<'a>(subscription: &str, event_ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    h.update(subscription.as_bytes());
    for id in event_ids {
        h.update([0u8]);
        h.update(id.as_bytes());
    }
    format!("bat_{}", hex::encode(&h.finalize()[..12]))
}

/// The body of one event in the subscription's format (or its template).
pub fn render(sub: &Subscription, e: &Event) -> Result<Vec<u8>, String> {
    format::render_for(sub, e.payload, e.ordering_key)
        .map_err(|err| format!("formatting the body: {err}"))
}

/// One event of a batch: its id and its body from [`render`].
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    pub event_id: &'a str,
    pub body: &'a [u8],
}

/// Headers and body of one batch request at `now` (see the module doc); `items` is not empty.
pub fn build_batch(
    sub: &Subscription,
    items: &[BatchItem],
    now: DateTime<Utc>,
) -> Result<(Headers, Vec<u8>), String> {
    let len: usize = items.iter().map(|i| i.body.len() + 1).sum();
    let mut body = Vec::with_capacity(len + 12);
    body.extend_from_slice(br#"{"events":["#);
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.body);
    }
    body.extend_from_slice(b"]}");
    let id = batch_id(&sub.id, items.iter().map(|i| i.event_id));
    let mut headers = signed(sub, &id, "BATCH", &body, now)?;
    headers.push(("X-Walhook-Batch-Size".into(), items.len().to_string()));
    static_headers(sub, &mut headers);
    Ok((headers, body))
}

/// Headers and body for one attempt at `now`; the error says which step failed.
pub fn build(
    sub: &Subscription,
    e: &Event,
    now: DateTime<Utc>,
) -> Result<(Headers, Vec<u8>), String> {
    let body = render(sub, e)?;
    let mut headers = signed(sub, e.event_id, e.event, &body, now)?;
    headers.push((
        "X-Walhook-Delivery-Id".into(),
        delivery_id(&sub.id, e.event_id),
    ));
    if let Some(n) = e.sequence {
        // Per subscription, assigned once at enqueue: a receiver that sees a gap can fetch
        // what it missed with GET .../deliveries?after_sequence=N.
        headers.push(("X-Walhook-Sequence".into(), n.to_string()));
    }
    static_headers(sub, &mut headers);
    Ok((headers, body))
}

/// walhook's own headers, signed over `body`.
fn signed(
    sub: &Subscription,
    event_id: &str,
    event: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Headers, String> {
    sign::delivery_headers(&sign::SignInput {
        format: sub.format,
        scheme: sub.signature,
        secret: sub.secret.expose(),
        previous_secret: sub.previous_secret_at(now).map(|s| s.expose()),
        event_id,
        event,
        body,
        now_unix: now.timestamp(),
        signature_header: sub.signature_header.as_deref(),
    })
    .map_err(|err| format!("signing: {err}"))
}

/// The subscription's static headers, after walhook's own.
fn static_headers(sub: &Subscription, headers: &mut Headers) {
    for (name, value) in &sub.headers {
        headers.push((name.clone().into(), value.expose().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, Format, Origin, Secret, SignatureScheme, TableName};

    fn sub(id: &str) -> Subscription {
        Subscription {
            id: id.into(),
            origin: Origin::Api,
            table: TableName::parse("orders").unwrap(),
            events: vec![EventKind::Insert],
            url: "https://hooks.test/h".into(),
            secret: Secret::new("s3cret"),
            active: true,
            filter: None,
            select: None,
            format: Format::Json,
            signature: SignatureScheme::Archie,
            previous_secret: None,
            previous_secret_expires_at: None,
            headers: vec![("Authorization".into(), Secret::new("Bearer t0k"))],
            signature_header: None,
            template: None,
            rate_limit: None,
            batch: None,
        }
    }

    const PAYLOAD: &str = r#"{"id":"evt_1","timestamp":"2026-01-01T00:00:00Z","project_id":"p","environment":"master","table":"orders","event":"INSERT","record":{"id":1},"data":{"id":1},"changed_fields":[]}"#;

    fn event() -> Event<'static> {
        Event {
            payload: PAYLOAD,
            ordering_key: "[1]",
            event_id: "evt_1",
            event: "INSERT",
            sequence: Some(7),
        }
    }

    #[test]
    fn delivery_ids_differ_per_subscription_and_are_stable() {
        let a = delivery_id("s1", "evt_1");
        assert_eq!(a, delivery_id("s1", "evt_1"));
        assert_ne!(a, delivery_id("s2", "evt_1"));
        assert_ne!(a, delivery_id("s1", "evt_2"));
        // No ambiguity between ("s1", "0evt") and ("s10", "evt").
        assert_ne!(delivery_id("s1", "0evt"), delivery_id("s10", "evt"));
        assert!(a.starts_with("del_") && a.len() == 28, "{a}");
    }

    #[test]
    fn static_headers_come_last() {
        let (h, body) = build(&sub("s1"), &event(), Utc::now()).unwrap();
        assert_eq!(body, PAYLOAD.as_bytes());
        let names: Vec<&str> = h.iter().map(|(n, _)| n.as_ref()).collect();
        assert_eq!(
            names,
            [
                "Content-Type",
                "User-Agent",
                "X-Archie-Event",
                "X-Archie-Delivery",
                "X-Archie-Signature",
                "X-Webhook-Signature",
                "X-Walhook-Delivery-Id",
                "X-Walhook-Sequence",
                "Authorization"
            ]
        );
        assert_eq!(h[8].1, "Bearer t0k");
        assert_eq!(h[6].1, delivery_id("s1", "evt_1"));
    }

    #[test]
    fn a_batch_is_one_signed_body_of_the_events_bodies() {
        let s = sub("s1");
        let items = [
            BatchItem {
                event_id: "evt_1",
                body: b"{\"a\":1}",
            },
            BatchItem {
                event_id: "evt_2",
                body: b"{\"b\":2}",
            },
        ];
        let (h, body) = build_batch(&s, &items, Utc::now()).unwrap();
        assert_eq!(body, br#"{"events":[{"a":1},{"b":2}]}"#);
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        let id = batch_id("s1", ["evt_1", "evt_2"]);
        assert!(id.starts_with("bat_") && id.len() == 28, "{id}");
        assert_ne!(id, batch_id("s1", ["evt_2", "evt_1"]));
        assert_ne!(id, batch_id("s2", ["evt_1", "evt_2"]));
        assert_eq!(get("X-Archie-Delivery"), Some(id.as_str()));
        assert_eq!(get("X-Archie-Event"), Some("BATCH"));
        assert_eq!(get("X-Walhook-Batch-Size"), Some("2"));
        let sig = format!("sha256={}", sign::archie_hex(b"s3cret", &body));
        assert_eq!(get("X-Archie-Signature"), Some(sig.as_str()));
        assert_eq!(get("X-Walhook-Delivery-Id"), None);
        assert_eq!(get("X-Walhook-Sequence"), None);
        assert_eq!(h.last().unwrap().0, "Authorization");
    }

    #[test]
    fn template_failures_name_the_step() {
        let mut s = sub("s1");
        // Valid on the sample event, not on this one: never sent.
        s.template = Some(r#"{% if record.id == 1 %}x{% endif %}{}"#.into());
        assert!(s.validate(&Default::default()).is_ok());
        let e = build(&s, &event(), Utc::now()).unwrap_err();
        assert!(
            e.starts_with(
                "formatting the body: the template: the template did not render valid JSON"
            ),
            "{e}"
        );
    }
}
