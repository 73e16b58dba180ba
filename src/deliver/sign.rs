//! Request headers and signatures for one delivery.
//!
//! Guarantees:
//! - every delivery carries `Content-Type: application/json` (`application/cloudevents+json`
//!   for CloudEvents), `User-Agent: walhook/<version>`,
//!   `X-Archie-Event` and `X-Archie-Delivery` (the event id, stable across retries);
//! - an Archie-signed body carries `X-Archie-Signature: sha256=<hex>` and
//!   `X-Webhook-Signature: <hex>`: HMAC-SHA256 keyed with the current secret's UTF-8 bytes over the
//!   exact body bytes, which is what the Archie document's Python and Node verifiers compute;
//!   with `signature_header` the `sha256=<hex>` goes in that header instead of
//!   `X-Archie-Signature` (for receivers written for other systems: `X-Archivus-Signature`);
//! - CloudEvents bodies are signed exactly like JSON ones;
//! - a Standard-Webhooks-signed body carries `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature: v1,<base64>` over `{id}.{timestamp}.{body}`, plus a second `v1,` entry
//!   made with the previous key while a rotation is in progress, so receivers holding either
//!   secret accept it;
//! - Slack and Discord bodies are never signed: those services do not verify signatures, and a
//!   header they ignore would only suggest a protection that does not exist;
//! - a secret never appears in an error message or a `Debug` output.

use std::borrow::Cow;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{Format, SignatureScheme};

pub const USER_AGENT: &str = concat!("walhook/", env!("CARGO_PKG_VERSION"));

type HmacSha256 = Hmac<Sha256>;

/// Request headers, in the order sent; names are walhook's own or a subscription's.
pub type Headers = Vec<(Cow<'static, str>, String)>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The subscription's secret is empty; an HMAC with an empty key proves nothing.
    #[error("the {which} signing secret is empty")]
    EmptySecret { which: &'static str },
    /// A Standard Webhooks secret is not `whsec_<base64>`.
    #[error("the {which} signing secret {reason} (signature = \"standard\")")]
    StandardSecret {
        which: &'static str,
        reason: &'static str,
    },
    /// A value that goes into a header holds bytes a header cannot carry (control characters).
    #[error("{header}: the value contains characters not allowed in an HTTP header")]
    HeaderValue { header: &'static str },
}

fn hmac_sha256(key: &[u8]) -> HmacSha256 {
    // HMAC hashes over-long keys and pads short ones, so no key length is invalid.
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Lowercase hex HMAC-SHA256 of `body` keyed with `secret`.
pub fn archie_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = hmac_sha256(secret);
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The key bytes of a Standard Webhooks secret (`whsec_` + base64).
#[derive(Clone)]
pub struct StandardKey(Vec<u8>);

impl std::fmt::Debug for StandardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StandardKey(<redacted>)")
    }
}

impl StandardKey {
    pub fn from_whsec(s: &str) -> Result<StandardKey, SignError> {
        Self::parse(s, "current")
    }

    fn parse(s: &str, which: &'static str) -> Result<StandardKey, SignError> {
        let b64 = s.strip_prefix("whsec_").ok_or(SignError::StandardSecret {
            which,
            reason: "must start with \"whsec_\"",
        })?;
        match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(key) if !key.is_empty() => Ok(StandardKey(key)),
            _ => Err(SignError::StandardSecret {
                which,
                reason: "must be \"whsec_\" followed by non-empty base64",
            }),
        }
    }
}

/// `v1,<base64>` of HMAC-SHA256 over `{msg_id}.{timestamp}.{body}`.
pub fn standard_signature(key: &StandardKey, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac_sha256(&key.0);
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    // itoa-free formatting into a stack buffer would save one small allocation; not worth it.
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let mut out = String::with_capacity(3 + 44);
    out.push_str("v1,");
    base64::engine::general_purpose::STANDARD.encode_string(mac.finalize().into_bytes(), &mut out);
    out
}

/// Everything a request needs besides the URL.
#[derive(Clone, Copy)]
pub struct SignInput<'a> {
    pub format: Format,
    pub scheme: SignatureScheme,
    pub secret: &'a str,
    /// Only when still valid; the caller decides.
    pub previous_secret: Option<&'a str>,
    pub event_id: &'a str,
    /// `INSERT`, `UPDATE`, `DELETE` or `PING`.
    pub event: &'a str,
    pub body: &'a [u8],
    pub now_unix: i64,
    /// Replaces `X-Archie-Signature` (Archie scheme only).
    pub signature_header: Option<&'a str>,
}

impl std::fmt::Debug for SignInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInput")
            .field("format", &self.format)
            .field("scheme", &self.scheme)
            .field("secret", &"<redacted>")
            .field(
                "previous_secret",
                &self.previous_secret.map(|_| "<redacted>"),
            )
            .field("event_id", &self.event_id)
            .field("event", &self.event)
            .field("body_len", &self.body.len())
            .field("now_unix", &self.now_unix)
            .field("signature_header", &self.signature_header)
            .finish()
    }
}

/// Visible ASCII and spaces only: anything else would be rejected by the HTTP client or, worse,
/// split a header (CR/LF).
fn header_safe(header: &'static str, value: &str) -> Result<(), SignError> {
    if value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(SignError::HeaderValue { header })
    }
}

/// The request headers for one delivery attempt, in a stable order.
pub fn delivery_headers(input: &SignInput) -> Result<Headers, SignError> {
    header_safe("X-Archie-Event", input.event)?;
    header_safe("X-Archie-Delivery", input.event_id)?;

    let content_type = match input.format {
        Format::CloudEvents => "application/cloudevents+json",
        _ => "application/json",
    };
    let mut headers: Headers = Vec::with_capacity(10);
    headers.push(("Content-Type".into(), content_type.to_string()));
    headers.push(("User-Agent".into(), USER_AGENT.to_string()));
    headers.push(("X-Archie-Event".into(), input.event.to_string()));
    headers.push(("X-Archie-Delivery".into(), input.event_id.to_string()));

    if !input.format.is_signed() {
        return Ok(headers);
    }
    if input.secret.is_empty() {
        return Err(SignError::EmptySecret { which: "current" });
    }
    match input.scheme {
        SignatureScheme::Archie => {
            // The Archie contract has a single signature: receivers rotating secrets try the old
            // and the new one themselves, so the previous secret is not used here.
            let hex = archie_hex(input.secret.as_bytes(), input.body);
            let name: Cow<'static, str> = match input.signature_header {
                Some(h) => Cow::Owned(h.to_string()),
                None => Cow::Borrowed("X-Archie-Signature"),
            };
            headers.push((name, format!("sha256={hex}")));
            headers.push(("X-Webhook-Signature".into(), hex));
        }
        SignatureScheme::Standard => {
            let current = StandardKey::parse(input.secret, "current")?;
            let mut sigs = standard_signature(&current, input.event_id, input.now_unix, input.body);
            if let Some(prev) = input.previous_secret {
                if prev.is_empty() {
                    return Err(SignError::EmptySecret { which: "previous" });
                }
                let prev = StandardKey::parse(prev, "previous")?;
                sigs.push(' ');
                sigs.push_str(&standard_signature(
                    &prev,
                    input.event_id,
                    input.now_unix,
                    input.body,
                ));
            }
            headers.push(("webhook-id".into(), input.event_id.to_string()));
            headers.push(("webhook-timestamp".into(), input.now_unix.to_string()));
            headers.push(("webhook-signature".into(), sigs));
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn input<'a>(scheme: SignatureScheme, secret: &'a str, body: &'a [u8]) -> SignInput<'a> {
        SignInput {
            format: Format::Json,
            scheme,
            secret,
            previous_secret: None,
            event_id: "evt_0000000001A2B3C4_0",
            event: "INSERT",
            body,
            now_unix: SPEC_TS,
            signature_header: None,
        }
    }

    fn get<'h>(h: &'h [(Cow<'static, str>, String)], name: &str) -> Option<&'h str> {
        h.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The Standard Webhooks specification's published vector (libraries/*/tests in
    /// standard-webhooks/standard-webhooks): if this holds, every spec library verifies us.
    #[test]
    fn standard_spec_vector() {
        let key = StandardKey::from_whsec(SPEC_SECRET).unwrap();
        assert_eq!(
            standard_signature(&key, SPEC_ID, SPEC_TS, SPEC_BODY),
            SPEC_SIG
        );
    }

    #[test]
    fn standard_headers_match_spec_vector() {
        let mut i = input(SignatureScheme::Standard, SPEC_SECRET, SPEC_BODY);
        i.event_id = SPEC_ID;
        let h = delivery_headers(&i).unwrap();
        assert_eq!(get(&h, "webhook-id"), Some(SPEC_ID));
        assert_eq!(get(&h, "webhook-timestamp"), Some("1614265330"));
        assert_eq!(get(&h, "webhook-signature"), Some(SPEC_SIG));
        assert_eq!(get(&h, "X-Archie-Signature"), None);
    }

    #[test]
    fn standard_rotation_sends_both_signatures() {
        let prev = "whsec_c2VjcmV0LXByZXZpb3VzLWtleQ==";
        let mut i = input(SignatureScheme::Standard, SPEC_SECRET, SPEC_BODY);
        i.event_id = SPEC_ID;
        i.previous_secret = Some(prev);
        let h = delivery_headers(&i).unwrap();
        let sig = get(&h, "webhook-signature").unwrap();
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], SPEC_SIG);
        let pk = StandardKey::from_whsec(prev).unwrap();
        assert_eq!(
            parts[1],
            standard_signature(&pk, SPEC_ID, SPEC_TS, SPEC_BODY)
        );
    }

    /// RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    #[test]
    fn archie_hex_rfc4231() {
        assert_eq!(
            archie_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn archie_headers() {
        let body = br#"{"id":"evt_1","total":99.50}"#;
        let h = delivery_headers(&input(SignatureScheme::Archie, "s3cret", body)).unwrap();
        let names: Vec<&str> = h.iter().map(|(n, _)| n.as_ref()).collect();
        assert_eq!(
            names,
            [
                "Content-Type",
                "User-Agent",
                "X-Archie-Event",
                "X-Archie-Delivery",
                "X-Archie-Signature",
                "X-Webhook-Signature"
            ]
        );
        let hex = archie_hex(b"s3cret", body);
        assert_eq!(get(&h, "content-type"), Some("application/json"));
        assert_eq!(get(&h, "user-agent"), Some(USER_AGENT));
        assert!(USER_AGENT.starts_with("walhook/"));
        assert_eq!(get(&h, "x-archie-event"), Some("INSERT"));
        assert_eq!(get(&h, "x-archie-delivery"), Some("evt_0000000001A2B3C4_0"));
        assert_eq!(
            get(&h, "x-archie-signature"),
            Some(format!("sha256={hex}").as_str())
        );
        assert_eq!(get(&h, "x-webhook-signature"), Some(hex.as_str()));
        assert_eq!(get(&h, "webhook-signature"), None);
    }

    #[test]
    fn signature_header_replaces_x_archie_signature() {
        let body = br#"{"id":"evt_1"}"#;
        let mut i = input(SignatureScheme::Archie, "s3cret", body);
        i.signature_header = Some("X-Archivus-Signature");
        let h = delivery_headers(&i).unwrap();
        let hex = archie_hex(b"s3cret", body);
        assert_eq!(
            get(&h, "X-Archivus-Signature"),
            Some(format!("sha256={hex}").as_str())
        );
        assert_eq!(get(&h, "X-Archie-Signature"), None);
        i.format = Format::CloudEvents;
        let h = delivery_headers(&i).unwrap();
        assert_eq!(
            get(&h, "content-type"),
            Some("application/cloudevents+json")
        );
        assert_eq!(
            get(&h, "X-Archivus-Signature"),
            Some(format!("sha256={hex}").as_str())
        );
    }

    #[test]
    fn archie_ignores_previous_secret() {
        let body = b"{}";
        let mut i = input(SignatureScheme::Archie, "new", body);
        i.previous_secret = Some("old");
        let h = delivery_headers(&i).unwrap();
        assert_eq!(
            get(&h, "x-webhook-signature"),
            Some(archie_hex(b"new", body).as_str())
        );
    }

    #[test]
    fn chat_formats_are_unsigned() {
        for format in [Format::Slack, Format::Discord] {
            for scheme in [SignatureScheme::Archie, SignatureScheme::Standard] {
                let mut i = input(scheme, "", b"{}");
                i.format = format;
                i.event = "PING";
                let h = delivery_headers(&i).unwrap();
                let names: Vec<&str> = h.iter().map(|(n, _)| n.as_ref()).collect();
                assert_eq!(
                    names,
                    [
                        "Content-Type",
                        "User-Agent",
                        "X-Archie-Event",
                        "X-Archie-Delivery"
                    ]
                );
                assert_eq!(get(&h, "x-archie-event"), Some("PING"));
            }
        }
    }

    #[test]
    fn bad_secrets_are_errors_without_the_secret() {
        let e = delivery_headers(&input(SignatureScheme::Archie, "", b"{}")).unwrap_err();
        assert_eq!(e, SignError::EmptySecret { which: "current" });

        let e = delivery_headers(&input(SignatureScheme::Standard, "hunter2", b"{}")).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("whsec_"), "{e}");

        let e =
            delivery_headers(&input(SignatureScheme::Standard, "whsec_!!!", b"{}")).unwrap_err();
        assert!(!e.to_string().contains("!!!"), "{e}");

        let mut i = input(SignatureScheme::Standard, SPEC_SECRET, b"{}");
        i.previous_secret = Some("plain-old-secret");
        let e = delivery_headers(&i).unwrap_err();
        assert!(e.to_string().contains("previous"), "{e}");
        assert!(!e.to_string().contains("plain-old-secret"), "{e}");

        assert_eq!(
            format!("{:?}", StandardKey::from_whsec(SPEC_SECRET).unwrap()),
            "StandardKey(<redacted>)"
        );
        let dbg = format!("{:?}", input(SignatureScheme::Archie, "hunter2", b"{}"));
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn header_injection_is_refused() {
        let mut i = input(SignatureScheme::Archie, "k", b"{}");
        i.event_id = "evt\r\nX-Evil: 1";
        assert_eq!(
            delivery_headers(&i).unwrap_err(),
            SignError::HeaderValue {
                header: "X-Archie-Delivery"
            }
        );
    }
}
