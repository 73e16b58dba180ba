//! The plain data passed from decoding to routing: one committed row change.
//!
//! Guarantees: an event id is a pure function of (commit LSN, ordinal of the change in its
//! transaction), so the same change gets the same id across restarts and redeliveries.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::{Lsn, TableName};

/// The kind of row change a subscription can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventKind {
    Insert,
    Update,
    Delete,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Insert => "INSERT",
            EventKind::Update => "UPDATE",
            EventKind::Delete => "DELETE",
        }
    }
}

/// What routing needs to know of a table, as of the change being routed.
#[derive(Debug, Clone, PartialEq)]
pub struct TableShape {
    pub table: TableName,
    pub columns: Vec<String>,
    /// Positions of the primary-key columns; empty when the table has none.
    pub key_columns: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    /// LSN of the transaction's commit record (pgoutput Begin's final_lsn).
    pub commit_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC (Postgres's epoch).
    pub commit_ts: i64,
    /// Position of this change among the row changes of its transaction, from 0.
    pub ordinal: u32,
    pub shape: Arc<TableShape>,
    pub kind: EventKind,
    /// The row after the change; for DELETE, the row before it.
    pub record: Map<String, Value>,
    /// UPDATE: positions of the columns whose value differs between old and new row.
    pub changed: Vec<usize>,
    /// Columns of the table that are not in `record`, each with the reason; the payload says
    /// so (see `route::payload`).
    pub omitted: Vec<Omitted>,
}

/// A column left out of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Omitted {
    pub column: String,
    pub reason: OmitReason,
}

/// Why a column is not in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OmitReason {
    /// Its value alone was larger than the payload limit (never decoded into memory); `bytes`
    /// is its size in the text form the server sent.
    TooLarge { bytes: usize },
    /// A generated column the server's pgoutput does not publish (stored ones before
    /// PostgreSQL 18, virtual ones always), though `to_jsonb(row)` includes it.
    GeneratedNotPublished,
}

impl OmitReason {
    /// The payload's `reason` code for the columns it lists under `omitted`.
    pub fn code(self) -> &'static str {
        match self {
            OmitReason::TooLarge { .. } => "too_large",
            OmitReason::GeneratedNotPublished => "generated_not_published",
        }
    }
}

/// Deterministic event id: `evt_` + 16 hex digits of the commit LSN + 8 of the ordinal.
pub fn event_id(commit_lsn: Lsn, ordinal: u32) -> String {
    format!("evt_{:016x}{:08x}", commit_lsn.0, ordinal)
}

/// A backfilled row's (`READ`) event id: `evt_bf_<backfill>_` + 16 hex digits of the SHA-256 of
/// its ordering key, so that a chunk read again after a crash sends the same ids.
pub fn read_event_id(backfill: i64, key: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(key.as_bytes());
    format!("evt_bf_{backfill}_{}", hex::encode(&h[..8]))
}

/// Postgres's epoch (2000-01-01) in Unix microseconds.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// RFC 3339 UTC with microseconds, e.g. `2025-12-15T15:00:00.123456Z`.
pub fn rfc3339_from_pg_micros(pg_micros: i64) -> String {
    // Every change of a transaction has its commit time: the last one formatted is kept per
    // thread (chrono's formatting was 1.5% of walhook's CPU at one event per request).
    thread_local! {
        static LAST: std::cell::RefCell<Option<(i64, String)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((at, text)) if *at == pg_micros => text.clone(),
        _ => {
            let unix = pg_micros.saturating_add(PG_EPOCH_UNIX_MICROS);
            let text = match chrono::DateTime::from_timestamp_micros(unix) {
                Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                None => "1970-01-01T00:00:00.000000Z".to_string(),
            };
            *last = Some((pg_micros, text.clone()));
            text
        }
    })
}

impl RowChange {
    pub fn event_id(&self) -> String {
        event_id(self.commit_lsn, self.ordinal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_ordered() {
        assert_eq!(
            event_id(Lsn(0x16_B374_D848), 3),
            "evt_00000016b374d84800000003"
        );
        assert!(event_id(Lsn(5), 10) < event_id(Lsn(6), 0));
        assert!(event_id(Lsn(5), 9) < event_id(Lsn(5), 10));
    }

    #[test]
    fn read_event_ids_are_stable_per_backfill_and_key() {
        assert_eq!(read_event_id(3, "[1]"), "evt_bf_3_080a9ed428559ef6");
        assert_ne!(read_event_id(3, "[1]"), read_event_id(3, "[2]"));
        assert_ne!(read_event_id(3, "[1]"), read_event_id(4, "[1]"));
    }

    #[test]
    fn commit_time_is_rfc3339_utc() {
        assert_eq!(rfc3339_from_pg_micros(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_from_pg_micros(819_126_000_123_456),
            "2025-12-15T15:00:00.123456Z"
        );
        // The kept text is only reused for the same instant.
        for _ in 0..2 {
            for (at, want) in [
                (819_126_000_123_456, "2025-12-15T15:00:00.123456Z"),
                (819_126_000_123_457, "2025-12-15T15:00:00.123457Z"),
                (0, "2000-01-01T00:00:00.000000Z"),
            ] {
                assert_eq!(rfc3339_from_pg_micros(at), want);
                assert_eq!(rfc3339_from_pg_micros(at), want);
            }
        }
    }
}
