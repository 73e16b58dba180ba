//! The figures `/metrics` reads from the databases at scrape time, as plain numbers.
//!
//! Guarantees:
//! - a scrape costs two statements whatever the number of subscriptions: one grouped count over
//!   the outbox ([`queue_counts`]), (the slot figures come from `pg::catalog::slot_bytes`);
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
