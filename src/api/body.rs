//! Request bodies: parsing (400) and value validation (422) that needs no database.
//!
//! Guarantees:
//! - a body is a JSON object with only known fields; a malformed, missing or wrongly-typed
//!   field is a 400 naming it; an unacceptable value is a 422 naming it;
//! - nothing accepted here can make Postgres fail later: strings holding NUL are refused (text
//!   and jsonb cannot store them), and lengths are bounded;
//! - filter strings may not contain `${`: `${ENV}` expansion is a config.toml feature, and a
//!   filter stored through the API would otherwise be expanded when the daemon loads it, letting
//!   an API caller read the daemon's environment back through `GET`;
//! - the `secret` value is never part of any error message.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::model::options::DEFAULT_BATCH_WAIT;
use crate::model::subscription::MAX_TABLE;
use crate::model::{Batch, EventKind, Filter, Format, RateLimit, SignatureScheme, TableName};

/// A field that PATCH may leave out, set, or (where nullable) clear with `null`.
pub type Nullable<T> = Option<Option<T>>;

/// The fields of a create or update body, parsed but not yet checked for meaning.
#[derive(Debug, Default)]
pub struct WebhookFields {
    pub project_id: Option<String>,
    pub environment: Option<String>,
    pub table: Option<String>,
    pub events: Option<Vec<String>>,
    pub url: Option<String>,
    pub secret: Option<String>,
    pub active: Option<bool>,
    pub filter: Nullable<Value>,
    pub select: Nullable<Vec<String>>,
    pub format: Option<String>,
    pub signature: Option<String>,
    pub previous_secret: Nullable<String>,
    pub previous_secret_expires_at: Nullable<String>,
    /// Name → value, in the body's order.
    pub headers: Nullable<Vec<(String, String)>>,
    pub signature_header: Nullable<String>,
    pub template: Nullable<String>,
    pub rate_limit: Nullable<String>,
    pub batch: Nullable<Batch>,
    /// Create only: backfill the table once the subscription is stored.
    pub backfill: Option<bool>,
}

const WEBHOOK_FIELDS: &[&str] = &[
    "projectId",
    "environment",
    "table",
    "events",
    "url",
    "secret",
    "active",
    "filter",
    "select",
    "format",
    "signature",
    "previous_secret",
    "previous_secret_expires_at",
    "headers",
    "signature_header",
    "template",
    "rate_limit",
    "batch",
    "backfill",
];

/// Parses a body that must be a JSON object; `allow_empty` treats an empty body as `{}`.
pub fn object(
    bytes: &[u8],
    allow_empty: bool,
    known: &[&str],
) -> Result<Map<String, Value>, ApiError> {
    if allow_empty && bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest {
        // serde_json's message gives line and column, never the content.
        message: format!("request body is not valid JSON: {e}"),
        field: None,
    })?;
    let Value::Object(map) = v else {
        return Err(ApiError::BadRequest {
            message: "request body must be a JSON object".into(),
            field: None,
        });
    };
    if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad(
            k,
            format!("unknown field {k:?}; known fields: {}", known.join(", ")),
        ));
    }
    Ok(map)
}

fn string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad(key, format!("{key}: expected a string"))),
    }
}

fn nullable_string(map: &Map<String, Value>, key: &str) -> Result<Nullable<String>, ApiError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
        Some(_) => Err(ApiError::bad(
            key,
            format!("{key}: expected a string or null"),
        )),
    }
}

fn string_list(v: &Value, key: &str) -> Result<Vec<String>, ApiError> {
    let wrong = || ApiError::bad(key, format!("{key}: expected an array of strings"));
    v.as_array()
        .ok_or_else(wrong)?
        .iter()
        .map(|i| i.as_str().map(str::to_string).ok_or_else(wrong))
        .collect()
}

pub fn parse_webhook(bytes: &[u8]) -> Result<WebhookFields, ApiError> {
    let map = object(bytes, false, WEBHOOK_FIELDS)?;
    let events = match map.get("events") {
        None => None,
        Some(v) => Some(string_list(v, "events")?),
    };
    let active = match map.get("active") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(ApiError::bad("active", "active: expected true or false")),
    };
    let backfill = match map.get("backfill") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(ApiError::bad(
                "backfill",
                "backfill: expected true or false",
            ))
        }
    };
    let filter = match map.get("filter") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v @ Value::Object(_)) => Some(Some(v.clone())),
        Some(_) => {
            return Err(ApiError::bad(
                "filter",
                "filter: expected an object or null",
            ))
        }
    };
    let select = match map.get("select") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => Some(Some(string_list(v, "select")?)),
    };
    let headers = match map.get("headers") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::Object(m)) => Some(Some(
            m.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    // The value is not echoed: it may be a token.
                    _ => Err(ApiError::bad(
                        "headers",
                        format!("headers: the value of {:?} must be a string", truncate(k)),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Some(_) => {
            return Err(ApiError::bad(
                "headers",
                "headers: expected an object of header names to string values, or null",
            ))
        }
    };
    Ok(WebhookFields {
        backfill,
        headers,
        signature_header: nullable_string(&map, "signature_header")?,
        template: nullable_string(&map, "template")?,
        rate_limit: nullable_string(&map, "rate_limit")?,
        batch: batch(&map)?,
        project_id: string(&map, "projectId")?,
        environment: string(&map, "environment")?,
        table: string(&map, "table")?,
        events,
        url: string(&map, "url")?,
        secret: string(&map, "secret")?,
        active,
        filter,
        select,
        format: string(&map, "format")?,
        signature: string(&map, "signature")?,
        previous_secret: nullable_string(&map, "previous_secret")?,
        previous_secret_expires_at: nullable_string(&map, "previous_secret_expires_at")?,
    })
}

/// `POST /{id}/replay`: `{"since": "RFC 3339"}`, or an empty body.
pub fn parse_replay(bytes: &[u8]) -> Result<Option<DateTime<Utc>>, ApiError> {
    let map = object(bytes, true, &["since"])?;
    match nullable_string(&map, "since")?.flatten() {
        None => Ok(None),
        Some(s) => parse_time("since", &s).map(Some),
    }
}

pub fn parse_time(field: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::invalid(
                field,
                format!("{field}: expected an RFC 3339 time like \"2026-12-01T00:00:00Z\""),
            )
        })
}

fn no_nul(field: &str, s: &str) -> Result<(), ApiError> {
    if s.contains('\0') {
        return Err(ApiError::invalid(
            field,
            format!("{field}: must not contain NUL characters"),
        ));
    }
    Ok(())
}

pub fn table(s: &str) -> Result<TableName, ApiError> {
    no_nul("table", s)?;
    if s.len() > MAX_TABLE {
        return Err(ApiError::invalid("table", "table: name too long"));
    }
    TableName::parse(s).map_err(|m| ApiError::invalid("table", format!("table: {m}")))
}

pub fn events(list: &[String]) -> Result<Vec<EventKind>, ApiError> {
    let mut out = Vec::new();
    for e in list {
        let kind = match e.as_str() {
            "INSERT" => EventKind::Insert,
            "UPDATE" => EventKind::Update,
            "DELETE" => EventKind::Delete,
            _ => {
                return Err(ApiError::invalid(
                    "events",
                    format!(
                        "events: unknown event {:?}; use INSERT, UPDATE or DELETE",
                        truncate(e)
                    ),
                ))
            }
        };
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    if out.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "events: list at least one of INSERT, UPDATE, DELETE",
        ));
    }
    Ok(out)
}

pub fn format(s: &str) -> Result<Format, ApiError> {
    Format::parse(s).ok_or_else(|| {
        ApiError::invalid(
            "format",
            "format: expected \"json\", \"cloudevents\", \"slack\" or \"discord\"",
        )
    })
}

pub fn signature(s: &str) -> Result<SignatureScheme, ApiError> {
    SignatureScheme::parse(s).ok_or_else(|| {
        ApiError::invalid(
            "signature",
            "signature: expected \"archie\" or \"standard\"",
        )
    })
}

pub fn rate_limit(s: &str) -> Result<RateLimit, ApiError> {
    RateLimit::parse(s).map_err(|m| ApiError::invalid("rate_limit", format!("rate_limit: {m}")))
}

/// `"batch": {"max_events": 100, "max_wait": "50ms"}` (max_wait optional) or null.
fn batch(map: &Map<String, Value>) -> Result<Nullable<Batch>, ApiError> {
    const SHAPE: &str =
        "batch: expected {\"max_events\": <1..1000>, \"max_wait\": \"50ms\"} or null";
    let b = match map.get("batch") {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(None)),
        Some(Value::Object(b)) => b,
        Some(_) => return Err(ApiError::bad("batch", SHAPE)),
    };
    if let Some(k) = b.keys().find(|k| *k != "max_events" && *k != "max_wait") {
        return Err(ApiError::bad(
            "batch",
            format!("batch: unknown field {:?}; {SHAPE}", truncate(k)),
        ));
    }
    let max_events = b
        .get("max_events")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::bad("batch", SHAPE))?;
    let max_wait = match b.get("max_wait") {
        None => DEFAULT_BATCH_WAIT,
        Some(Value::String(w)) => crate::config::duration::parse(w)
            .map_err(|m| ApiError::invalid("batch", format!("batch: max_wait: {m}")))?,
        Some(_) => return Err(ApiError::bad("batch", SHAPE)),
    };
    Batch::new(max_events, max_wait)
        .map(|b| Some(Some(b)))
        .map_err(|m| ApiError::invalid("batch", format!("batch: {m}")))
}

/// A filter from the API: as in config.toml, but without `${ENV}` expansion (see module doc).
pub fn filter(v: &Value) -> Result<Filter, ApiError> {
    fn scan(v: &Value) -> Result<(), &'static str> {
        match v {
            Value::String(s) if s.contains('\0') => Err("must not contain NUL characters"),
            Value::String(s) if s.contains("${") => {
                Err("\"${\" is not allowed (environment expansion exists in config.toml only)")
            }
            Value::Array(a) => a.iter().try_for_each(scan),
            Value::Object(m) => m.iter().try_for_each(|(k, v)| {
                if k.contains('\0') {
                    return Err("must not contain NUL characters");
                }
                scan(v)
            }),
            _ => Ok(()),
        }
    }
    scan(v).map_err(|m| ApiError::invalid("filter", format!("filter: {m}")))?;
    Filter::from_json(v).map_err(|m| ApiError::invalid("filter", m.0))
}

/// Echoing user input in an error is helpful; echoing a megabyte is not.
fn truncate(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_field() {
        let e = parse_webhook(b"{").unwrap_err();
        assert_eq!(e.status(), 400);
        let e = parse_webhook(b"[]").unwrap_err();
        assert_eq!(e.status(), 400);
        let e = parse_webhook(br#"{"events": "INSERT"}"#).unwrap_err();
        assert!(matches!(e, ApiError::BadRequest { field: Some(ref f), .. } if f == "events"));
        let e = parse_webhook(br#"{"tabel": "x"}"#).unwrap_err();
        assert!(matches!(e, ApiError::BadRequest { field: Some(ref f), .. } if f == "tabel"));
        let f = parse_webhook(br#"{"filter": null, "select": ["a"], "active": false}"#).unwrap();
        assert_eq!(f.filter, Some(None));
        assert_eq!(f.select, Some(Some(vec!["a".to_string()])));
        assert_eq!(f.active, Some(false));
    }

    #[test]
    fn values_are_checked() {
        assert_eq!(events(&[]).unwrap_err().status(), 422);
        assert_eq!(events(&["UPSERT".into()]).unwrap_err().status(), 422);
        assert_eq!(
            events(&["INSERT".into(), "INSERT".into()]).unwrap(),
            vec![EventKind::Insert]
        );
        assert!(table("a.b.c").is_err());
        assert!(table("or\0ders").is_err());
        let env: Value = serde_json::json!({"status": "${HOME}"});
        assert_eq!(filter(&env).unwrap_err().status(), 422);
        let ok: Value = serde_json::json!({"status": "completed", "total": {"gte": 100}});
        assert_eq!(filter(&ok).unwrap().conditions.len(), 2);
        assert!(parse_replay(b"").unwrap().is_none());
        assert!(parse_replay(br#"{"since": "2026-01-01T00:00:00Z"}"#)
            .unwrap()
            .is_some());
        assert_eq!(
            parse_replay(br#"{"since": "yesterday"}"#)
                .unwrap_err()
                .status(),
            422
        );
    }
}
