//! The decode stage: pgoutput messages → committed [`RowChange`]s with JSON records.
//!
//! Guarantees:
//! - the relation cache follows the stream: a Relation message (sent before the first change of a
//!   table and again after ALTER TABLE) replaces the table's columns and types before any later
//!   change of it is decoded;
//! - ordinals count every row change of a transaction in stream order, so ids are deterministic;
//! - ARCHITECTURE.md invariant 6: an unchanged-TOAST column in an UPDATE's new tuple is filled from the
//!   old tuple (REPLICA IDENTITY FULL sends it); if the old value is not available the column is
//!   left out of the record and reported with an error log, never invented as `null`;
//! - a Relation message is completed from the catalog (key, types, unpublished generated
//!   columns) only once the transaction being decoded is visible to the catalog read: the
//!   server may send a transaction before its commit is visible to other sessions;
//! - a change for a relation that was never described is an error (the stream is corrupt), not a
//!   silent drop;
//! - composite types follow `ALTER TYPE`: a Relation message re-reads the composites its columns
//!   use, and a row whose composite value does not fit the cached attributes makes [`decode`]
//!   re-read them (at most once per relation and transaction) and decode the row again; a value
//!   that still does not fit is sent as its text, with a warning. A row also re-reads them when
//!   they were read over 30 s ago (a RENAME ATTRIBUTE keeps the count). Type information is read
//!   only at those moments, never per row.
//!
//! [`decode`]: ChangeDecoder::decode

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio_postgres::Client;
use tracing::{debug, error, info, warn};

use super::error::SourceError;
use super::pgoutput::{self, Message, OldTuple, Relation, Tuple, TupleValue};
use super::types::{TypeKind, TypeResolver};
use super::values::render;
use crate::model::change::{OmitReason, Omitted, RowChange, TableShape};
use crate::model::Lsn;
use crate::model::{EventKind, TableName};

struct RelationEntry {
    shape: Arc<TableShape>,
    kinds: Vec<TypeKind>,
    type_oids: Vec<u32>,
    /// When its composite column types were last read; `None` without composite columns.
    composites_read: Option<Instant>,
    /// Generated columns of the table that the Relation message left out (pgoutput does not
    /// publish them on this server): every change of it says they are omitted.
    not_published: Vec<String>,
}

/// How long composite attributes are trusted before a row re-reads them: an `ALTER TYPE …
/// RENAME ATTRIBUTE` keeps the field count, so only this bounds how long old names are used.
const COMPOSITE_TTL: Duration = Duration::from_secs(30);

/// What one pgoutput message meant for the pipeline.
#[derive(Debug)]
pub enum Decoded {
    Begin {
        final_lsn: Lsn,
        commit_ts: i64,
        xid: u32,
    },
    Change(RowChange),
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: i64,
    },
    /// A transactional logical message (`pg_logical_emit_message(true, …)`), in its
    /// transaction's place in the stream (backfill watermarks).
    Message {
        prefix: String,
        content: Bytes,
    },
    /// Relation, Type, Origin, Truncate, non-transactional logical messages: nothing to route.
    Other,
}

/// A logical message: transactional ones keep their place in the stream; the others arrive
/// outside any transaction, have no commit position, and are not passed on.
fn logical_message(transactional: bool, prefix: &str, content: &Bytes) -> Decoded {
    if !transactional {
        return Decoded::Other;
    }
    Decoded::Message {
        prefix: prefix.to_string(),
        content: content.clone(),
    }
}

struct Tx {
    xid: u32,
    final_lsn: Lsn,
    commit_ts: i64,
    ordinal: u32,
    /// Relations whose composite types were re-read (or found stale) in this transaction.
    refreshed: HashSet<u32>,
}

/// What applying a message came to: done, or a row that needs fresher composite types.
enum Step {
    Done(Decoded),
    StaleTypes(u32),
}

pub struct ChangeDecoder {
    relations: HashMap<u32, RelationEntry>,
    types: TypeResolver,
    tx: Option<Tx>,
    warned_no_old: HashSet<u32>,
    /// Values above this size are left out of records (see [`ChangeDecoder::limit_values`]).
    max_value_bytes: usize,
}

impl Default for ChangeDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChangeDecoder {
    pub fn new() -> Self {
        ChangeDecoder {
            relations: HashMap::new(),
            types: TypeResolver::new(),
            tx: None,
            warned_no_old: HashSet::new(),
            max_value_bytes: usize::MAX,
        }
    }

    /// Values larger than `bytes` (in the server's text form) are left out of records and
    /// listed in [`RowChange::omitted`], without being converted: a 300 MB bytea costs its
    /// received bytes once, not several copies.
    pub fn limit_values(&mut self, bytes: usize) {
        self.max_value_bytes = bytes;
    }

    /// The table's current shape, if the stream has described it.
    pub fn shape(&self, relation_id: u32) -> Option<Arc<TableShape>> {
        self.relations.get(&relation_id).map(|r| r.shape.clone())
    }

    /// Decodes one XLogData payload. `client` is a regular SQL connection used only when a
    /// Relation message brings type or key information we do not have yet.
    pub async fn decode(&mut self, client: &Client, data: Bytes) -> Result<Decoded, SourceError> {
        match pgoutput::decode(data).map_err(|e| SourceError::Decode(e.to_string()))? {
            Message::Relation(rel) => {
                // The catalog must show this transaction's own DDL (a column added with the
                // change being decoded) before it is read.
                if let Some(tx) = &self.tx {
                    super::fidelity::wait_visible(client, tx.xid).await?;
                }
                // Unknown types, and composites (ALTER TYPE sends no message of its own).
                let oids: Vec<u32> = rel
                    .columns
                    .iter()
                    .map(|c| c.type_oid)
                    .filter(|o| self.types.get(*o).is_none_or(TypeKind::has_composite))
                    .collect();
                if !oids.is_empty() {
                    self.types.refresh(client, &oids).await?;
                }
                let pk = super::setup::primary_key(client, rel.id).await?;
                let published: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
                let generated =
                    super::fidelity::unpublished_generated(client, rel.id, &published).await?;
                let id = rel.id;
                self.install_relation(rel, &pk);
                self.set_not_published(id, generated);
                Ok(Decoded::Other)
            }
            other => {
                self.refresh_if_old(client, &other).await?;
                self.decode_row(client, other).await
            }
        }
    }

    /// Re-reads a row's relation's composite types when they were read over [`COMPOSITE_TTL`] ago.
    async fn refresh_if_old(&mut self, client: &Client, msg: &Message) -> Result<(), SourceError> {
        let id = match msg {
            Message::Insert { relation_id, .. }
            | Message::Update { relation_id, .. }
            | Message::Delete { relation_id, .. } => *relation_id,
            _ => return Ok(()),
        };
        let old = self
            .relations
            .get(&id)
            .and_then(|r| r.composites_read)
            .is_some_and(|t| t.elapsed() >= COMPOSITE_TTL);
        if old {
            self.refresh_relation(client, id).await?;
        }
        Ok(())
    }

    async fn decode_row(
        &mut self,
        client: &Client,
        other: Message,
    ) -> Result<Decoded, SourceError> {
        match self.step(&other, true)? {
            Step::Done(d) => Ok(d),
            Step::StaleTypes(relation_id) => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.refreshed.insert(relation_id);
                }
                info!(relation_id, "a composite value does not fit its type's cached attributes; re-reading the type");
                self.refresh_relation(client, relation_id).await?;
                match self.step(&other, false)? {
                    Step::Done(d) => Ok(d),
                    Step::StaleTypes(_) => unreachable!("no retry requested"),
                }
            }
        }
    }

    /// Re-reads a relation's composite column types and rebuilds its kinds.
    async fn refresh_relation(
        &mut self,
        client: &Client,
        relation_id: u32,
    ) -> Result<(), SourceError> {
        let Some(rel) = self.relations.get(&relation_id) else {
            return Ok(());
        };
        let oids = rel.type_oids.clone();
        self.types.refresh(client, &oids).await?;
        let kinds = self.kinds_of(&oids);
        if let Some(rel) = self.relations.get_mut(&relation_id) {
            rel.composites_read = read_at(&kinds);
            rel.kinds = kinds;
        }
        Ok(())
    }

    fn kinds_of(&self, oids: &[u32]) -> Vec<TypeKind> {
        oids.iter()
            .map(|o| self.types.get(*o).cloned().unwrap_or(TypeKind::Text))
            .collect()
    }

    /// The type resolver, e.g. to describe composite types without a database (benchmarks).
    pub fn types_mut(&mut self) -> &mut TypeResolver {
        &mut self.types
    }

    /// Replaces the cached shape of a relation. Types must already be known to the resolver
    /// (built-ins always are); unknown ones are rendered as text.
    pub fn install_relation(&mut self, rel: Relation, primary_key: &[String]) {
        let type_oids: Vec<u32> = rel.columns.iter().map(|c| c.type_oid).collect();
        let kinds = self.kinds_of(&type_oids);
        let columns: Vec<String> = rel.columns.iter().map(|c| c.name.clone()).collect();
        let key_columns = primary_key
            .iter()
            .filter_map(|k| columns.iter().position(|c| c == k))
            .collect();
        let table = TableName {
            schema: rel.namespace,
            name: rel.name,
        };
        match self.relations.get(&rel.id) {
            Some(prev) if prev.shape.columns != columns => {
                info!(table = %table, before = ?prev.shape.columns, after = ?columns, "table columns changed");
            }
            Some(_) => {}
            None => debug!(table = %table, relation_id = rel.id, "relation described"),
        }
        self.relations.insert(
            rel.id,
            RelationEntry {
                shape: Arc::new(TableShape {
                    table,
                    columns,
                    key_columns,
                }),
                composites_read: read_at(&kinds),
                kinds,
                type_oids,
                not_published: Vec::new(),
            },
        );
    }

    /// Names the generated columns of a relation that pgoutput leaves out, so each of its
    /// changes lists them under [`RowChange::omitted`]; replaced by the next Relation message.
    pub fn set_not_published(&mut self, relation_id: u32, columns: Vec<String>) {
        if let Some(rel) = self.relations.get_mut(&relation_id) {
            rel.not_published = columns;
        }
    }

    /// Applies any message but Relation (which needs the catalog: see [`ChangeDecoder::decode`]).
    /// Composite values that do not fit their cached types are sent as text.
    pub fn apply(&mut self, msg: Message) -> Result<Decoded, SourceError> {
        match self.step(&msg, false)? {
            Step::Done(d) => Ok(d),
            Step::StaleTypes(_) => unreachable!("no retry requested"),
        }
    }

    /// `retry`: answer [`Step::StaleTypes`] (changing nothing) for a row whose composite values
    /// do not fit, unless the relation was already refreshed in this transaction.
    fn step(&mut self, msg: &Message, retry: bool) -> Result<Step, SourceError> {
        Ok(Step::Done(match msg {
            &Message::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => {
                self.tx = Some(Tx {
                    xid,
                    final_lsn,
                    commit_ts,
                    ordinal: 0,
                    refreshed: HashSet::new(),
                });
                Decoded::Begin {
                    final_lsn,
                    commit_ts,
                    xid,
                }
            }
            &Message::Commit {
                commit_lsn,
                end_lsn,
                commit_ts,
                ..
            } => {
                self.tx = None;
                Decoded::Commit {
                    commit_lsn,
                    end_lsn,
                    commit_ts,
                }
            }
            Message::Relation(rel) => {
                return Err(SourceError::Decode(format!(
                    "Relation message for {}.{} needs the catalog; use decode()",
                    rel.namespace, rel.name
                )))
            }
            Message::Insert { relation_id, new } => {
                match self.change(*relation_id, EventKind::Insert, None, Some(new), retry)? {
                    Some(c) => Decoded::Change(c),
                    None => return Ok(Step::StaleTypes(*relation_id)),
                }
            }
            Message::Update {
                relation_id,
                old,
                new,
            } => match self.change(
                *relation_id,
                EventKind::Update,
                old.as_ref(),
                Some(new),
                retry,
            )? {
                Some(c) => Decoded::Change(c),
                None => return Ok(Step::StaleTypes(*relation_id)),
            },
            Message::Delete { relation_id, old } => {
                match self.change(*relation_id, EventKind::Delete, Some(old), None, retry)? {
                    Some(c) => Decoded::Change(c),
                    None => return Ok(Step::StaleTypes(*relation_id)),
                }
            }
            Message::Truncate { relation_ids, .. } => {
                warn!(?relation_ids, "TRUNCATE is not delivered as webhooks");
                Decoded::Other
            }
            Message::LogicalMessage {
                transactional,
                prefix,
                content,
                ..
            } => logical_message(*transactional, prefix, content),
            Message::Type { .. } | Message::Origin { .. } => Decoded::Other,
        }))
    }

    /// The row change, or `None` (with nothing changed) when `retry` is asked and a composite
    /// value did not fit its cached type.
    fn change(
        &mut self,
        relation_id: u32,
        kind: EventKind,
        old: Option<&OldTuple>,
        new: Option<&Tuple>,
        retry: bool,
    ) -> Result<Option<RowChange>, SourceError> {
        let tx = self.tx.as_mut().ok_or_else(|| {
            SourceError::Decode(format!("{} outside a transaction", kind.as_str()))
        })?;
        let retry = retry && !tx.refreshed.contains(&relation_id);
        let rel = self.relations.get(&relation_id).ok_or_else(|| {
            SourceError::Decode(format!(
                "{} for relation {relation_id} that was never described",
                kind.as_str()
            ))
        })?;
        let old_full = match old {
            Some(OldTuple::Full(t)) => Some(t),
            _ => None,
        };
        let mut stale = false;
        let mut omitted = Vec::new();
        let limit = self.max_value_bytes;
        let (record, changed) = match (kind, new) {
            (EventKind::Delete, _) => {
                let old_t = match old {
                    Some(OldTuple::Full(t)) | Some(OldTuple::Key(t)) => t,
                    None => return Err(SourceError::Decode("DELETE without an old tuple".into())),
                };
                let record = to_record(rel, old_t, None, true, &mut stale, limit, &mut omitted);
                if stale && retry {
                    return Ok(None);
                }
                if matches!(old, Some(OldTuple::Key(_))) {
                    warn_no_old(&mut self.warned_no_old, relation_id, &rel.shape.table);
                }
                (record, Vec::new())
            }
            (_, Some(new_t)) => {
                let record = to_record(
                    rel,
                    new_t,
                    old_full,
                    kind == EventKind::Update && old_full.is_none(),
                    &mut stale,
                    limit,
                    &mut omitted,
                );
                if stale && retry {
                    return Ok(None);
                }
                let changed = if kind == EventKind::Update {
                    match old_full {
                        Some(o) => changed_columns(o, new_t),
                        None => {
                            warn_no_old(&mut self.warned_no_old, relation_id, &rel.shape.table);
                            (0..new_t.0.len()).collect()
                        }
                    }
                } else {
                    Vec::new()
                };
                (record, changed)
            }
            (_, None) => {
                return Err(SourceError::Decode(format!(
                    "{} without a new tuple",
                    kind.as_str()
                )))
            }
        };
        let tx = self.tx.as_mut().expect("checked above");
        if stale && tx.refreshed.insert(relation_id) {
            warn!(table = %rel.shape.table, "a composite value does not fit its type's attributes \
                  as the catalog now has them (the type was altered after this change was written); \
                  such values are sent as their text");
        }
        omitted.extend(rel.not_published.iter().map(|c| Omitted {
            column: c.clone(),
            reason: OmitReason::GeneratedNotPublished,
        }));
        let ordinal = tx.ordinal;
        tx.ordinal += 1;
        Ok(Some(RowChange {
            commit_lsn: tx.final_lsn,
            commit_ts: tx.commit_ts,
            ordinal,
            shape: rel.shape.clone(),
            kind,
            record,
            changed,
            omitted,
        }))
    }
}

fn read_at(kinds: &[TypeKind]) -> Option<Instant> {
    kinds.iter().any(TypeKind::has_composite).then(Instant::now)
}

fn warn_no_old(warned: &mut HashSet<u32>, relation_id: u32, table: &TableName) {
    if warned.insert(relation_id) {
        warn!(table = %table, "no full old row in the stream (REPLICA IDENTITY is not FULL): \
               DELETE records hold only key columns and UPDATE changed_fields lists every column");
    }
}

fn to_record(
    rel: &RelationEntry,
    t: &Tuple,
    old: Option<&Tuple>,
    toast_unknown_expected: bool,
    stale: &mut bool,
    limit: usize,
    omitted: &mut Vec<Omitted>,
) -> Map<String, Value> {
    let mut m = Map::with_capacity(t.0.len());
    for (i, v) in t.0.iter().enumerate() {
        let (Some(name), Some(kind)) = (rel.shape.columns.get(i), rel.kinds.get(i)) else {
            break;
        };
        let v = match v {
            TupleValue::UnchangedToast => match old.and_then(|o| o.0.get(i)) {
                Some(ov) if !matches!(ov, TupleValue::UnchangedToast) => ov,
                _ => {
                    error!(table = %rel.shape.table, column = %name, expected = toast_unknown_expected,
                           "unchanged TOAST value not available from the old row; column left out of the record");
                    continue;
                }
            },
            other => other,
        };
        if let TupleValue::Text(b) | TupleValue::Binary(b) = v {
            if b.len() > limit {
                warn!(table = %rel.shape.table, column = %name, bytes = b.len(), limit,
                      "value larger than delivery.max_payload_bytes: left out of the payload, which says so");
                omitted.push(Omitted {
                    column: name.clone(),
                    reason: OmitReason::TooLarge { bytes: b.len() },
                });
                continue;
            }
        }
        m.insert(name.clone(), value_json(kind, v, stale));
    }
    m
}

fn value_json(kind: &TypeKind, v: &TupleValue, stale: &mut bool) -> Value {
    match v {
        TupleValue::Null => Value::Null,
        TupleValue::Text(b) => match std::str::from_utf8(b) {
            Ok(s) => render(kind, s, stale),
            Err(_) => Value::String(String::from_utf8_lossy(b).into_owned()),
        },
        // We never ask for binary; should a server send it, keep the bytes visible, not lost.
        TupleValue::Binary(b) => Value::String(format!("\\x{}", hex::encode(b))),
        TupleValue::UnchangedToast => Value::Null,
    }
}

fn changed_columns(old: &Tuple, new: &Tuple) -> Vec<usize> {
    new.0
        .iter()
        .enumerate()
        .filter(|(i, n)| match (old.0.get(*i), n) {
            (_, TupleValue::UnchangedToast) => false,
            (Some(o), n) => o != *n,
            (None, _) => true,
        })
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(vals: &[Option<&str>]) -> Tuple {
        Tuple(
            vals.iter()
                .map(|v| match v {
                    None => TupleValue::Null,
                    Some("<toast>") => TupleValue::UnchangedToast,
                    Some(s) => TupleValue::Text(Bytes::copy_from_slice(s.as_bytes())),
                })
                .collect(),
        )
    }

    fn entry() -> RelationEntry {
        RelationEntry {
            shape: Arc::new(TableShape {
                table: TableName::parse("docs").unwrap(),
                columns: vec!["id".into(), "body".into(), "n".into()],
                key_columns: vec![0],
            }),
            kinds: vec![TypeKind::Integer, TypeKind::Text, TypeKind::Integer],
            type_oids: vec![23, 25, 23],
            composites_read: None,
            not_published: Vec::new(),
        }
    }

    #[test]
    fn unchanged_toast_is_filled_from_old_row_and_not_changed() {
        let old = t(&[Some("1"), Some("big text"), Some("1")]);
        let new = t(&[Some("1"), Some("<toast>"), Some("2")]);
        let rec = to_record(
            &entry(),
            &new,
            Some(&old),
            false,
            &mut false,
            usize::MAX,
            &mut Vec::new(),
        );
        assert_eq!(
            serde_json::to_string(&rec).unwrap(),
            r#"{"id":1,"body":"big text","n":2}"#
        );
        assert_eq!(changed_columns(&old, &new), vec![2]);
    }

    #[test]
    fn unchanged_toast_without_old_row_is_left_out_not_null() {
        let new = t(&[Some("1"), Some("<toast>"), None]);
        let rec = to_record(
            &entry(),
            &new,
            None,
            true,
            &mut false,
            usize::MAX,
            &mut Vec::new(),
        );
        assert_eq!(serde_json::to_string(&rec).unwrap(), r#"{"id":1,"n":null}"#);
    }

    #[test]
    fn null_to_value_and_back_counts_as_changed() {
        let old = t(&[Some("1"), None, Some("1")]);
        let new = t(&[Some("1"), Some(""), Some("1")]);
        assert_eq!(changed_columns(&old, &new), vec![1]);
    }
}
