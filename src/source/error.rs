//! The source layer's error type.
//!
//! Guarantees:
//! - no variant ever carries a password: authentication errors are built from the server's
//!   message and our own fixed texts only, never from the connection configuration;
//! - [`SourceError::is_retryable`] separates "try again later" (connection loss, server
//!   shutdown, resource exhaustion) from "a human must fix something" (credentials,
//!   configuration, protocol violations, SQL errors such as a missing slot).

use std::fmt;

use crate::pg::error_text;
use crate::pg::{classify, classify_sqlstate};

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
    #[error("SQL client error: {}", error_text(.0))]
    Sql(#[from] tokio_postgres::Error),
    /// A reply was well-formed on the wire but its content could not be interpreted.
    #[error("decode error: {0}")]
    Decode(String),
    /// The connection settings are unusable (no host, no user, a NUL in a parameter).
    #[error("configuration error: {0}")]
    Config(String),
    /// A subscribed table walhook cannot use as it is; the reason says what to do.
    #[error("{reason}")]
    Table {
        table: crate::model::TableName,
        reason: String,
    },
    /// The database's replication setup (slot, publication) conflicts with walhook's; the reason
    /// says what to change.
    #[error("{0}")]
    Setup(String),
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

impl From<crate::pg::PgError> for SourceError {
    fn from(e: crate::pg::PgError) -> Self {
        use crate::pg::PgError;
        match e {
            PgError::Sql(e) => SourceError::Sql(e),
            PgError::Tls(m) => SourceError::Tls(m),
            PgError::Io(e) => SourceError::Io(e),
            PgError::Config(m) => SourceError::Config(m),
            // A pool that stays busy is waited out like a connect timeout.
            PgError::Pool {
                message,
                retryable: true,
            } => SourceError::Timeout(message),
            PgError::Pool { message, .. } => SourceError::Config(message),
        }
    }
}

impl SourceError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Io(_) | SourceError::Timeout(_) | SourceError::StreamEnded(_) => true,
            SourceError::Server { code, .. } => classify_sqlstate(code).is_retryable(),
            SourceError::Sql(e) => classify(e).is_retryable(),
            SourceError::Tls(_)
            | SourceError::Auth(_)
            | SourceError::Protocol(_)
            | SourceError::Decode(_)
            | SourceError::Config(_)
            | SourceError::Table { .. }
            | SourceError::Setup(_) => false,
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
