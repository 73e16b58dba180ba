//! Delivery options of a subscription that shape the request: static headers, the header that
//! carries the signature, and the rate limit.
//!
//! Guarantees:
//! - a static header never replaces one walhook sets itself (signatures, `Content-Type`,
//!   `User-Agent`, `X-Archie-*`, `X-Walhook-*`, `webhook-*`) nor one that HTTP framing owns
//!   (`Host`, `Content-Length`, `Transfer-Encoding`, ...): such a name is refused, by name;
//! - header names are RFC 9110 tokens and values visible ASCII (no CR/LF: no header splitting);
//!   messages name the header, never its value (values are secrets: `Authorization` tokens);
//! - a rate limit is `<count>/<s|m|h>` with a count ≥ 1; it always has a positive period;
//! - a batch holds 1 to [`MAX_BATCH_EVENTS`] events and waits at most [`MAX_BATCH_WAIT`] to fill.

use std::time::Duration;

use super::BadValue;

/// Static headers per subscription, at most.
pub const MAX_HEADERS: usize = 32;
pub const MAX_HEADER_NAME: usize = 128;
pub const MAX_HEADER_VALUE: usize = 4096;

/// Names (lower case) HTTP framing or walhook itself owns.
const RESERVED: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "user-agent",
    "x-webhook-signature",
    // W3C trace context: walhook sets `traceparent` when `[telemetry]` is on.
    "traceparent",
    "tracestate",
];
/// Prefixes (lower case) of walhook's own header families.
const RESERVED_PREFIXES: &[&str] = &["x-archie-", "x-walhook-", "webhook-"];

/// Whether `name` is a header walhook (or HTTP) sets and a subscription may not.
pub fn is_reserved(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    RESERVED.contains(&n.as_str()) || RESERVED_PREFIXES.iter().any(|p| n.starts_with(p))
}

/// RFC 9110 `token`.
pub fn check_header_name(name: &str) -> Result<(), BadValue> {
    if name.is_empty() {
        return Err("empty header name".into());
    }
    if name.len() > MAX_HEADER_NAME {
        return Err(format!("header name longer than {MAX_HEADER_NAME} bytes").into());
    }
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.bytes().all(tchar) {
        return Err(format!(
            "{:?} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)",
            name.chars().take(64).collect::<String>()
        )
        .into());
    }
    Ok(())
}

/// Visible ASCII, spaces and tabs; the message names `name`, never the value.
pub fn check_header_value(name: &str, value: &str) -> Result<(), BadValue> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(format!("header {name}: value longer than {MAX_HEADER_VALUE} bytes").into());
    }
    if !value
        .bytes()
        .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        return Err(format!(
            "header {name}: the value may hold only visible ASCII characters, spaces and tabs"
        )
        .into());
    }
    Ok(())
}

/// A request rate: at most `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub count: u32,
    pub per: RatePer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RatePer {
    Second,
    Minute,
    Hour,
}

impl RatePer {
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            RatePer::Second => 1,
            RatePer::Minute => 60,
            RatePer::Hour => 3600,
        })
    }
    fn suffix(self) -> &'static str {
        match self {
            RatePer::Second => "s",
            RatePer::Minute => "m",
            RatePer::Hour => "h",
        }
    }
}

const RATE_HELP: &str = "expected \"<count>/s\", \"<count>/m\" or \"<count>/h\", e.g. \"50/s\"";

impl RateLimit {
    pub fn parse(s: &str) -> Result<RateLimit, BadValue> {
        let (count, per) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| BadValue(RATE_HELP.into()))?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| {
                BadValue(format!("the count must be a whole number ≥ 1; {RATE_HELP}"))
            })?;
        let per = match per.trim() {
            "s" | "sec" | "second" => RatePer::Second,
            "m" | "min" | "minute" => RatePer::Minute,
            "h" | "hour" => RatePer::Hour,
            _ => return Err(BadValue(RATE_HELP.into())),
        };
        Ok(RateLimit { count, per })
    }

    /// The spacing between two requests at this rate (never zero).
    pub fn period(self) -> Duration {
        (self.per.duration() / self.count).max(Duration::from_nanos(1))
    }

    /// Requests per second, for messages and metrics.
    pub fn per_second(self) -> f64 {
        f64::from(self.count) / self.per.duration().as_secs_f64()
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.count, self.per.suffix())
    }
}

/// Events per batch, at most: a request body stays a few megabytes at worst.
pub const MAX_BATCH_EVENTS: u32 = 1000;
/// The longest a partial batch may wait for more events: latency stays bounded.
pub const MAX_BATCH_WAIT: Duration = Duration::from_secs(10);
/// `max_wait` when a subscription leaves it out.
pub const DEFAULT_BATCH_WAIT: Duration = Duration::from_millis(50);

/// Opt-in batching: up to `max_events` of a subscription's events in one request
/// (`{"events": [...]}`), sent when full or once the oldest has waited `max_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Batch {
    pub max_events: u32,
    pub max_wait: Duration,
}

impl Batch {
    /// Checks the bounds; the message names the sub-field.
    pub fn new(max_events: i64, max_wait: Duration) -> Result<Batch, BadValue> {
        let max_events = u32::try_from(max_events)
            .ok()
            .filter(|n| (1..=MAX_BATCH_EVENTS).contains(n))
            .ok_or_else(|| {
                BadValue(format!(
                    "max_events must be a whole number from 1 to {MAX_BATCH_EVENTS}, e.g. 100"
                ))
            })?;
        if max_wait > MAX_BATCH_WAIT {
            return Err(BadValue(format!(
                "max_wait must be at most {}s, e.g. \"50ms\"",
                MAX_BATCH_WAIT.as_secs()
            )));
        }
        Ok(Batch {
            max_events,
            max_wait,
        })
    }

    /// `max_wait` as config.toml and the API write it: `"50ms"`.
    pub fn max_wait_text(&self) -> String {
        format!("{}ms", self.max_wait.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_bounds() {
        let b = Batch::new(100, Duration::from_millis(50)).unwrap();
        assert_eq!((b.max_events, b.max_wait_text().as_str()), (100, "50ms"));
        assert!(Batch::new(1, Duration::ZERO).is_ok());
        assert!(Batch::new(1000, MAX_BATCH_WAIT).is_ok());
        for n in [0, -1, 1001, i64::MAX] {
            assert!(Batch::new(n, Duration::ZERO)
                .unwrap_err()
                .0
                .starts_with("max_events"));
        }
        assert!(Batch::new(10, Duration::from_secs(11))
            .unwrap_err()
            .0
            .starts_with("max_wait"));
    }

    #[test]
    fn rates_parse_and_print() {
        let r = RateLimit::parse("50/s").unwrap();
        assert_eq!(r.to_string(), "50/s");
        assert_eq!(r.period(), Duration::from_millis(20));
        assert_eq!(
            RateLimit::parse(" 120 / m ").unwrap().period(),
            Duration::from_millis(500)
        );
        assert_eq!(
            RateLimit::parse("3600/h").unwrap().period(),
            Duration::from_secs(1)
        );
        assert_eq!(RateLimit::parse("1/hour").unwrap().to_string(), "1/h");
        for bad in ["", "50", "0/s", "-1/s", "1.5/s", "50/d", "x/s", "50/"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reserved_names_in_any_case() {
        for n in [
            "Content-Type",
            "content-length",
            "HOST",
            "X-Archie-Signature",
            "x-archie-anything",
            "X-Walhook-Delivery-Id",
            "webhook-signature",
            "User-Agent",
            "X-Webhook-Signature",
        ] {
            assert!(is_reserved(n), "{n}");
        }
        for n in [
            "Authorization",
            "X-Api-Key",
            "X-Archivus-Signature",
            "X-Webhook",
        ] {
            assert!(!is_reserved(n), "{n}");
        }
    }

    #[test]
    fn names_and_values() {
        assert!(check_header_name("X-Api-Key").is_ok());
        assert!(check_header_name("bad name").is_err());
        assert!(check_header_name("").is_err());
        assert!(check_header_name("a:b").is_err());
        assert!(check_header_value("A", "Bearer abc\tdef").is_ok());
        let e = check_header_value("Authorization", "Bearer s3cret\r\nX-Evil: 1").unwrap_err();
        assert!(e.contains("Authorization") && !e.contains("s3cret"), "{e}");
        assert!(check_header_value("A", "é").is_err());
    }
}
