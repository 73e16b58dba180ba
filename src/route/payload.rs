//! The Archie payload: `id, timestamp, project_id, environment, table, event, record, data,
//! changed_fields`, in that order, as compact JSON. `data` is byte-for-byte the same as `record`.
//!
//! Guarantees:
//! - no payload exceeds the context's `max_payload_bytes` (short of a key that alone does). A
//!   change that would is delivered with an `oversize` object after `changed_fields` naming the
//!   limit, the full size where known, and every column left out with its size; `record` then
//!   keeps what fits (all but the omitted columns, or only the key);
//! - a column of the table that the server does not publish (a generated column before
//!   PostgreSQL 18) is never silently missing: an `omitted` array after `changed_fields` lists
//!   each such column (narrowed by `select`) as `{"column": …, "reason":
//!   "generated_not_published"}`, so `record` differs from `to_jsonb(row)` only where the
//!   payload says so.

use serde_json::{Map, Value};

use crate::model::change::{rfc3339_from_pg_micros, OmitReason, RowChange};

/// Project-wide fields, JSON-escaped once.
#[derive(Debug, Clone, Default)]
pub struct PayloadContext {
    project_id: String,
    environment: String,
    /// `[delivery] max_payload_bytes`; `usize::MAX` when unset.
    max_payload_bytes: usize,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

impl PayloadContext {
    pub fn new(project_id: &str, environment: &str) -> Self {
        PayloadContext {
            project_id: json_str(project_id),
            environment: json_str(environment),
            max_payload_bytes: usize::MAX,
        }
    }

    pub fn with_limit(mut self, max_payload_bytes: usize) -> Self {
        self.max_payload_bytes = max_payload_bytes;
        self
    }
}

/// How a payload names its event: `id` and `event` (`INSERT`, …, or `READ` for a backfilled row).
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub id: &'a str,
    pub event: &'a str,
}

/// `body` as is when it fits and nothing was left out; otherwise with the `omitted` list of
/// unpublished columns and/or the explicit oversize form (see the module doc).
pub fn bounded(
    ctx: &PayloadContext,
    head: Head<'_>,
    change: &RowChange,
    body: String,
    changed: &[&str],
    select: Option<&[String]>,
) -> String {
    if change.omitted.is_empty() && body.len() <= ctx.max_payload_bytes {
        return body;
    }
    let selected = |c: &str| select.is_none_or(|s| s.iter().any(|x| x == c));
    let unpublished: Vec<&str> = change
        .omitted
        .iter()
        .filter(|o| o.reason == OmitReason::GeneratedNotPublished && selected(&o.column))
        .map(|o| o.column.as_str())
        .collect();
    let with_unpublished = |mut out: String| {
        if !unpublished.is_empty() {
            out.pop(); // the closing brace
            out.push_str(",\"omitted\":");
            let list: Vec<serde_json::Value> = unpublished
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "column": c,
                        "reason": OmitReason::GeneratedNotPublished.code(),
                    })
                })
                .collect();
            out.push_str(&serde_json::to_string(&list).expect("JSON values always serialize"));
            out.push('}');
        }
        out
    };
    let mut omitted: Vec<(String, usize)> = change
        .omitted
        .iter()
        .filter_map(|o| match o.reason {
            OmitReason::TooLarge { bytes } => Some((o.column.clone(), bytes)),
            OmitReason::GeneratedNotPublished => None,
        })
        .collect();
    let body = with_unpublished(body);
    if omitted.is_empty() && body.len() <= ctx.max_payload_bytes {
        return body;
    }
    let (body, full) = if body.len() <= ctx.max_payload_bytes {
        (body, None)
    } else {
        // Only the key stays; every other column goes, with the size of its JSON.
        let key: Vec<&str> = change
            .shape
            .key_columns
            .iter()
            .filter_map(|&i| change.shape.columns.get(i).map(String::as_str))
            .collect();
        let mut record = Map::new();
        for (k, v) in &change.record {
            if !selected(k) {
                continue;
            }
            if key.contains(&k.as_str()) {
                record.insert(k.clone(), v.clone());
            } else {
                let size = serde_json::to_string(v).map_or(0, |s| s.len());
                omitted.push((k.clone(), size));
            }
        }
        let rec = serde_json::to_string(&record).expect("JSON values always serialize");
        (
            with_unpublished(build_payload(ctx, head, change, &rec, changed)),
            Some(body.len()),
        )
    };
    let mut out = body;
    out.pop(); // the closing brace
    out.push_str(",\"oversize\":");
    out.push_str(
        &serde_json::json!({
            "limit_bytes": ctx.max_payload_bytes,
            "payload_bytes": full,
            "omitted_columns": omitted
                .iter()
                .map(|(c, b)| serde_json::json!({"column": c, "bytes": b}))
                .collect::<Vec<_>>(),
        })
        .to_string(),
    );
    out.push('}');
    out
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

/// The payload of `change` named by `head`, with `record` (already narrowed) as `record` and
/// `data`.
pub fn build_payload(
    ctx: &PayloadContext,
    head: Head<'_>,
    change: &RowChange,
    record: &str,
    changed: &[&str],
) -> String {
    let table = json_str(&change.shape.table.display_name());
    let event_id = head.id;
    // Sized for the whole payload (the field names, a timestamp and each quoted changed
    // field), so it is written without a reallocation.
    let size = 160
        + event_id.len()
        + ctx.project_id.len()
        + ctx.environment.len()
        + table.len()
        + 2 * record.len()
        + changed.iter().map(|c| c.len() + 3).sum::<usize>();
    let mut out = String::with_capacity(size);
    out.push_str("{\"id\":\"");
    out.push_str(event_id);
    out.push_str("\",\"timestamp\":\"");
    out.push_str(&rfc3339_from_pg_micros(change.commit_ts));
    out.push_str("\",\"project_id\":");
    out.push_str(&ctx.project_id);
    out.push_str(",\"environment\":");
    out.push_str(&ctx.environment);
    out.push_str(",\"table\":");
    out.push_str(&table);
    out.push_str(",\"event\":\"");
    out.push_str(head.event);
    out.push_str("\",\"record\":");
    out.push_str(record);
    out.push_str(",\"data\":");
    out.push_str(record);
    out.push_str(",\"changed_fields\":");
    out.push_str(&serde_json::to_string(changed).expect("strings always serialize"));
    out.push('}');
    out
}

/// A `RESYNC` marker's payload (see [`super::Router::resync_markers`]).
pub(crate) fn marker(
    ctx: &PayloadContext,
    event_id: &str,
    commit_ts: i64,
    table: &crate::model::TableName,
    resync: &str,
) -> String {
    format!(
        "{{\"id\":{},\"timestamp\":\"{}\",\"project_id\":{},\"environment\":{},\"table\":{},\
         \"event\":\"RESYNC\",\"record\":{{}},\"data\":{{}},\"changed_fields\":[],\"resync\":{}}}",
        json_str(event_id),
        rfc3339_from_pg_micros(commit_ts),
        ctx.project_id,
        ctx.environment,
        json_str(&table.display_name()),
        resync
    )
}
