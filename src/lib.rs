//! walhook: Postgres logical replication (pgoutput) → signed webhooks.
//!
//! ARCHITECTURE.md holds the map: the data flow, which module may import which, and the
//! invariants each module enforces.

pub mod backoff;
pub mod model;
pub mod pg;

pub mod api;
pub mod app;
pub mod cmd;
pub mod config;
pub mod console;
pub mod deliver;
pub mod embedded_pg;
pub mod ingest;
pub mod metrics;
pub mod outbox;
pub mod route;
pub mod source;
pub mod telemetry;

pub use model::Lsn;

#[cfg(test)]
mod architecture_tests;
