//! The source layer's error type.
//!
//! Guarantees:
//! - no variant ever carries a password: authentication errors are built from the server's
//!   message and our own fixed texts only, never from the connection configuration;
//! - [`SourceError::is_retryable`] separates "try again later" (connection loss, server
//!   shutdown, resource exhaustion) from "a human must fix something" (credentials,
//!   configuration, protocol violations, SQL errors such as a missing slot).

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// TLS could not be established (handshake failure, or the server refused TLS while
    /// `sslmode=require`).
    #[error("TLS error: {0}")]
    Tls(String),
    /// Authentication failed or cannot be attempted (e.g. a password is required but none is
    /// configured, or the server demands an unsupported method).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// An ErrorResponse from the server.
    #[error("{}", ServerDisplay { code, message, detail, hint })]
    Server {
        severity: String,
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    /// The server sent something the protocol does not allow at this point, or malformed bytes.
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("SQL client error: {}", pg_error_text(.0))]
    Sql(#[from] tokio_postgres::Error),
    /// A reply was well-formed on the wire but its content could not be interpreted.
    #[error("decode error: {0}")]
    Decode(String),
    #[error("configuration error: {0}")]
    Config(String),
    /// A bounded wait ran out (connect timeout, shutdown drain).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The replication stream ended without an error from us: the server closed the copy (it
    /// does so when shutting down) or left it with a non-copy message. Reconnecting is the cure,
    /// and safe: the consumer resumes from its own checkpoint.
    #[error("replication stream ended: {0}")]
    StreamEnded(String),
}

struct ServerDisplay<'a> {
    code: &'a str,
    message: &'a str,
    detail: &'a Option<String>,
    hint: &'a Option<String>,
}

impl fmt::Display for ServerDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server error {}: {}", self.code, self.message)?;
        if let Some(d) = self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Whether a SQLSTATE describes a transient condition worth retrying.
pub fn sqlstate_is_retryable(code: &str) -> bool {
    // 08: connection exceptions; 53: insufficient resources (too many connections, disk full,
    // out of memory); 57P01..57P03: admin/crash shutdown and "cannot connect now" (startup or
    // recovery); 55006: object in use, e.g. the slot is still held by a walsender that has not
    // yet noticed its client went away; 40001/40P01: serialization failure and deadlock.
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "55006" | "40001" | "40P01"
        )
}

impl SourceError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Io(_) | SourceError::Timeout(_) | SourceError::StreamEnded(_) => true,
            SourceError::Server { code, .. } => sqlstate_is_retryable(code),
            SourceError::Sql(e) => {
                if let Some(db) = e.as_db_error() {
                    return sqlstate_is_retryable(db.code().code());
                }
                if e.is_closed() {
                    return true;
                }
                // Connection-level failures carry the io::Error as their source.
                let mut src = std::error::Error::source(e);
                while let Some(s) = src {
                    if s.is::<std::io::Error>() {
                        return true;
                    }
                    src = s.source();
                }
                false
            }
            SourceError::Tls(_)
            | SourceError::Auth(_)
            | SourceError::Protocol(_)
            | SourceError::Decode(_)
            | SourceError::Config(_) => false,
        }
    }

    /// The SQLSTATE of a server-reported error, if this is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            SourceError::Server { code, .. } => Some(code),
            SourceError::Sql(e) => e.as_db_error().map(|d| d.code().code()),
            _ => None,
        }
    }
}

/// tokio-postgres displays a server error as just "db error"; operators need the server's own
/// message, code, detail and hint (and, for connection failures, the underlying cause).
pub fn pg_error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            text.push_str(&format!("; detail: {d}"));
        }
        if let Some(h) = db.hint() {
            text.push_str(&format!("; hint: {h}"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(&format!(": {s}"));
        src = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> SourceError {
        SourceError::Server {
            severity: "ERROR".into(),
            code: code.into(),
            message: "m".into(),
            detail: None,
            hint: None,
        }
    }

    #[test]
    fn classifies_sqlstates() {
        for c in [
            "57P01", "57P02", "57P03", "08006", "08P01", "53300", "55006",
        ] {
            assert!(server(c).is_retryable(), "{c}");
        }
        for c in ["42704", "42601", "28P01", "28000", "XX000", "42710"] {
            assert!(!server(c).is_retryable(), "{c}");
        }
        assert!(!SourceError::Auth("x".into()).is_retryable());
        assert!(!SourceError::Protocol("x".into()).is_retryable());
        assert!(SourceError::Io(std::io::ErrorKind::UnexpectedEof.into()).is_retryable());
    }

    #[test]
    fn server_display_includes_code_and_hint() {
        let e = SourceError::Server {
            severity: "ERROR".into(),
            code: "42704".into(),
            message: "replication slot \"x\" does not exist".into(),
            detail: None,
            hint: Some("h".into()),
        };
        assert_eq!(
            e.to_string(),
            "server error 42704: replication slot \"x\" does not exist (hint: h)"
        );
    }
}
