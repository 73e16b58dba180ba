//! Ingest: the source's row changes routed and stored in the outbox, and the subscriptions
//! that routing follows (config.toml at start and on SIGHUP, the API's changes as they happen).
//!
//! Guarantees:
//! - exactly once into the outbox and a slot that never runs ahead of it ([`sink`]);
//! - ingest reconnects by itself, with the one capped, jittered backoff, when Postgres restarts
//!   or a connection drops; every state change is logged with the LSN ([`stream`]);
//! - a reload that fails validation changes nothing; a valid one takes effect between source
//!   transactions, with the router updated before the publication gains a table, so no change
//!   of a newly subscribed table is dropped ([`reload`]).

pub mod backfill;
pub mod read_event;
pub mod reload;
pub mod sink;
pub mod slot;
pub mod slot_recover;
pub mod stream;
pub mod watermarks;

use crate::config::ConfigError;
use crate::model::TableName;
use crate::outbox::OutboxError;
use crate::pg::PgError;
use crate::route::UnknownColumn;
use crate::source::SourceError;

pub use sink::{Hooks, OutboxSink};

/// Why ingest or a reload stopped: which side failed, or which subscription cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Column(#[from] UnknownColumn),
    #[error("table {0} is in walhook's own outbox schema and cannot be subscribed")]
    OwnSchema(TableName),
    /// The slot was invalidated, dropped or moved: changes after the checkpoint are missing.
    #[error("{}", .0.message())]
    SlotBroken(Box<slot::Report>),
}

impl IngestError {
    /// Connection loss and server restarts are retried; everything else needs a human.
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::Source(e) => e.is_retryable(),
            IngestError::Outbox(e) => e.is_retryable(),
            IngestError::Config(_)
            | IngestError::Column(_)
            | IngestError::OwnSchema(_)
            | IngestError::SlotBroken(_) => false,
        }
    }
}

impl From<PgError> for IngestError {
    fn from(e: PgError) -> Self {
        IngestError::Source(e.into())
    }
}

impl From<tokio_postgres::Error> for IngestError {
    fn from(e: tokio_postgres::Error) -> Self {
        IngestError::Outbox(OutboxError::Sql(e))
    }
}
