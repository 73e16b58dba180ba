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
//!   is never sent.

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

/// Headers and body for one attempt at `now`; the error says which step failed.
pub fn build(
    sub: &Subscription,
    e: &Event,
    now: DateTime<Utc>,
) -> Result<(Headers, Vec<u8>), String> {
    let body = format::render_for(sub, e.payload, e.ordering_key)
        .map_err(|err| format!("formatting the body: {err}"))?;
    let mut headers = sign::delivery_headers(&sign::SignInput {
        format: sub.format,
        scheme: sub.signature,
        secret: sub.secret.expose(),
        previous_secret: sub.previous_secret_at(now).map(|s| s.expose()),
        event_id: e.event_id,
        event: e.event,
        body: &body,
        now_unix: now.timestamp(),
        signature_header: sub.signature_header.as_deref(),
    })
    .map_err(|err| format!("signing: {err}"))?;
    headers.push((
        "X-Walhook-Delivery-Id".into(),
        delivery_id(&sub.id, e.event_id),
    ));
    if let Some(n) = e.sequence {
        // Per subscription, assigned once at enqueue: a receiver that sees a gap can fetch
        // what it missed with GET .../deliveries?after_sequence=N.
        headers.push(("X-Walhook-Sequence".into(), n.to_string()));
    }
    for (name, value) in &sub.headers {
        headers.push((name.clone().into(), value.expose().to_string()));
    }
    Ok((headers, body))
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
