//! The figures `/metrics` reads from the databases at scrape time, as plain numbers.
//!
//! Guarantees:
//! - a scrape costs two statements whatever the number of subscriptions: one grouped count over
//!   the outbox ([`queue_counts`]), (the slot figures come from `pg::catalog::slot_bytes`);
//! - the queue count walks only the unfinished rows' partial indexes, from the delivered cursor
//!   on, so it need not read the delivered rows that make up most of the table; the oldest
//!   unfinished row of each kind is the first entry of its index, one probe each;
//! - every subscription is listed, with zeros, so a gauge drops to 0 rather than disappearing;
//!   a deleted subscription is no longer listed, so its series disappear with it.

use tokio_postgres::Client;

use super::{OutboxError, Schema};

/// Outbox rows of one subscription that are not delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueCounts {
    pub subscription: String,
    /// `pending` or `failed`: still to be sent.
    pub pending: i64,
    /// Dead letters.
    pub dead: i64,
    /// Seconds since the oldest unfinished delivery was enqueued (a replayed one counts from
    /// its first enqueue); 0 when nothing is unfinished. How far behind delivery is, in time.
    pub oldest_pending_seconds: f64,
}

/// Pending and dead deliveries of every subscription and the age of its oldest unfinished one,
/// ordered by id, in one statement.
pub async fn queue_counts(
    client: &Client,
    schema: &Schema,
) -> Result<Vec<QueueCounts>, OutboxError> {
    // Unfinished: pending after the delivered cursor, failed, and pending at or below it
    // (replays); below the cursor, other `pending` rows were delivered by it (sql/015). Each
    // count walks an index from where its rows start. Dead letters: one grouped scan of
    // `deliveries_finished`'s dead rows. Joined to the subscriptions table for the zeros.
    let d = schema.table("deliveries");
    let after = super::queue::cursor_id(&d, &schema.table("delivered_runs"), "s.id");
    let sql = format!(
        "SELECT s.id, (u.pending + u.failed + u.again)::int8, coalesce(x.n, 0)::int8,
                coalesce(extract(epoch FROM now() - u.oldest), 0)::float8
         FROM {subs} s
         CROSS JOIN LATERAL (SELECT {after} AS after) cur
         CROSS JOIN LATERAL (
             SELECT (SELECT count(*) FROM {d} p WHERE p.subscription_id = s.id
                       AND p.status = 'pending' AND p.id > cur.after) AS pending,
                    (SELECT count(*) FROM {d} f WHERE f.subscription_id = s.id
                       AND f.status = 'failed') AS failed,
                    (SELECT count(*) FROM {d} a WHERE a.subscription_id = s.id
                       AND a.status = 'pending' AND a.last_attempt_at IS NOT NULL
                       AND a.id <= cur.after) AS again,
                    -- The oldest of each kind is the first entry of its index (id or sequence
                    -- order is enqueue order within a subscription: sql/014).
                    (SELECT min(o.created_at) FROM (
                        (SELECT p.created_at FROM {d} p
                         WHERE p.subscription_id >= s.id AND p.subscription_id <= s.id
                           AND p.status = 'pending' AND p.id > cur.after
                         ORDER BY p.subscription_id, p.id LIMIT 1)
                        UNION ALL
                        (SELECT f.created_at FROM {d} f
                         WHERE f.subscription_id = s.id AND f.status = 'failed'
                         ORDER BY f.subscription_id, f.sequence LIMIT 1)
                        UNION ALL
                        (SELECT a.created_at FROM {d} a
                         WHERE a.subscription_id >= s.id AND a.subscription_id <= s.id
                           AND a.status = 'pending' AND a.last_attempt_at IS NOT NULL
                           AND a.id <= cur.after
                         ORDER BY a.subscription_id, a.id LIMIT 1)) o) AS oldest) u
         LEFT JOIN (SELECT subscription_id, count(*) AS n FROM {d}
                    WHERE status = 'dead' GROUP BY subscription_id) x
           ON x.subscription_id = s.id
         ORDER BY s.id",
        subs = schema.table("subscriptions"),
    );
    let rows = client.query(&sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| QueueCounts {
            subscription: r.get(0),
            pending: r.get(1),
            dead: r.get(2),
            oldest_pending_seconds: r.get(3),
        })
        .collect())
}
