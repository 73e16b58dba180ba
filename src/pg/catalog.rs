//! Read-only questions to a server's catalog that more than one layer asks.
//!
//! Guarantees: nothing here writes, takes a lock beyond a catalog read, or touches a slot.

use tokio_postgres::Client;

use super::PgError;

/// How far a replication slot is behind the server's current WAL position, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotBytes {
    /// Since `confirmed_flush_lsn`: WAL walhook has not confirmed yet.
    pub lag: Option<i64>,
    /// Since `restart_lsn`: WAL the server keeps on disk for the slot.
    pub retained: Option<i64>,
}

/// The slot's figures; `None` when there is no such slot. Fails on a standby, where
/// `pg_current_wal_lsn()` is not available.
pub async fn slot_bytes(client: &Client, slot: &str) -> Result<Option<SlotBytes>, PgError> {
    let row = client
        .query_opt(
            // One reading of the current position for both figures.
            "SELECT (w.lsn - s.confirmed_flush_lsn)::int8, (w.lsn - s.restart_lsn)::int8
             FROM pg_replication_slots s, (SELECT pg_current_wal_lsn() AS lsn) w
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| SlotBytes {
        lag: r.get(0),
        retained: r.get(1),
    }))
}

/// The slot's flush lag in seconds as the server measures it (`pg_stat_replication.flush_lag`
/// of the walsender holding the slot); `None` without an active walsender, or while the server
/// has nothing to measure (it clears the lag once the stream is idle and caught up).
pub async fn slot_lag_seconds(client: &Client, slot: &str) -> Result<Option<f64>, PgError> {
    let row = client
        .query_opt(
            "SELECT extract(epoch FROM r.flush_lag)::float8
             FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.and_then(|r| r.get(0)))
}
