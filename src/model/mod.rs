//! The vocabulary every other module speaks: LSNs, row changes, table names, secrets, filters.
//!
//! Guarantees: nothing here does I/O or imports another module of the crate; these types mean
//! the same thing in config.toml, in the outbox, in the API and on the wire.

pub mod change;
pub mod egress;
pub mod filter;
pub mod lsn;
pub mod options;
pub mod secret;
pub mod subscription;
pub mod table;
pub mod template;

/// A value that cannot be accepted; the message says what is wrong and what is expected, and
/// never contains a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

impl std::ops::Deref for BadValue {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for BadValue {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<&str> for BadValue {
    fn from(s: &str) -> Self {
        BadValue(s.to_string())
    }
}

impl From<String> for BadValue {
    fn from(s: String) -> Self {
        BadValue(s)
    }
}

pub use change::{
    event_id, read_event_id, rfc3339_from_pg_micros, EventKind, RowChange, TableShape,
};
pub use filter::{Condition, Filter, Op};
pub use lsn::Lsn;
pub use options::{Batch, RateLimit};
pub use secret::Secret;
pub use subscription::{Format, Origin, SignatureScheme, Subscription};
pub use table::{quote_ident, TableName};
