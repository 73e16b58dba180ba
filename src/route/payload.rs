//! The Archie payload: `id, timestamp, project_id, environment, table, event, record, data,
//! changed_fields`, in that order, as compact JSON. `data` is byte-for-byte the same as `record`.

use serde_json::{Map, Value};

use crate::model::change::{rfc3339_from_pg_micros, RowChange};

/// Project-wide fields, JSON-escaped once.
#[derive(Debug, Clone, Default)]
pub struct PayloadContext {
    project_id: String,
    environment: String,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

impl PayloadContext {
    pub fn new(project_id: &str, environment: &str) -> Self {
        PayloadContext {
            project_id: json_str(project_id),
            environment: json_str(environment),
        }
    }
}

/// The record as JSON, narrowed to `select` (in the record's column order) when given.
pub(crate) fn record_json(record: &Map<String, Value>, select: Option<&[String]>) -> String {
    match select {
        None => serde_json::to_string(record).expect("JSON values always serialize"),
        Some(cols) => {
            let narrowed: Map<String, Value> = record
                .iter()
                .filter(|(k, _)| cols.iter().any(|c| c == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            serde_json::to_string(&narrowed).expect("JSON values always serialize")
        }
    }
}

pub fn build_payload(
    ctx: &PayloadContext,
    change: &RowChange,
    record: &str,
    changed: &[&str],
) -> String {
    let table = json_str(&change.shape.table.display_name());
    let mut out = String::with_capacity(200 + 2 * record.len());
    out.push_str("{\"id\":\"");
    out.push_str(&change.event_id());
    out.push_str("\",\"timestamp\":\"");
    out.push_str(&rfc3339_from_pg_micros(change.commit_ts));
    out.push_str("\",\"project_id\":");
    out.push_str(&ctx.project_id);
    out.push_str(",\"environment\":");
    out.push_str(&ctx.environment);
    out.push_str(",\"table\":");
    out.push_str(&table);
    out.push_str(",\"event\":\"");
    out.push_str(change.kind.as_str());
    out.push_str("\",\"record\":");
    out.push_str(record);
    out.push_str(",\"data\":");
    out.push_str(record);
    out.push_str(",\"changed_fields\":");
    out.push_str(&serde_json::to_string(changed).expect("strings always serialize"));
    out.push('}');
    out
}
