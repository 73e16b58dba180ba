//! Routing: which subscriptions receive a row change, and the exact payload each one gets.
//!
//! Guarantees:
//! - a change goes to every active subscription whose table and events match and whose filter
//!   holds on the record (for DELETE, the row before deletion);
//! - `select` narrows `record`, `data` and `changed_fields`; an UPDATE that changed none of the
//!   selected columns is not sent to that subscription;
//! - the payload is built here, once per (change, subscription), and is the exact byte string
//!   that will be stored, signed and sent;
//! - routing is pure: no I/O, no clock; the same change always yields the same payloads.

mod payload;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::config::Config;
use crate::model::{read_event_id, EventKind, RowChange, Subscription, TableName, TableShape};

use payload::build_payload;
pub use payload::PayloadContext;

/// A subscription that names columns its table does not have, or does not stream.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{}", self.describe())]
pub struct UnknownColumn {
    pub subscription: String,
    pub table: String,
    pub column: String,
    /// `"filter"` or `"select"`: the field at fault.
    pub used_in: &'static str,
    pub available: String,
    /// The column exists, but is generated and not sent by this server's pgoutput.
    pub generated: bool,
}

impl UnknownColumn {
    fn describe(&self) -> String {
        let UnknownColumn {
            subscription,
            table,
            column,
            used_in,
            available,
            ..
        } = self;
        if self.generated {
            format!(
                "subscription {subscription:?}: column {column:?} of table {table} (used in \
                 {used_in}) is a generated column, which this server's logical replication does \
                 not send (stored generated columns from PostgreSQL 18 on, virtual ones never), \
                 so changes never carry it; use the columns it is computed from instead: \
                 {available}"
            )
        } else {
            format!(
                "subscription {subscription:?}: table {table} has no column {column:?} (used in \
                 {used_in}); its columns are: {available}"
            )
        }
    }
}

/// Every column named by the subscription's filter or select must be one the table streams;
/// `unpublished` names its generated columns that are not streamed, for the error.
pub fn check_columns(
    sub: &Subscription,
    columns: &[String],
    unpublished: &[String],
) -> Result<(), UnknownColumn> {
    let known: BTreeSet<&str> = columns.iter().map(String::as_str).collect();
    let filter_cols = sub
        .filter
        .iter()
        .flat_map(|f| f.columns())
        .map(|c| (c, "filter"));
    let select_cols = sub.select.iter().flatten().map(|c| (c.as_str(), "select"));
    for (column, used_in) in filter_cols.chain(select_cols) {
        if !known.contains(column) {
            return Err(UnknownColumn {
                subscription: sub.id.clone(),
                table: sub.table.to_string(),
                column: column.to_string(),
                used_in,
                available: columns.join(", "),
                generated: unpublished.iter().any(|c| c == column),
            });
        }
    }
    Ok(())
}

/// A payload ready for the outbox (or for `walhook tail`).
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub subscription: Arc<str>,
    pub event_id: String,
    pub event: EventKind,
    /// Ordering key: the primary-key values as a JSON array; empty for a table without one.
    pub key: String,
    /// The exact JSON body.
    pub body: String,
}

#[derive(Debug, Default, Clone)]
pub struct Router {
    /// Shared: ingest, the reloader and the partition task each hold the router, and a clone
    /// must not copy thousands of subscriptions.
    by_table: Arc<HashMap<TableName, Vec<Entry>>>,
    ctx: PayloadContext,
}

/// A subscription with its id shared by every payload routed to it (cloning an `Arc<str>` per
/// payload instead of allocating a string).
#[derive(Debug, Clone)]
struct Entry {
    id: Arc<str>,
    sub: Subscription,
}

impl Router {
    pub fn new(ctx: PayloadContext, subs: impl IntoIterator<Item = Subscription>) -> Router {
        let mut by_table: HashMap<TableName, Vec<Entry>> = HashMap::new();
        for sub in subs {
            by_table.entry(sub.table.clone()).or_default().push(Entry {
                id: Arc::from(sub.id.as_str()),
                sub,
            });
        }
        Router {
            by_table: Arc::new(by_table),
            ctx,
        }
    }

    /// The router for `subs` with the config's project fields.
    pub fn with_project(config: &Config, subs: impl IntoIterator<Item = Subscription>) -> Router {
        Router::new(
            PayloadContext::new(
                config.project.id.as_str(),
                config.project.environment.as_str(),
            )
            .with_limit(config.delivery.max_payload_bytes),
            subs,
        )
    }

    /// The router for the config file's subscriptions, with its project fields.
    pub fn for_config(config: &Config) -> Router {
        Router::with_project(config, config.subscriptions().cloned())
    }

    /// Tables with at least one subscription (active or not: pausing must not unpublish).
    pub fn tables(&self) -> Vec<TableName> {
        let mut t: Vec<TableName> = self.by_table.keys().cloned().collect();
        t.sort();
        t
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = &Subscription> {
        self.by_table.values().flatten().map(|e| &e.sub)
    }

    /// Keeps only the named subscription; false when there is none by that id.
    pub fn retain_only(&mut self, id: &str) -> bool {
        let by_table = Arc::make_mut(&mut self.by_table);
        for routes in by_table.values_mut() {
            routes.retain(|e| e.sub.id == id);
        }
        by_table.retain(|_, r| !r.is_empty());
        !self.by_table.is_empty()
    }

    /// Checks filter/select columns of every route on `table` against its columns.
    pub fn validate_table(
        &self,
        table: &TableName,
        columns: &[String],
        unpublished: &[String],
    ) -> Result<(), UnknownColumn> {
        for e in self.by_table.get(table).into_iter().flatten() {
            check_columns(&e.sub, columns, unpublished)?;
        }
        Ok(())
    }

    pub fn is_routed(&self, table: &TableName) -> bool {
        self.by_table.contains_key(table)
    }

    /// Appends one [`Routed`] per matching subscription to `out`.
    pub fn route(&self, change: &RowChange, out: &mut Vec<Routed>) {
        self.route_named(change, Naming::Stream, out);
    }

    /// Routes an existing row that backfill `backfill` read, given as an INSERT: it goes where
    /// that INSERT would, as a `READ` event whose id is stable for (backfill, primary key)
    /// ([`crate::model::read_event_id`]), so a chunk read again sends the same ids.
    pub fn route_read(&self, change: &RowChange, backfill: i64, out: &mut Vec<Routed>) {
        self.route_named(change, Naming::Read { backfill }, out);
    }

    fn route_named(&self, change: &RowChange, naming: Naming, out: &mut Vec<Routed>) {
        let Some(routes) = self.by_table.get(&change.shape.table) else {
            return;
        };
        // The key and the event id, once per change (not per subscription).
        let mut named: Option<(String, String)> = None;
        let mut full_record: Option<String> = None;
        for Entry { id, sub: r } in routes {
            if !r.active || !r.wants(change.kind) {
                continue;
            }
            if let Some(f) = &r.filter {
                if !f.matches(&change.record) {
                    continue;
                }
            }
            let changed: Vec<&str> =
                changed_names(&change.shape, &change.changed, r.select.as_deref());
            if change.kind == EventKind::Update && r.select.is_some() && changed.is_empty() {
                continue;
            }
            let (key, event_id) = named.get_or_insert_with(|| {
                let key = row_key(change);
                let id = match naming {
                    Naming::Stream => change.event_id(),
                    Naming::Read { backfill } => read_event_id(backfill, &key),
                };
                (key, id)
            });
            let head = payload::Head {
                id: event_id,
                event: naming.event(change.kind),
            };
            let body = match &r.select {
                None => {
                    let rec = full_record
                        .get_or_insert_with(|| payload::record_json(&change.record, None));
                    build_payload(&self.ctx, head, change, rec, &changed)
                }
                Some(cols) => {
                    let rec = payload::record_json(&change.record, Some(cols));
                    build_payload(&self.ctx, head, change, &rec, &changed)
                }
            };
            let body =
                payload::bounded(&self.ctx, head, change, body, &changed, r.select.as_deref());
            out.push(Routed {
                subscription: id.clone(),
                event_id: event_id.clone(),
                event: change.kind,
                key: key.clone(),
                body,
            });
        }
    }
}

/// How routed payloads name their event (see [`Router::route_read`]).
#[derive(Debug, Clone, Copy)]
enum Naming {
    Stream,
    Read { backfill: i64 },
}

impl Naming {
    /// The payload's `event`: the change's own kind, or `READ` for a backfilled row.
    fn event(self, kind: EventKind) -> &'static str {
        match self {
            Naming::Stream => kind.as_str(),
            Naming::Read { .. } => "READ",
        }
    }
}

impl Router {
    /// One `RESYNC` marker per active subscription, for a recovery of the slot (issue #18):
    /// the Archie payload's fields with `event` `RESYNC`, `record` and `data` empty objects (as a PING's),
    /// `changed_fields` empty, and `resync` (the recovery's JSON object: why, and since which
    /// checkpoint changes are missing) after them. The ordering key is empty: a marker belongs
    /// to no row.
    pub fn resync_markers(&self, event_id: &str, commit_ts: i64, resync: &str) -> Vec<Routed> {
        let mut out = Vec::new();
        let mut tables: Vec<&TableName> = self.by_table.keys().collect();
        tables.sort();
        for table in tables {
            for Entry { id, sub } in &self.by_table[table] {
                if !sub.active {
                    continue;
                }
                out.push(Routed {
                    subscription: id.clone(),
                    event_id: event_id.to_string(),
                    // Stored as `RESYNC`; the kind is not used for a marker.
                    event: EventKind::Insert,
                    key: String::new(),
                    body: payload::marker(&self.ctx, event_id, commit_ts, table, resync),
                });
            }
        }
        out
    }
}

fn changed_names<'a>(
    shape: &'a TableShape,
    changed: &[usize],
    select: Option<&[String]>,
) -> Vec<&'a str> {
    changed
        .iter()
        .filter_map(|i| shape.columns.get(*i))
        .map(String::as_str)
        .filter(|c| select.is_none_or(|s| s.iter().any(|x| x == c)))
        .collect()
}

/// The primary-key values as a JSON array, so that deliveries of one row can be kept in order.
fn row_key(change: &RowChange) -> String {
    if change.shape.key_columns.is_empty() {
        return String::new();
    }
    let vals: Vec<&serde_json::Value> = change
        .shape
        .key_columns
        .iter()
        .filter_map(|i| change.shape.columns.get(*i))
        .map(|c| change.record.get(c).unwrap_or(&serde_json::Value::Null))
        .collect();
    serde_json::to_string(&vals).unwrap_or_default()
}

#[cfg(test)]
mod tests;
