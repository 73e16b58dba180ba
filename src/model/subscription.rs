//! A subscription: which table's changes go to which URL, filtered, narrowed, formatted and
//! signed how. ONE type and ONE validator, used by config.toml, the management API and every
//! reload, so a subscription accepted by one is accepted by all.
//!
//! Guarantees:
//! - [`Subscription::validate`] checks everything that needs no database: the URL against the
//!   egress rules the sender applies before connecting (so a stored URL is never one that could
//!   not be sent to), secrets (non-empty, bounded, the Standard Webhooks shape), rotation fields,
//!   `select`, NUL characters (text and jsonb cannot store them) and lengths;
//! - an [`Invalid`] names the field at fault and never contains a secret's value;
//! - checks that need the database (the table exists, columns named by filter and select exist,
//!   walhook may manage the table) belong to `source::setup` and `route`.

use chrono::{DateTime, Utc};

use super::egress::EgressPolicy;
use super::options::{check_header_name, check_header_value, is_reserved, MAX_HEADERS};
pub use super::options::{Batch, RateLimit};
use super::{BadValue, EventKind, Filter, Secret, TableName};

pub const MAX_TABLE: usize = 255;
pub const MAX_URL: usize = 2048;
pub const MAX_SECRET: usize = 1024;
/// Postgres's column limit.
pub const MAX_SELECT: usize = 1600;

/// Where a subscription is defined, and so who may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// config.toml; mirrored into the outbox at start and on reload, read-only in the API.
    Config,
    /// Created through the management API.
    Api,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Api => "api",
        }
    }
    pub fn parse(s: &str) -> Option<Origin> {
        match s {
            "config" => Some(Origin::Config),
            "api" => Some(Origin::Api),
            _ => None,
        }
    }
}

/// The body a subscription receives.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The Archie payload, signed.
    #[default]
    Json,
    /// A Slack incoming-webhook message (unsigned).
    Slack,
    /// A Discord webhook message (unsigned).
    Discord,
    /// A CloudEvents 1.0 event in structured JSON mode whose `data` is the Archie payload,
    /// signed like `json`.
    #[serde(rename = "cloudevents")]
    CloudEvents,
}

impl Format {
    /// Whether bodies of this format carry a signature (chat services verify none).
    pub fn is_signed(self) -> bool {
        matches!(self, Format::Json | Format::CloudEvents)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Slack => "slack",
            Format::Discord => "discord",
            Format::CloudEvents => "cloudevents",
        }
    }
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "slack" => Some(Format::Slack),
            "discord" => Some(Format::Discord),
            "cloudevents" => Some(Format::CloudEvents),
            _ => None,
        }
    }
}

/// How a JSON body is signed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SignatureScheme {
    /// `X-Archie-Signature: sha256=<hex>` and `X-Webhook-Signature: <hex>`.
    #[default]
    Archie,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`.
    Standard,
}

impl SignatureScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureScheme::Archie => "archie",
            SignatureScheme::Standard => "standard",
        }
    }
    pub fn parse(s: &str) -> Option<SignatureScheme> {
        match s {
            "archie" => Some(SignatureScheme::Archie),
            "standard" => Some(SignatureScheme::Standard),
            _ => None,
        }
    }
}

/// A Standard Webhooks secret must be `whsec_` followed by base64 of the key bytes. The messages
/// describe the expected shape, never the value.
pub fn check_standard_secret(secret: &str) -> Result<(), BadValue> {
    use base64::Engine;
    let b64 = secret
        .strip_prefix("whsec_")
        .ok_or("must start with \"whsec_\" when signature = \"standard\"")?;
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(key) if !key.is_empty() => Ok(()),
        _ => Err("the part after \"whsec_\" must be base64 (signature = \"standard\")".into()),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: String,
    pub origin: Origin,
    pub table: TableName,
    /// Each kind at most once, in the order given.
    pub events: Vec<EventKind>,
    pub url: String,
    pub secret: Secret,
    /// Paused subscriptions keep their table published (pausing must not unpublish) but route
    /// nothing.
    pub active: bool,
    pub filter: Option<Filter>,
    pub select: Option<Vec<String>>,
    pub format: Format,
    pub signature: SignatureScheme,
    /// The secret being rotated out; Standard signatures carry both until it expires.
    pub previous_secret: Option<Secret>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Sent on every request, in this order; values are secrets (`Authorization` tokens).
    pub headers: Vec<(String, Secret)>,
    /// The header carrying `sha256=<hex>` instead of `X-Archie-Signature`.
    pub signature_header: Option<String>,
    /// A minijinja template for the body (format `json` only); see [`super::template`].
    pub template: Option<String>,
    /// At most this many requests per second, minute or hour.
    pub rate_limit: Option<RateLimit>,
    /// Opt-in: several events per request (`{"events": [...]}`); None sends one per request.
    pub batch: Option<Batch>,
}

/// A value that cannot be accepted, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

/// Tables known from their name alone never to stream (checked at config load and by the API
/// before any database is asked): system catalogs and temporary tables. The database-dependent
/// cases (UNLOGGED, ownership, inheritance) are `source::setup`'s.
fn never_streamed(t: &TableName) -> Option<String> {
    let schema = t.schema.as_str();
    if matches!(schema, "pg_catalog" | "information_schema") || schema.starts_with("pg_toast") {
        return Some(format!(
            "{t} is a system catalog table; walhook subscribes to application tables only"
        ));
    }
    if schema == "pg_temp" || schema.starts_with("pg_temp_") {
        return Some(format!(
            "{t} is a temporary table: it lives in one session and its changes never reach the \
             WAL, so walhook cannot see them"
        ));
    }
    None
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// What validation needs to know of the deployment.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// `[delivery]`'s egress rules, which every URL must pass.
    pub egress: EgressPolicy,
    /// walhook's own outbox schema when the outbox shares the source database: its tables can
    /// never be subscribed (walhook would feed on its own writes).
    pub own_schema: Option<String>,
}

impl Subscription {
    /// Every check that needs no database; the first failure, naming its field.
    pub fn validate(&self, rules: &Rules) -> Result<(), Invalid> {
        no_nul("id", &self.id)?;
        if self.id.is_empty() {
            return Err(invalid("id", "must not be empty"));
        }
        if self.table.schema.len() + self.table.name.len() + 1 > MAX_TABLE {
            return Err(invalid("table", "name too long"));
        }
        no_nul("table", &self.table.schema)?;
        no_nul("table", &self.table.name)?;
        if rules.own_schema.as_deref() == Some(self.table.schema.as_str()) {
            return Err(invalid(
                "table",
                format!(
                    "{} is in walhook's own outbox schema and cannot be subscribed",
                    self.table
                ),
            ));
        }
        if let Some(why) = never_streamed(&self.table) {
            return Err(invalid("table", why));
        }
        if self.events.is_empty() {
            return Err(invalid(
                "events",
                "list at least one of INSERT, UPDATE, DELETE",
            ));
        }
        check_url(&self.url, &rules.egress)?;
        check_secret("secret", self.secret.expose(), self.signature)?;
        match (&self.previous_secret, self.previous_secret_expires_at) {
            (Some(p), Some(_)) => check_secret("previous_secret", p.expose(), self.signature)?,
            (Some(_), None) => {
                return Err(invalid(
                    "previous_secret_expires_at",
                    "required with previous_secret (RFC 3339, e.g. \"2026-12-01T00:00:00Z\")",
                ))
            }
            (None, _) => {}
        }
        if let Some(select) = &self.select {
            if select.is_empty() {
                return Err(invalid(
                    "select",
                    "empty list; leave it out to send every column",
                ));
            }
            if select.len() > MAX_SELECT {
                return Err(invalid("select", "too many columns"));
            }
            for c in select {
                no_nul("select", c)?;
                if c.is_empty() {
                    return Err(invalid("select", "empty column name"));
                }
            }
        }
        self.validate_options()
    }

    /// Headers, signature header and template.
    fn validate_options(&self) -> Result<(), Invalid> {
        if self.headers.len() > MAX_HEADERS {
            return Err(invalid("headers", format!("at most {MAX_HEADERS} headers")));
        }
        for (i, (name, value)) in self.headers.iter().enumerate() {
            check_header_name(name).map_err(|m| invalid("headers", m.0))?;
            if is_reserved(name) {
                return Err(invalid(
                    "headers",
                    format!("{name} is set by walhook itself and cannot be overridden"),
                ));
            }
            if self.headers[..i]
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                return Err(invalid("headers", format!("{name} is given twice")));
            }
            check_header_value(name, value.expose()).map_err(|m| invalid("headers", m.0))?;
        }
        if let Some(h) = &self.signature_header {
            check_header_name(h).map_err(|m| invalid("signature_header", m.0))?;
            if is_reserved(h) {
                return Err(invalid(
                    "signature_header",
                    format!("{h} is one of walhook's own headers; name another, e.g. X-Archivus-Signature"),
                ));
            }
            if self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(h)) {
                return Err(invalid(
                    "signature_header",
                    format!("{h} is also in headers; a header can carry one value"),
                ));
            }
            if self.signature != SignatureScheme::Archie || !self.format.is_signed() {
                return Err(invalid(
                    "signature_header",
                    "applies to signature = \"archie\" with format \"json\" or \"cloudevents\" only",
                ));
            }
        }
        if let Some(t) = &self.template {
            no_nul("template", t)?;
            if self.format != Format::Json {
                return Err(invalid(
                    "template",
                    "a template renders the body itself: use it with format = \"json\"",
                ));
            }
            super::template::check(t).map_err(|m| invalid("template", m.0))?;
        }
        if self.batch.is_some() && self.format != Format::Json {
            return Err(invalid(
                "batch",
                "a batch is a JSON body {\"events\": [...]}: use it with format = \"json\" (slack, discord and cloudevents send one event per request)",
            ));
        }
        Ok(())
    }

    /// Whether this subscription asks for `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
    }

    /// The previous secret while it is still valid at `now`.
    pub fn previous_secret_at(&self, now: DateTime<Utc>) -> Option<&Secret> {
        match (&self.previous_secret, self.previous_secret_expires_at) {
            (Some(s), Some(until)) if now < until => Some(s),
            _ => None,
        }
    }
}

/// Removes repeated event kinds, keeping the first occurrence.
pub fn dedup_events(events: &[EventKind]) -> Vec<EventKind> {
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        if !out.contains(e) {
            out.push(*e);
        }
    }
    out
}

fn no_nul(field: &'static str, s: &str) -> Result<(), Invalid> {
    if s.contains('\0') {
        return Err(invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

/// The egress rules (HTTPS unless `allow_http`; an IP-literal host must be allowed), plus
/// bounds. Names are checked again at delivery time, after DNS.
pub fn check_url(url: &str, egress: &EgressPolicy) -> Result<(), Invalid> {
    if url.len() > MAX_URL {
        return Err(invalid("url", format!("longer than {MAX_URL} bytes")));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "url",
            "must not contain whitespace or control characters",
        ));
    }
    // EgressError's messages name the host and the setting, never path, query or userinfo.
    egress
        .check_url(url)
        .map(drop)
        .map_err(|e| invalid("url", e.to_string()))
}

fn check_secret(field: &'static str, secret: &str, scheme: SignatureScheme) -> Result<(), Invalid> {
    if secret.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if secret.len() > MAX_SECRET {
        return Err(invalid(field, format!("longer than {MAX_SECRET} bytes")));
    }
    no_nul(field, secret)?;
    if scheme == SignatureScheme::Standard {
        check_standard_secret(secret).map_err(|m| invalid(field, m.0))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub() -> Subscription {
        Subscription {
            id: "s1".into(),
            origin: Origin::Api,
            table: TableName::parse("orders").unwrap(),
            events: vec![EventKind::Insert],
            url: "https://hooks.test/h".into(),
            secret: Secret::new("whsec_dGVzdA=="),
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
        }
    }

    #[test]
    fn options_name_their_field_and_header() {
        let r = Rules::default();
        let mut s = sub();
        s.headers = vec![("Authorization".into(), Secret::new("Bearer t0ken"))];
        s.signature_header = Some("X-Archivus-Signature".into());
        s.template = Some(r#"{"id":{{ id }},"data":{{ record }}}"#.into());
        s.rate_limit = Some(RateLimit::parse("50/s").unwrap());
        s.batch = Some(Batch::new(100, std::time::Duration::from_millis(50)).unwrap());
        assert!(s.validate(&r).is_ok());
        for f in [Format::Slack, Format::Discord, Format::CloudEvents] {
            let mut s = sub();
            s.format = f;
            s.batch = Some(Batch::new(10, std::time::Duration::ZERO).unwrap());
            assert_eq!(s.validate(&r).unwrap_err().field, "batch");
        }
        for name in [
            "X-Archie-Signature",
            "content-type",
            "X-Walhook-Delivery-Id",
            "webhook-id",
        ] {
            let mut s = sub();
            s.headers = vec![(name.into(), Secret::new("v"))];
            let e = s.validate(&r).unwrap_err();
            assert_eq!(e.field, "headers");
            assert!(e.message.contains(name), "{e}");
        }
        let mut s = sub();
        s.headers = vec![
            ("X-Key".into(), Secret::new("a")),
            ("x-key".into(), Secret::new("b")),
        ];
        assert_eq!(field(&s, &r), "headers");
        let mut s = sub();
        s.headers = vec![("X-Key".into(), Secret::new("s3cret\n"))];
        let e = s.validate(&r).unwrap_err().to_string();
        assert!(e.contains("X-Key") && !e.contains("s3cret"), "{e}");
        let mut s = sub();
        s.signature_header = Some("X-Archie-Signature".into());
        assert_eq!(field(&s, &r), "signature_header");
        s.signature_header = Some("X-Sig".into());
        s.signature = SignatureScheme::Standard;
        assert_eq!(field(&s, &r), "signature_header");
        let mut s = sub();
        s.template = Some("{{ id }".into());
        assert_eq!(field(&s, &r), "template");
        s.template = Some(r#"{"id": {{ id }}}"#.into());
        s.format = Format::Slack;
        assert_eq!(field(&s, &r), "template");
    }

    fn field(s: &Subscription, rules: &Rules) -> &'static str {
        s.validate(rules).unwrap_err().field
    }

    #[test]
    fn each_rule_names_its_field() {
        let r = Rules::default();
        assert!(sub().validate(&r).is_ok());
        let mut s = sub();
        s.url = "http://hooks.test/h".into();
        assert_eq!(field(&s, &r), "url");
        s.url = "https://10.0.0.1/h".into();
        assert_eq!(field(&s, &r), "url");
        let mut s = sub();
        s.events.clear();
        assert_eq!(field(&s, &r), "events");
        let mut s = sub();
        s.secret = Secret::new("");
        assert_eq!(field(&s, &r), "secret");
        let mut s = sub();
        s.signature = SignatureScheme::Standard;
        s.secret = Secret::new("not-whsec");
        assert_eq!(field(&s, &r), "secret");
        let mut s = sub();
        s.previous_secret = Some(Secret::new("old"));
        assert_eq!(field(&s, &r), "previous_secret_expires_at");
        let mut s = sub();
        s.select = Some(vec![]);
        assert_eq!(field(&s, &r), "select");
        let own = Rules {
            own_schema: Some("public".into()),
            ..Rules::default()
        };
        assert_eq!(field(&sub(), &own), "table");
        for t in [
            "pg_catalog.pg_authid",
            "information_schema.tables",
            "pg_temp_3.tmp",
        ] {
            let mut s = sub();
            s.table = TableName::parse(t).unwrap();
            assert_eq!(field(&s, &Rules::default()), "table", "{t}");
        }
    }

    #[test]
    fn messages_never_contain_the_secret() {
        let mut s = sub();
        s.signature = SignatureScheme::Standard;
        s.secret = Secret::new("hunter2-secret");
        let e = s.validate(&Rules::default()).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn loopback_needs_both_settings() {
        let mut s = sub();
        s.url = "http://127.0.0.1:9/h".into();
        let open = Rules {
            egress: EgressPolicy {
                allow_http: true,
                allow_private_networks: true,
                allow_cidrs: Vec::new(),
            },
            own_schema: None,
        };
        assert!(s.validate(&open).is_ok());
        assert_eq!(field(&s, &Rules::default()), "url");
    }
}
