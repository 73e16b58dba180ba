//! How an existing row becomes a `READ` event (backfills): the table's shape as the stream sees
//! it, the row's record, its event id and its payload.
//!
//! Guarantees:
//! - a READ row has the shape of the table's streamed changes: generated columns pgoutput does
//!   not publish on this server are left out of `record` and listed under `omitted`, as every
//!   streamed change of the table lists them ([`ReadShape`]); `select` narrows that list as it
//!   does for streamed changes (the router builds both payloads). A generated column in the
//!   primary key stays in `record`: the next chunk starts after the last key read from it;
//! - `record` keeps the table's column order, as the stream renders it; a column the catalog
//!   read did not know (added since) is kept, after the others;
//! - values are rendered as the stream renders them: the rows are read under the stream's
//!   session settings (time zone, interval style, bytea output), and a column whose type has a
//!   cast to json that the stream does not reproduce is read as text and rendered by the
//!   stream's own renderer, not by that cast;
//! - a row's event id is stable for (backfill, primary key): `evt_bf_<backfill>_<hash of key>`,
//!   so a chunk read again after a crash sends the same ids;
//! - the payload is the router's INSERT payload with only `id` and `event` changed.

use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::model::change::{OmitReason, Omitted};
use crate::model::{EventKind, Lsn, RowChange, TableShape};
use crate::outbox::backfills::{ChunkColumns, ChunkRow, TableInfo};
use crate::source::fidelity::{deviations, Deviation};
use crate::source::types::TypeKind;
use crate::source::values::text_to_json;
use crate::source::SourceError;

/// The table as its streamed changes show it, for the rows of one backfill.
pub struct ReadShape {
    pub shape: Arc<TableShape>,
    /// Generated columns pgoutput does not send on this server: not read, listed as omitted.
    pub unpublished: Vec<String>,
    /// Columns the stream sends as text where `to_jsonb` applies a cast: read as text, rendered
    /// by the stream's renderer for their kind.
    as_text: Vec<(String, TypeKind)>,
}

impl ReadShape {
    /// Reads which generated columns the stream leaves out (the catalog check `walhook check`
    /// uses) and builds the shape without them.
    pub async fn read(
        source: &Client,
        table: &crate::model::TableName,
        info: &TableInfo,
    ) -> Result<ReadShape, SourceError> {
        let mut unpublished = Vec::new();
        let mut as_text = Vec::new();
        for d in deviations(source, info.oid).await? {
            match d {
                // A key column stays: chunks resume after the last key read from the record.
                Deviation::GeneratedNotPublished { column }
                    if !info.key.iter().any(|(k, _)| *k == column) =>
                {
                    unpublished.push(column)
                }
                Deviation::GeneratedNotPublished { .. } => {}
                Deviation::CastNotReproduced { column, kind, .. } => as_text.push((column, kind)),
            }
        }
        let columns: Vec<String> = info
            .columns
            .iter()
            .filter(|c| !unpublished.contains(c))
            .cloned()
            .collect();
        let shape = Arc::new(TableShape {
            table: table.clone(),
            key_columns: info
                .key
                .iter()
                .filter_map(|(k, _)| columns.iter().position(|c| c == k))
                .collect(),
            columns,
        });
        Ok(ReadShape {
            shape,
            unpublished,
            as_text,
        })
    }

    /// What a chunk reads of each row, for [`crate::outbox::backfills::read_chunk`].
    pub fn chunk_columns<'a>(&'a self, where_sql: Option<&'a str>) -> ChunkColumns<'a> {
        ChunkColumns {
            where_sql,
            leave_out: &self.unpublished,
            as_text: self.as_text.iter().map(|(c, _)| c.as_str()).collect(),
        }
    }

    /// The row as an INSERT of `commit_ts` for the router.
    pub fn change(&self, row: &ChunkRow, commit_ts: i64) -> Result<RowChange, String> {
        let mut record = in_column_order(&row.json, &self.shape.columns)?;
        for ((column, kind), text) in self.as_text.iter().zip(&row.texts) {
            if let Some(v) = record.get_mut(column) {
                *v = text
                    .as_deref()
                    .map_or(Value::Null, |t| text_to_json(kind, t));
            }
        }
        Ok(RowChange {
            omitted: self
                .unpublished
                .iter()
                .map(|c| Omitted {
                    column: c.clone(),
                    reason: OmitReason::GeneratedNotPublished,
                })
                .collect(),
            commit_lsn: Lsn::ZERO,
            commit_ts,
            ordinal: 0,
            shape: self.shape.clone(),
            kind: EventKind::Insert,
            record,
            changed: Vec::new(),
        })
    }
}

/// A backfill row's event id: stable for (backfill, key).
pub fn event_id(backfill: i64, key: &str) -> String {
    let h = Sha256::digest(key.as_bytes());
    format!("evt_bf_{backfill}_{}", hex::encode(&h[..8]))
}

/// `to_jsonb(row)` text → the record in the table's column order, as the stream renders it.
fn in_column_order(text: &str, columns: &[String]) -> Result<Map<String, Value>, String> {
    let mut obj: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| format!("to_jsonb returned invalid JSON: {e}"))?;
    let mut record = Map::with_capacity(obj.len());
    for c in columns {
        if let Some(v) = obj.shift_remove(c) {
            record.insert(c.clone(), v);
        }
    }
    // Columns the catalog read did not know (added since): kept, after the others.
    record.extend(obj);
    Ok(record)
}

/// The router's payload for a row turned into its READ event: the event id and the event name.
pub fn as_read(body: &str, routed_id: &str, id: &str) -> Result<String, String> {
    let head = format!("{{\"id\":\"{routed_id}\"");
    let rest = body
        .strip_prefix(&head)
        .ok_or_else(|| "unexpected payload layout (id)".to_string())?;
    // Earlier fields are JSON strings, whose quotes are escaped: the first match is the field.
    const EVENT: &str = ",\"event\":\"INSERT\",";
    let at = rest
        .find(EVENT)
        .ok_or_else(|| "unexpected payload layout (event)".to_string())?;
    Ok(format!(
        "{{\"id\":\"{id}\"{},\"event\":\"READ\",{}",
        &rest[..at],
        &rest[at + EVENT.len()..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_payload_keeps_everything_but_id_and_event() {
        let body = r#"{"id":"evt_1","timestamp":"t","table":"x,\"event\":\"INSERT\",","event":"INSERT","record":{"a":1}}"#;
        assert_eq!(
            as_read(body, "evt_1", "evt_bf_1_ab").unwrap(),
            r#"{"id":"evt_bf_1_ab","timestamp":"t","table":"x,\"event\":\"INSERT\",","event":"READ","record":{"a":1}}"#
        );
    }

    #[test]
    fn event_ids_are_stable_per_key() {
        assert_eq!(event_id(3, "[1]"), event_id(3, "[1]"));
        assert_ne!(event_id(3, "[1]"), event_id(3, "[2]"));
        assert_ne!(event_id(3, "[1]"), event_id(4, "[1]"));
        assert!(event_id(3, "[1]").starts_with("evt_bf_3_"));
    }

    #[test]
    fn records_follow_the_table_order() {
        let r = in_column_order(
            r#"{"id": 1, "name": "a", "created": 2}"#,
            &["name".into(), "id".into(), "created".into()],
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"name":"a","id":1,"created":2}"#
        );
    }
}
