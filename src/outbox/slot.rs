//! The statements of the slot's guard (issue #18): the fence (the highest position walhook ever
//! reported to its slot past the checkpoint), the checkpoint as a lost slot's report names it,
//! the recoveries, and the RESYNC markers they enqueue.
//!
//! Guarantees: the fence only moves forward ([`raise_fence`]) except when a recovery sets it to
//! the new slot's start ([`reset_fence`]); a recovery's row is written once and finished once.

use tokio_postgres::Client;

use super::{OutboxError, Schema};
use crate::model::Lsn;

/// The outbox checkpoint of a slot, with when it was reached.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    pub lsn: Lsn,
    /// The commit time of the checkpoint's source transaction, when a delivery stored at it
    /// still tells (its payload's `timestamp`); else when the outbox stored it.
    pub time: chrono::DateTime<chrono::Utc>,
    /// True when `time` is the source commit time, false when it is the store time.
    pub commit_time: bool,
}

/// The checkpoint of `slot` and when it was committed; None before the first stored change.
pub async fn checkpoint_info(
    client: &Client,
    schema: &Schema,
    slot: &str,
) -> Result<Option<CheckpointInfo>, OutboxError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT c.commit_lsn, c.updated_at,
                        (SELECT (d.payload::jsonb ->> 'timestamp')::timestamptz
                         FROM {d} d WHERE d.commit_lsn = c.commit_lsn
                           AND d.payload LIKE '{{%' LIMIT 1)
                 FROM {c} c WHERE c.slot = $1",
                c = schema.table("checkpoint"),
                d = schema.table("deliveries"),
            ),
            &[&slot],
        )
        .await;
    let row = match row {
        Ok(r) => r,
        // A payload that is not the Archie JSON (it always is): fall back to the store time.
        Err(e) if e.as_db_error().is_some() => {
            client
                .query_opt(
                    &format!(
                        "SELECT commit_lsn, updated_at, NULL::timestamptz FROM {} WHERE slot = $1",
                        schema.table("checkpoint")
                    ),
                    &[&slot],
                )
                .await?
        }
        Err(e) => return Err(e.into()),
    };
    Ok(row.map(|r| {
        let commit: Option<chrono::DateTime<chrono::Utc>> = r.get(2);
        CheckpointInfo {
            lsn: Lsn(r.get::<_, i64>(0) as u64),
            time: commit.unwrap_or_else(|| r.get(1)),
            commit_time: commit.is_some(),
        }
    }))
}

/// The fence of `slot`; None when never written (before this version's first start).
pub async fn fence(
    client: &Client,
    schema: &Schema,
    slot: &str,
) -> Result<Option<Lsn>, OutboxError> {
    Ok(client
        .query_opt(
            &format!(
                "SELECT lsn FROM {} WHERE slot = $1",
                schema.table("slot_fence")
            ),
            &[&slot],
        )
        .await?
        .map(|r| Lsn(r.get::<_, i64>(0) as u64)))
}

/// Raises the fence of `slot` to `lsn` (never lowers it).
pub async fn raise_fence(
    client: &Client,
    schema: &Schema,
    slot: &str,
    lsn: Lsn,
) -> Result<(), OutboxError> {
    set_fence(client, schema, slot, lsn, true).await
}

/// Sets the fence of `slot` to a new slot's start.
pub async fn reset_fence(
    client: &Client,
    schema: &Schema,
    slot: &str,
    lsn: Lsn,
) -> Result<(), OutboxError> {
    set_fence(client, schema, slot, lsn, false).await
}

/// Stores the fence of `slot`; with `only_raise` a lower `lsn` leaves it as it is.
async fn set_fence(
    client: &Client,
    schema: &Schema,
    slot: &str,
    lsn: Lsn,
    only_raise: bool,
) -> Result<(), OutboxError> {
    let t = schema.table("slot_fence");
    let guard = if only_raise {
        format!("WHERE {t}.lsn < $2")
    } else {
        String::new()
    };
    client
        .execute(
            &format!(
                "INSERT INTO {t} (slot, lsn) VALUES ($1, $2)
                 ON CONFLICT (slot) DO UPDATE SET lsn = $2, updated_at = now() {guard}"
            ),
            &[&slot, &(lsn.0 as i64)],
        )
        .await?;
    Ok(())
}

/// One recovery of a lost slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    pub id: i64,
    pub slot: String,
    pub reason: String,
    pub detail: String,
    pub since_lsn: Option<Lsn>,
    pub since_time: Option<chrono::DateTime<chrono::Utc>>,
    pub slot_lsn: Lsn,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub backfill_ids: Vec<i64>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

const COLUMNS: &str = "id, slot, reason, detail, since_lsn, since_time, slot_lsn, started_at, \
                       backfill_ids, finished_at";

fn from_row(r: &tokio_postgres::Row) -> Recovery {
    Recovery {
        id: r.get(0),
        slot: r.get(1),
        reason: r.get(2),
        detail: r.get(3),
        since_lsn: r.get::<_, Option<i64>>(4).map(|l| Lsn(l as u64)),
        since_time: r.get(5),
        slot_lsn: Lsn(r.get::<_, i64>(6) as u64),
        started_at: r.get(7),
        backfill_ids: r.get(8),
        finished_at: r.get(9),
    }
}

/// Stores a new recovery; returns it.
pub async fn start_recovery(
    client: &Client,
    schema: &Schema,
    slot: &str,
    (reason, detail): (&str, &str),
    since: Option<&CheckpointInfo>,
    slot_lsn: Lsn,
) -> Result<Recovery, OutboxError> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO {} (slot, reason, detail, since_lsn, since_time, slot_lsn)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}",
                schema.table("slot_recoveries")
            ),
            &[
                &slot,
                &reason,
                &detail,
                &since.map(|c| c.lsn.0 as i64),
                &since.map(|c| c.time),
                &(slot_lsn.0 as i64),
            ],
        )
        .await?;
    Ok(from_row(&row))
}

/// Records the backfills a recovery started, and that it is finished.
pub async fn finish_recovery(
    client: &Client,
    schema: &Schema,
    id: i64,
    backfill_ids: &[i64],
) -> Result<(), OutboxError> {
    client
        .execute(
            &format!(
                "UPDATE {} SET backfill_ids = $2, finished_at = now()
                 WHERE id = $1 AND finished_at IS NULL",
                schema.table("slot_recoveries")
            ),
            &[&id, &backfill_ids],
        )
        .await?;
    Ok(())
}

/// The latest recovery of `slot`.
pub async fn latest_recovery(
    client: &Client,
    schema: &Schema,
    slot: &str,
) -> Result<Option<Recovery>, OutboxError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM {} WHERE slot = $1 ORDER BY id DESC LIMIT 1",
                schema.table("slot_recoveries")
            ),
            &[&slot],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// A recovery's RESYNC markers: (stored, finished = delivered or dead). Read from their own
/// partial index (sql/016), as a recovery asks five times a second.
pub async fn markers(
    client: &Client,
    schema: &Schema,
    event_id: &str,
) -> Result<(i64, i64), OutboxError> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE status IN ('delivered', 'dead'))
                 FROM {} WHERE event = 'RESYNC' AND event_id = $1",
                schema.table("delivery_states")
            ),
            &[&event_id],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Serialises recoveries of `slot` (CLI, API, automatic) for as long as `client` holds it.
pub async fn lock_recovery(client: &Client, slot: &str) -> Result<bool, OutboxError> {
    Ok(client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('walhook-slot-recover'), hashtext($1))",
            &[&slot],
        )
        .await?
        .get(0))
}

/// Releases [`lock_recovery`].
pub async fn unlock_recovery(client: &Client, slot: &str) -> Result<(), OutboxError> {
    client
        .execute(
            "SELECT pg_advisory_unlock(hashtext('walhook-slot-recover'), hashtext($1))",
            &[&slot],
        )
        .await?;
    Ok(())
}

/// The prefix of the logical message a recovery writes through the WAL; the ingest sink turns
/// it into one `RESYNC` marker delivery per subscription, at its place in the stream.
pub const RESYNC_PREFIX: &str = "walhook.resync";

/// A recovery's marker event id.
pub fn marker_event_id(recovery: i64) -> String {
    format!("evt_resync_{recovery}")
}

/// Writes the recovery's marker message (a JSON object: `recovery`, `reason`, `since_lsn`,
/// `since`) through the source's WAL, in its own transaction.
pub async fn emit_resync(source: &Client, content: &str) -> Result<(), OutboxError> {
    source
        .execute(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&RESYNC_PREFIX, &content],
        )
        .await?;
    Ok(())
}
