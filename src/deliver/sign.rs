//! Signing (temporary stub until the signing work lands).
use crate::config::{Format, SignatureScheme};
use hmac::{Hmac, Mac};
pub const USER_AGENT: &str = concat!("walhook/", env!("CARGO_PKG_VERSION"));
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SignError(String);
pub struct SignInput<'a> {
    pub format: Format,
    pub scheme: SignatureScheme,
    pub secret: &'a str,
    pub previous_secret: Option<&'a str>,
    pub event_id: &'a str,
    pub event: &'a str,
    pub body: &'a [u8],
    pub now_unix: i64,
}
pub fn archie_hex(secret: &[u8], body: &[u8]) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key");
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}
pub fn delivery_headers(i: &SignInput) -> Result<Vec<(&'static str, String)>, SignError> {
    let h = archie_hex(i.secret.as_bytes(), i.body);
    Ok(vec![
        ("Content-Type", "application/json".into()),
        ("User-Agent", USER_AGENT.into()),
        ("X-Archie-Event", i.event.into()),
        ("X-Archie-Delivery", i.event_id.into()),
        ("X-Archie-Signature", format!("sha256={h}")),
        ("X-Webhook-Signature", h),
    ])
}
