//! Postgres plumbing shared by every connection walhook opens: connecting (TLS, pools) and the
//! ONE classifier that decides whether a Postgres failure is worth retrying.
//!
//! Guarantees:
//! - [`classify_sqlstate`] is the only table of SQLSTATEs in the crate; every layer's error type
//!   asks it (directly or through [`classify`]) whether to retry, so the source, the outbox and
//!   the API never disagree about what is transient;
//! - [`error_text`] shows the server's message, SQLSTATE, detail and hint, never connection
//!   parameters (so never a password).

pub mod background;
pub mod catalog;
pub mod tls;

pub use background::Background;

/// A failure to connect or to run a statement, below any layer's own meaning of it.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{}", error_text(.0))]
    Sql(#[from] tokio_postgres::Error),
    /// TLS could not be established (a bad certificate, no common cipher, TLS refused).
    #[error("TLS error: {0}")]
    Tls(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The connection settings ask for something walhook does not support.
    #[error("{0}")]
    Config(String),
    /// No pooled connection could be had (the pool's own error, or its wait ran out).
    #[error("{message}")]
    Pool { message: String, retryable: bool },
}

impl PgError {
    pub fn class(&self) -> ErrorClass {
        match self {
            PgError::Sql(e) => classify(e),
            PgError::Io(_) => ErrorClass::Transient,
            PgError::Tls(_) | PgError::Config(_) => ErrorClass::Configuration,
            PgError::Pool {
                retryable: true, ..
            } => ErrorClass::Transient,
            PgError::Pool { .. } => ErrorClass::Configuration,
        }
    }
    pub fn is_retryable(&self) -> bool {
        self.class().is_retryable()
    }
}

/// What a failure means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connection loss, server restart, resource exhaustion, a cancelled statement, a lock or
    /// serialization conflict: the same work may succeed if tried again after a pause.
    Transient,
    /// A human must change something in Postgres or in walhook's configuration first
    /// (authentication, privileges, a missing object, a wrong setting).
    Configuration,
    /// A bug or a data problem that retrying will not change (syntax, constraint violations).
    Permanent,
}

impl ErrorClass {
    pub fn is_retryable(self) -> bool {
        self == ErrorClass::Transient
    }
}

/// SQLSTATEs named where they are used, so a reader need not look them up.
pub mod sqlstate {
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const DEADLOCK_DETECTED: &str = "40P01";
    pub const OBJECT_IN_USE: &str = "55006";
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    pub const QUERY_CANCELED: &str = "57014";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CRASH_SHUTDOWN: &str = "57P02";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const UNDEFINED_TABLE: &str = "42P01";
    pub const DUPLICATE_OBJECT: &str = "42710";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
}

/// The one SQLSTATE table.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    use sqlstate::*;
    // 08: connection exceptions; 53: insufficient resources (too many connections, disk full,
    // out of memory); 57P0x: shutdown / "cannot connect now" (startup or recovery); 57014: a
    // statement cancelled by pg_cancel_backend or statement_timeout; 55006: object in use (a slot
    // still held by a walsender that has not noticed its client left); 55P03: lock timeout;
    // 40001/40P01: serialization failure and deadlock.
    if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") {
        return ErrorClass::Transient;
    }
    match code {
        QUERY_CANCELED
        | OBJECT_IN_USE
        | LOCK_NOT_AVAILABLE
        | SERIALIZATION_FAILURE
        | DEADLOCK_DETECTED => ErrorClass::Transient,
        // 28: authentication; 3D: no such database; 42501: privileges; 42704/42P01: a missing
        // object; 55000: a setting (wal_level) or object state; 42710: already exists.
        c if c.starts_with("28")
            || c.starts_with("3D")
            || c == INSUFFICIENT_PRIVILEGE
            || c == UNDEFINED_OBJECT
            || c == UNDEFINED_TABLE
            || c == OBJECT_NOT_IN_PREREQUISITE_STATE
            || c == DUPLICATE_OBJECT =>
        {
            ErrorClass::Configuration
        }
        _ => ErrorClass::Permanent,
    }
}

/// Classifies a client error: a server error by its SQLSTATE; a closed connection or an I/O
/// failure underneath as transient; anything else (a type mismatch, say) as permanent.
pub fn classify(e: &tokio_postgres::Error) -> ErrorClass {
    if let Some(db) = e.as_db_error() {
        return classify_sqlstate(db.code().code());
    }
    if e.is_closed() {
        return ErrorClass::Transient;
    }
    // Connection-level failures carry the io::Error as their source.
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        // A password walhook refused to send unencrypted: a human must change a setting.
        if tls::refusal(s).is_some() {
            return ErrorClass::Configuration;
        }
        if s.is::<std::io::Error>() {
            return ErrorClass::Transient;
        }
        src = s.source();
    }
    ErrorClass::Permanent
}

/// tokio-postgres displays a server error as just "db error"; operators need the server's own
/// message, code, detail and hint (and, for connection failures, the underlying cause, once).
pub fn error_text(e: &tokio_postgres::Error) -> String {
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
        let s_text = s.to_string();
        // Some errors repeat their cause in their own message; print each cause once.
        if !text.ends_with(&s_text) {
            text.push_str(&format!(": {s_text}"));
        }
        src = s.source();
    }
    text
}

/// A connection pool's error as what happened and what to do, instead of the pool crate's
/// own words ("Error occurred while creating a new object"); the database's text is kept.
pub fn pool_error_text(e: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(pg) if !classify(pg).is_retryable() => format!(
            "cannot open a connection to the database: {}",
            error_text(pg)
        ),
        PoolError::Backend(pg) => format!(
            "cannot open a connection to the database: {} (walhook retries; check that the server is up and the connection string is right)",
            error_text(pg)
        ),
        PoolError::Timeout(_) => {
            "timed out opening a connection to the database (walhook retries; check the network and the server's load)".into()
        }
        PoolError::Closed => "the connection pool was closed (walhook is stopping)".into(),
        PoolError::NoRuntimeSpecified => "internal error: the connection pool has no runtime".into(),
        PoolError::PostCreateHook(h) => format!("setting up a new database connection failed: {h}"),
    }
}

/// Whether a pool error may go away by itself (everything but a closed pool).
pub fn pool_error_is_retryable(e: &deadpool_postgres::PoolError) -> bool {
    match e {
        deadpool_postgres::PoolError::Backend(pg) => classify(pg).is_retryable(),
        deadpool_postgres::PoolError::Closed => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pool_errors_say_what_happened_not_the_crates_words() {
        use deadpool_postgres::{PoolError, TimeoutType};
        let t = super::pool_error_text(&PoolError::Timeout(TimeoutType::Create));
        assert!(t.starts_with("timed out opening a connection"), "{t}");
        assert!(!t.contains("object"), "{t}");
        assert!(super::pool_error_is_retryable(&PoolError::Timeout(
            TimeoutType::Wait
        )));
        assert!(!super::pool_error_is_retryable(&PoolError::Closed));
    }

    use super::*;

    #[test]
    fn one_table_for_every_layer() {
        for c in [
            "57P01", "57P02", "57P03", "08006", "08P01", "53300", "55006", "57014", "40001",
            "40P01", "55P03",
        ] {
            assert_eq!(classify_sqlstate(c), ErrorClass::Transient, "{c}");
        }
        for c in [
            "42704", "28P01", "28000", "42710", "3D000", "42501", "55000",
        ] {
            assert_eq!(classify_sqlstate(c), ErrorClass::Configuration, "{c}");
        }
        for c in ["42601", "XX000", "23505"] {
            assert_eq!(classify_sqlstate(c), ErrorClass::Permanent, "{c}");
        }
    }
}
