//! walhook: Postgres logical replication (pgoutput) → signed webhooks.
//!
//! Data flows one way: `source` (replication connection, pgoutput decoding, values) →
//! `route` (subscriptions, filter, select, payload) → outbox → delivery.

pub mod api;
pub mod change;
pub mod check;
pub mod config;
pub mod deliver;
pub mod embedded_pg;
pub mod lsn;
pub mod metrics;
pub mod route;
pub mod source;
pub mod tail;

pub use lsn::Lsn;
pub mod outbox;
pub mod run;
