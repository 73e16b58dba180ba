//! The vocabulary every other module speaks: LSNs, row changes, table names, secrets, filters.
//!
//! Guarantees: nothing here does I/O or imports another module of the crate; these types mean
//! the same thing in config.toml, in the outbox, in the API and on the wire.

pub mod change;
pub mod egress;
pub mod filter;
pub mod lsn;
pub mod secret;
pub mod subscription;
pub mod table;

pub use change::{event_id, rfc3339_from_pg_micros, EventKind, RowChange, TableShape};
pub use filter::{Condition, Filter, Op};
pub use lsn::Lsn;
pub use secret::Secret;
pub use subscription::{Format, Origin, SignatureScheme, Subscription};
pub use table::{quote_ident, TableName};
