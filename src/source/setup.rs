//! Preparing the host database: subscribed tables, their replica identity, the publication and
//! the slot.
//!
//! Guarantees (ARCHITECTURE.md invariant 5, "never harm the host database"):
//! - a table is given `REPLICA IDENTITY FULL` *before* it is added to the publication, so there is
//!   no moment at which the app's UPDATE/DELETE on it could fail for lack of a replica identity;
//! - with `manage_replica_identity = false`, a table without FULL is refused with the statement
//!   to run, and nothing is changed;
//! - DDL runs with a short `lock_timeout` and is retried, so walhook never queues the app's
//!   queries behind its own ACCESS EXCLUSIVE lock request for long;
//! - the publication publishes INSERT, UPDATE and DELETE of exactly the subscribed tables
//!   (`remove_extra`), or at least them (`walhook tail`, which must not disturb the daemon).

use std::time::Duration;

use tokio_postgres::Client;
use tracing::{info, warn};

use super::error::SourceError;
use crate::model::Lsn;
use crate::model::{quote_ident, TableName};

#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    pub table: TableName,
    pub oid: u32,
    pub columns: Vec<String>,
    pub primary_key: Vec<String>,
    /// pg_class.relreplident: 'd' default, 'n' nothing, 'f' full, 'i' index.
    pub replica_identity: char,
}

impl TableInfo {
    pub fn replica_identity_name(&self) -> &'static str {
        match self.replica_identity {
            'd' => "DEFAULT",
            'n' => "NOTHING",
            'f' => "FULL",
            'i' => "USING INDEX",
            _ => "UNKNOWN",
        }
    }
}

fn table_err(table: &TableName, reason: String) -> SourceError {
    SourceError::Table {
        table: table.clone(),
        reason,
    }
}

/// Looks up each table's columns, primary key and replica identity; a missing table is an error
/// naming it.
pub async fn describe_tables(
    client: &Client,
    tables: &[TableName],
) -> Result<Vec<TableInfo>, SourceError> {
    let stmt = client
        .prepare(
            "SELECT c.oid, c.relreplident::text, c.relkind::text,
               ARRAY(SELECT a.attname::text FROM pg_attribute a
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                     ORDER BY a.attnum)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
        )
        .await?;
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let row = client
            .query_opt(&stmt, &[&t.schema, &t.name])
            .await?
            .ok_or_else(|| {
                table_err(
                    t,
                    format!("table {t} does not exist in the source database"),
                )
            })?;
        let relkind: String = row.get(2);
        if relkind != "r" && relkind != "p" {
            return Err(table_err(
                t,
                format!("{t} is not a table (relkind {relkind:?}); only tables can be subscribed"),
            ));
        }
        let replident: String = row.get(1);
        let oid: u32 = row.get(0);
        out.push(TableInfo {
            table: t.clone(),
            oid,
            columns: row.get(3),
            primary_key: primary_key(client, oid).await?,
            replica_identity: replident.chars().next().unwrap_or('d'),
        });
    }
    Ok(out)
}

/// The table's primary-key columns in key order; empty when it has none.
pub async fn primary_key(client: &Client, relid: u32) -> Result<Vec<String>, SourceError> {
    Ok(client
        .query(
            "SELECT a.attname::text FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = $1 AND i.indisprimary
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&relid],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Runs one DDL statement with a short lock_timeout, retrying when the lock is not granted.
async fn ddl_with_lock_timeout(client: &Client, sql: &str) -> Result<(), SourceError> {
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=10 {
        let batch = format!("SET lock_timeout = '2s'; {sql}; RESET lock_timeout;");
        match client.batch_execute(&batch).await {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                warn!(
                    attempt,
                    statement = sql,
                    "lock not granted within 2s; retrying so the app is not queued behind walhook"
                );
                let _ = client.batch_execute("RESET lock_timeout").await;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                let _ = client.batch_execute("RESET lock_timeout").await;
                return Err(e.into());
            }
        }
    }
    // A long transaction holds the lock: worth trying again later, not a configuration error.
    Err(SourceError::Timeout(format!(
        "could not take the lock for `{sql}` after 10 attempts; a long transaction holds it"
    )))
}

/// Makes every table REPLICA IDENTITY FULL (manage = true) or refuses the ones that are not.
pub async fn ensure_replica_identity(
    client: &Client,
    tables: &mut [TableInfo],
    manage: bool,
) -> Result<(), SourceError> {
    for t in tables.iter_mut() {
        if t.replica_identity == 'f' {
            continue;
        }
        let stmt = format!("ALTER TABLE {} REPLICA IDENTITY FULL", t.table.quoted());
        if !manage {
            return Err(table_err(&t.table, format!(
                "table {} has REPLICA IDENTITY {}{}; walhook needs FULL for DELETE's full record and UPDATE's changed_fields. \
                 Run `{stmt};` or set source.manage_replica_identity = true",
                t.table,
                t.replica_identity_name(),
                if t.primary_key.is_empty() { " and no primary key" } else { "" },
            )));
        }
        ddl_with_lock_timeout(client, &stmt).await.map_err(|e| {
            if e.is_retryable() {
                return e;
            }
            table_err(&t.table, format!(
                "could not set REPLICA IDENTITY FULL on {}: {e}. Run `{stmt};` as the table's owner",
                t.table
            ))
        })?;
        info!(table = %t.table, previous = t.replica_identity_name(), "set REPLICA IDENTITY FULL");
        t.replica_identity = 'f';
    }
    Ok(())
}

/// Creates the publication if missing and makes its table list equal to (or, without
/// `remove_extra`, a superset of) `tables`.
pub async fn sync_publication(
    client: &Client,
    publication: &str,
    tables: &[TableName],
    remove_extra: bool,
) -> Result<(), SourceError> {
    let pub_q = quote_ident(publication);
    let row = client
        .query_opt(
            "SELECT puballtables, pubinsert AND pubupdate AND pubdelete FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    match row {
        None => {
            let sql =
                format!("CREATE PUBLICATION {pub_q} WITH (publish = 'insert, update, delete')");
            match client.batch_execute(&sql).await {
                Ok(()) => info!(publication, "created publication"),
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Some(r) => {
            let all_tables: bool = r.get(0);
            if all_tables {
                return Err(SourceError::Setup(format!(
                    "publication {publication} is FOR ALL TABLES; walhook manages its own table list. \
                     Set source.publication to a name walhook can own"
                )));
            }
            let publishes_all: bool = r.get(1);
            if !publishes_all {
                client
                    .batch_execute(&format!(
                        "ALTER PUBLICATION {pub_q} SET (publish = 'insert, update, delete')"
                    ))
                    .await?;
                info!(
                    publication,
                    "publication now publishes insert, update, delete"
                );
            }
        }
    }
    let current: Vec<TableName> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .iter()
        .map(|r| TableName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect();
    for t in tables.iter().filter(|t| !current.contains(t)) {
        ddl_with_lock_timeout(
            client,
            &format!("ALTER PUBLICATION {pub_q} ADD TABLE {}", t.quoted()),
        )
        .await?;
        info!(publication, table = %t, "added table to publication");
    }
    if remove_extra {
        for t in current.iter().filter(|t| !tables.contains(t)) {
            ddl_with_lock_timeout(
                client,
                &format!("ALTER PUBLICATION {pub_q} DROP TABLE {}", t.quoted()),
            )
            .await?;
            info!(publication, table = %t, "removed table from publication");
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlotState {
    pub active: bool,
    pub confirmed_flush: Option<Lsn>,
    /// Bytes of WAL the slot keeps: current WAL position − restart_lsn.
    pub retained_bytes: Option<i64>,
}

/// Reads the slot's state; None when it does not exist. Errors if it exists but is not a
/// pgoutput slot of this database.
pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, SourceError> {
    let row = client
        .query_opt(
            "SELECT s.plugin::text, s.database::text, current_database()::text, s.active,
                    s.confirmed_flush_lsn::text,
                    (pg_current_wal_lsn() - s.restart_lsn)::int8
             FROM pg_replication_slots s WHERE s.slot_name = $1",
            &[&slot],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    let plugin: Option<String> = r.get(0);
    let database: Option<String> = r.get(1);
    let current: String = r.get(2);
    if plugin.as_deref() != Some("pgoutput") || database.as_deref() != Some(current.as_str()) {
        return Err(SourceError::Setup(format!(
            "replication slot {slot} exists but is not a pgoutput slot of database {current} \
             (plugin {plugin:?}, database {database:?}); set source.slot to another name"
        )));
    }
    let confirmed: Option<String> = r.get(4);
    Ok(Some(SlotState {
        active: r.get(3),
        confirmed_flush: confirmed.and_then(|s| s.parse().ok()),
        retained_bytes: r.get(5),
    }))
}

/// Creates the pgoutput slot if missing; returns true when it was created.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<bool, SourceError> {
    if slot_state(client, slot).await?.is_some() {
        return Ok(false);
    }
    match client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
    {
        Ok(r) => {
            let lsn: String = r.get(0);
            info!(slot, lsn = %lsn, "created replication slot");
            Ok(true)
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Everything a source needs before streaming: `tables` described and each passed to `check`
/// (the caller's filter/select columns) BEFORE anything is changed, then replica identity made
/// safe and the publication synced.
pub async fn prepare<E: std::fmt::Display>(
    client: &Client,
    tables: &[TableName],
    publication: &str,
    manage_replica_identity: bool,
    remove_extra: bool,
    check: impl Fn(&TableInfo) -> Result<(), E>,
) -> Result<Vec<TableInfo>, SourceError> {
    let mut infos = describe_tables(client, tables).await?;
    for i in &infos {
        check(i).map_err(|reason| table_err(&i.table, reason.to_string()))?;
    }
    ensure_replica_identity(client, &mut infos, manage_replica_identity).await?;
    sync_publication(client, publication, tables, remove_extra).await?;
    Ok(infos)
}
