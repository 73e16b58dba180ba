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
//! - the row goes where its INSERT would, and its payload is the router's for that INSERT with
//!   only `id` and `event` told apart ([`crate::route::Router::route_read`]): its event id is
//!   stable for (backfill, primary key), so a chunk read again after a crash sends the same ids.

use std::sync::Arc;

use serde_json::{Map, Value};
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
    pub fn change(&self, row: &ChunkRow<'_>, commit_ts: i64) -> Result<RowChange, String> {
        let mut record = in_column_order(row.json, &self.shape.columns)?;
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

/// `to_jsonb(row)` text → the record in the table's column order, as the stream renders it.
fn in_column_order(text: &str, columns: &[String]) -> Result<Map<String, Value>, String> {
    use serde::de::DeserializeSeed;
    // Parsed into a list, not a map: the record is built once, in order, from owned entries
    // (a map parsed and then reordered hashed and copied every column name twice).
    let mut de = serde_json::Deserializer::from_str(text);
    let mut entries = ByPosition(columns)
        .deserialize(&mut de)
        .and_then(|e| de.end().map(|()| e))
        .map_err(|e| format!("to_jsonb returned invalid JSON: {e}"))?;
    // Columns the catalog read did not know (added since) are kept, after the others.
    entries.sort_by_key(|(at, _, _)| *at);
    Ok(entries.into_iter().map(|(_, c, v)| (c, v)).collect())
}

/// Reads a JSON object as its entries, each with its column's position in the table (columns
/// the table's shape does not have: `usize::MAX`).
struct ByPosition<'a>(&'a [String]);

impl<'de> serde::de::DeserializeSeed<'de> for ByPosition<'_> {
    type Value = Vec<(usize, String, Value)>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ByPosition<'_> {
    type Value = Vec<(usize, String, Value)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(self.0.len());
        while let Some((column, value)) = m.next_entry::<String, Value>()? {
            let at = self.0.iter().position(|c| *c == column);
            entries.push((at.unwrap_or(usize::MAX), column, value));
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn columns_added_since_come_last_and_bad_json_is_an_error() {
        let r = in_column_order(
            r#"{"a": 1, "new": [1, {"x": 2}], "b": "s"}"#,
            &["b".into(), "a".into()],
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"b":"s","a":1,"new":[1,{"x":2}]}"#
        );
        for bad in [r#"[1, 2]"#, r#"{"a": 1} x"#, r#"{"a": "#] {
            let e = in_column_order(bad, &["a".into()]).unwrap_err();
            assert!(
                e.starts_with("to_jsonb returned invalid JSON: "),
                "{bad}: {e}"
            );
        }
    }
}
