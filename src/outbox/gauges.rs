//! The figures `/metrics` reads from the databases at scrape time, as plain numbers.
//!
//! Guarantees:
//! - a scrape costs two statements whatever the number of subscriptions: one grouped count over
//!   the outbox ([`queue_counts`]), one row of `pg_replication_slots` ([`slot_bytes`]);
//! - the queue count filters on exactly the statuses its partial indexes cover, so it need not
//!   read the delivered rows that make up most of the table;
//! - every subscription is listed, with zeros, so a gauge drops to 0 rather than disappearing;
//!   a deleted subscription is no longer listed, so its series disappear with it.

use tokio_postgres::Client;

use super::{OutboxError, Schema};

/// Outbox rows of one subscription that are not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCounts {
    pub subscription: String,
    /// `pending` or `failed`: still to be sent.
    pub pending: i64,
    /// Dead letters.
    pub dead: i64,
}

/// Pending and dead deliveries of every subscription, ordered by id, in one statement.
pub async fn queue_counts(
    client: &Client,
    schema: &Schema,
) -> Result<Vec<QueueCounts>, OutboxError> {
    // Two grouped scans, each over a partial index's rows (`deliveries_sub_due` for unfinished,
    // `deliveries_finished` for dead), joined to the subscriptions table for the zeros.
    let sql = format!(
        "SELECT s.id, coalesce(p.n, 0)::int8, coalesce(x.n, 0)::int8
         FROM {subs} s
         LEFT JOIN (SELECT subscription_id, count(*) AS n FROM {d}
                    WHERE status IN ('pending', 'failed') GROUP BY subscription_id) p
           ON p.subscription_id = s.id
         LEFT JOIN (SELECT subscription_id, count(*) AS n FROM {d}
                    WHERE status = 'dead' GROUP BY subscription_id) x
           ON x.subscription_id = s.id
         ORDER BY s.id",
        subs = schema.table("subscriptions"),
        d = schema.table("deliveries"),
    );
    let rows = client.query(&sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| QueueCounts {
            subscription: r.get(0),
            pending: r.get(1),
            dead: r.get(2),
        })
        .collect())
}

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
pub async fn slot_bytes(client: &Client, slot: &str) -> Result<Option<SlotBytes>, OutboxError> {
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
