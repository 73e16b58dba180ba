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

use crate::config::{EventKind, Filter, SubscriptionConfig, TableName};
use crate::model::change::{RowChange, TableShape};
use crate::outbox::subscriptions::StoredSubscription;

pub use payload::{build_payload, PayloadContext};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteError {
    #[error("subscription {subscription:?}: table {table} has no column {column:?} (used in {used_in}); its columns are: {available}")]
    UnknownColumn {
        subscription: String,
        table: String,
        column: String,
        used_in: &'static str,
        available: String,
    },
    #[error("subscription {subscription:?}: {message}")]
    Invalid {
        subscription: String,
        message: String,
    },
}

impl RouteError {
    /// Routing errors come from configuration; retrying does not fix them.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// One subscription, compiled for routing.
#[derive(Debug, Clone)]
pub struct Route {
    pub id: Arc<str>,
    pub table: TableName,
    pub events: [bool; 3],
    pub active: bool,
    pub filter: Option<Filter>,
    pub select: Option<Vec<String>>,
}

impl Route {
    pub fn from_config(s: &SubscriptionConfig) -> Result<Route, RouteError> {
        Route::build(
            s.id.as_str(),
            s.table.as_str(),
            &s.events,
            s.active,
            s.filter.clone(),
            s.select
                .as_ref()
                .map(|v| v.iter().map(|c| c.as_str().to_string()).collect()),
        )
    }

    /// A subscription as stored in the outbox (config.toml's and the API's alike).
    pub fn from_stored(s: &StoredSubscription) -> Result<Route, RouteError> {
        Route::build(
            &s.id,
            &s.table,
            &s.events,
            s.active,
            s.filter.clone(),
            s.select.clone(),
        )
    }

    fn build(
        id: &str,
        table: &str,
        event_kinds: &[EventKind],
        active: bool,
        filter: Option<Filter>,
        select: Option<Vec<String>>,
    ) -> Result<Route, RouteError> {
        let table = TableName::parse(table).map_err(|message| RouteError::Invalid {
            subscription: id.to_string(),
            message,
        })?;
        let mut events = [false; 3];
        for e in event_kinds {
            events[event_index(*e)] = true;
        }
        Ok(Route {
            id: Arc::from(id),
            table,
            events,
            active,
            filter,
            select,
        })
    }

    /// Every column named by filter or select must exist in the table.
    pub fn validate_columns(&self, columns: &[String]) -> Result<(), RouteError> {
        let known: BTreeSet<&str> = columns.iter().map(String::as_str).collect();
        let filter_cols = self
            .filter
            .iter()
            .flat_map(|f| f.columns())
            .map(|c| (c, "filter"));
        let select_cols = self.select.iter().flatten().map(|c| (c.as_str(), "select"));
        for (column, used_in) in filter_cols.chain(select_cols) {
            if !known.contains(column) {
                return Err(RouteError::UnknownColumn {
                    subscription: self.id.to_string(),
                    table: self.table.to_string(),
                    column: column.to_string(),
                    used_in,
                    available: columns.join(", "),
                });
            }
        }
        Ok(())
    }
}

fn event_index(e: EventKind) -> usize {
    match e {
        EventKind::Insert => 0,
        EventKind::Update => 1,
        EventKind::Delete => 2,
    }
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
    by_table: HashMap<TableName, Vec<Route>>,
    ctx: PayloadContext,
}

impl Router {
    pub fn new(ctx: PayloadContext, routes: Vec<Route>) -> Router {
        let mut by_table: HashMap<TableName, Vec<Route>> = HashMap::new();
        for r in routes {
            by_table.entry(r.table.clone()).or_default().push(r);
        }
        Router { by_table, ctx }
    }

    pub fn from_config<'a>(
        ctx: PayloadContext,
        subs: impl IntoIterator<Item = &'a SubscriptionConfig>,
    ) -> Result<Router, RouteError> {
        let routes = subs
            .into_iter()
            .map(Route::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Router::new(ctx, routes))
    }

    /// The router for the stored subscriptions, with the config's project fields.
    pub fn for_stored(
        config: &crate::config::Config,
        subs: &[StoredSubscription],
    ) -> Result<Router, RouteError> {
        let routes = subs
            .iter()
            .map(Route::from_stored)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Router::new(
            PayloadContext::new(
                config.project.id.as_str(),
                config.project.environment.as_str(),
            ),
            routes,
        ))
    }

    /// The router for the config file's subscriptions, with its project fields.
    pub fn for_config(config: &crate::config::Config) -> Result<Router, RouteError> {
        Router::from_config(
            PayloadContext::new(
                config.project.id.as_str(),
                config.project.environment.as_str(),
            ),
            config.subscriptions(),
        )
    }

    /// Tables with at least one subscription (active or not: pausing must not unpublish).
    pub fn tables(&self) -> Vec<TableName> {
        let mut t: Vec<TableName> = self.by_table.keys().cloned().collect();
        t.sort();
        t
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.by_table.values().flatten()
    }

    /// Keeps only the named subscription; false when there is none by that id.
    pub fn retain_only(&mut self, id: &str) -> bool {
        for routes in self.by_table.values_mut() {
            routes.retain(|r| &*r.id == id);
        }
        self.by_table.retain(|_, r| !r.is_empty());
        !self.by_table.is_empty()
    }

    /// Checks filter/select columns of every route on `table` against its columns.
    pub fn validate_table(&self, table: &TableName, columns: &[String]) -> Result<(), RouteError> {
        for r in self.by_table.get(table).into_iter().flatten() {
            r.validate_columns(columns)?;
        }
        Ok(())
    }

    pub fn is_routed(&self, table: &TableName) -> bool {
        self.by_table.contains_key(table)
    }

    /// Appends one [`Routed`] per matching subscription to `out`.
    pub fn route(&self, change: &RowChange, out: &mut Vec<Routed>) {
        let Some(routes) = self.by_table.get(&change.shape.table) else {
            return;
        };
        let idx = event_index(change.kind);
        let mut key: Option<String> = None;
        let mut full_record: Option<String> = None;
        for r in routes {
            if !r.active || !r.events[idx] {
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
            let body = match &r.select {
                None => {
                    let rec = full_record
                        .get_or_insert_with(|| payload::record_json(&change.record, None));
                    build_payload(&self.ctx, change, rec, &changed)
                }
                Some(cols) => {
                    let rec = payload::record_json(&change.record, Some(cols));
                    build_payload(&self.ctx, change, &rec, &changed)
                }
            };
            out.push(Routed {
                subscription: r.id.clone(),
                event_id: change.event_id(),
                event: change.kind,
                key: key.get_or_insert_with(|| row_key(change)).clone(),
                body,
            });
        }
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
