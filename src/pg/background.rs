//! The connections of walhook's background tasks: the slot monitor, the slot fence, the
//! partition sweep, retention, the backfill scan and the reloads of the subscriptions.
//!
//! Guarantees:
//! - they share two small pools (one on the outbox database, one on the source database) of
//!   [`BACKGROUND_POOL`] connections each, so their number does not grow with the number of
//!   tasks; a task holds a connection for one round and gives it back;
//! - a wait for a connection is bounded ([`BACKGROUND_WAIT`]) and comes back as a retryable
//!   error that the task logs and tries again at its next round, never a hang;
//! - a connection that broke is not handed out again (deadpool checks `is_closed` on recycle).
//!
//! Why: each of these tasks once held its own connection for its whole life. With the
//! ingest, delivery and API connections that made 25 sessions; operators size
//! `max_connections` by what walhook can hold at most, which is now fixed (see README's
//! "Connections").

use std::time::Duration;

use deadpool_postgres::{Object, Pool};

use super::tls::{self, PgConfig};
use super::PgError;

/// Connections in each of the two background pools.
pub const BACKGROUND_POOL: usize = 2;

/// How long a background task waits for a pooled connection before it gives up this round.
pub const BACKGROUND_WAIT: Duration = Duration::from_secs(30);

/// The background tasks' two pools; cheap to clone (the pools are shared).
#[derive(Clone)]
pub struct Background {
    outbox: Pool,
    source: Pool,
}

impl Background {
    /// Opens nothing yet: connections are made on first use.
    pub fn new(outbox: &PgConfig, source: &PgConfig) -> Background {
        Background {
            outbox: tls::pool(outbox, BACKGROUND_POOL),
            source: tls::pool(source, BACKGROUND_POOL),
        }
    }

    /// A connection to the outbox database (walhook's schema).
    pub async fn outbox(&self) -> Result<Object, PgError> {
        get(&self.outbox, "outbox").await
    }

    /// A connection to the source database (catalog reads, the slot, replica identity).
    pub async fn source(&self) -> Result<Object, PgError> {
        get(&self.source, "source").await
    }
}

async fn get(pool: &Pool, which: &'static str) -> Result<Object, PgError> {
    match tokio::time::timeout(BACKGROUND_WAIT, pool.get()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(PgError::Pool {
            message: format!("{which} database: {}", super::pool_error_text(&e)),
            retryable: super::pool_error_is_retryable(&e),
        }),
        Err(_) => Err(PgError::Pool {
            message: format!(
                "{which} database: no background connection free within {} s (all {BACKGROUND_POOL} busy; walhook retries)",
                BACKGROUND_WAIT.as_secs()
            ),
            retryable: true,
        }),
    }
}
