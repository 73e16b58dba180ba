//! Read-only questions to a server's catalog that more than one layer asks.
//!
//! Guarantees: nothing here writes, takes a lock beyond a catalog read, or touches a slot.

use tokio_postgres::Client;

/// WAL the slot `slot` has not confirmed yet, in bytes; None when unknown (no such slot, or a
/// standby without a current WAL position).
pub async fn slot_lag_bytes(
    client: &Client,
    slot: &str,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)))
}
