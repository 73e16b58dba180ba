//! Delivery: claim due outbox rows, sign, POST, record the attempt, retry or dead-letter.
//!
//! Guarantees (ARCHITECTURE.md invariant 4):
//! - at-least-once: a delivery is finished only after a 2xx was received or its last attempt
//!   failed (dead letter); an instance that dies loses its ownership session, and another (or
//!   the restarted one) takes its subscriptions over within a poll interval;
//! - the same delivery is never in flight twice: one instance owns a subscription at a time (a
//!   live session lock, a lease as fallback), claims only while it owns it, and only the owner
//!   records results;
//! - per (subscription, primary key), deliveries go out in commit order: only the oldest
//!   unfinished delivery of a key can be claimed;
//! - a slow or dead endpoint costs only its own subscription's in-flight slots, and of its
//!   receiver's shared cap (`max_requests_per_host`, [`host_limit`]) no more than those.

pub mod attempt;
pub mod batch;
pub mod batching;
pub mod connections;
mod cursor;
mod decide;
pub mod egress;
pub mod format;
pub mod host_limit;
pub mod http;
pub mod lanes;
pub mod owner;
pub mod policy;
pub mod rate;
pub mod request;
pub mod sign;
pub mod supervisor;
pub mod worker;

use crate::outbox::OutboxError;

/// Why a delivery task could not claim, record or hold ownership this time. Cloneable, so one
/// batched statement's failure can answer every pump that waited on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// A statement on the outbox failed, or the outbox could not be reached.
    #[error("outbox: {message}")]
    Outbox { message: String, retryable: bool },
    /// Every pooled outbox connection stayed busy for the bounded wait.
    #[error(
        "no outbox connection free within {waited_s} s (delivery.pool_size = {pool_size}); \
         raise [delivery] pool_size if this persists"
    )]
    PoolTimeout { waited_s: u64, pool_size: usize },
    /// A task this one depends on has stopped (the daemon is shutting down).
    #[error("delivery is stopping: {0}")]
    Stopping(&'static str),
}

impl DeliverError {
    /// Every delivery error is retried by its loop (with backoff) except a failed statement that
    /// the classifier calls permanent; those are logged loudly and retried slowly all the same,
    /// since delivery must not stop for good.
    pub fn is_retryable(&self) -> bool {
        match self {
            DeliverError::Outbox { retryable, .. } => *retryable,
            DeliverError::PoolTimeout { .. } | DeliverError::Stopping(_) => true,
        }
    }
}

impl From<OutboxError> for DeliverError {
    fn from(e: OutboxError) -> Self {
        DeliverError::Outbox {
            message: e.to_string(),
            retryable: e.is_retryable(),
        }
    }
}

impl From<tokio_postgres::Error> for DeliverError {
    fn from(e: tokio_postgres::Error) -> Self {
        OutboxError::Sql(e).into()
    }
}
