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
//!   (`remove_extra`), or at least them (`walhook tail`, which must not disturb the daemon), and
//!   on PostgreSQL 18+ their stored generated columns too (`publish_generated_columns`); columns
//!   whose values cannot equal `to_jsonb`'s are logged at start ([`super::fidelity`]).

use std::time::Duration;

use tokio_postgres::Client;
use tracing::{info, warn};

use super::error::SourceError;
use super::fidelity::{deviations, GENERATED_COLUMNS_VERSION};
use crate::backoff::Backoff;
use crate::model::Lsn;
use crate::model::{quote_ident, TableName};

#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    pub table: TableName,
    pub oid: u32,
    /// The columns pgoutput sends, in table order.
    pub columns: Vec<String>,
    /// Generated columns pgoutput does not send on this server (stored ones before PostgreSQL
    /// 18, virtual ones always): not in `columns`, named so errors can say why.
    pub unpublished_generated: Vec<String>,
    pub primary_key: Vec<String>,
    /// pg_class.relreplident: 'd' default, 'n' nothing, 'f' full, 'i' index.
    pub replica_identity: char,
    /// A partitioned table's leaf partitions (with their replica identity); empty otherwise.
    /// Their changes are published under this table's name (`publish_via_partition_root`).
    pub partitions: Vec<(TableName, char)>,
    /// Whether walhook's role has the owner's rights (setting REPLICA IDENTITY and adding the
    /// table to a publication are owner-only).
    pub owned: bool,
    pub owner: String,
    /// walhook's own role, for messages.
    pub role: String,
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
                       AND (a.attgenerated = ''
                            OR (a.attgenerated = 's'
                                AND current_setting('server_version_num')::int >= 180000))
                     ORDER BY a.attnum),
               c.relpersistence::text,
               EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid) AND c.relkind = 'r',
               pg_has_role(c.relowner, 'USAGE'), pg_get_userbyid(c.relowner)::text,
               current_user::text,
               ARRAY(SELECT a.attname::text FROM pg_attribute a
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                       AND a.attgenerated <> ''
                       AND NOT (a.attgenerated = 's'
                                AND current_setting('server_version_num')::int >= 180000)
                     ORDER BY a.attnum)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
        )
        .await?;
    let leaves = client
        .prepare(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text
             FROM pg_partition_tree($1::oid) t
             JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE t.isleaf ORDER BY 1, 2",
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
        if let Some(reason) = unmanageable(t, row.get(4), row.get(5)) {
            return Err(table_err(t, reason));
        }
        let replident: String = row.get(1);
        let oid: u32 = row.get(0);
        let partitions = if relkind == "p" {
            client
                .query(&leaves, &[&oid])
                .await?
                .iter()
                .map(|r| {
                    let ident: String = r.get(2);
                    (
                        TableName {
                            schema: r.get(0),
                            name: r.get(1),
                        },
                        ident.chars().next().unwrap_or('d'),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        out.push(TableInfo {
            table: t.clone(),
            oid,
            columns: row.get(3),
            unpublished_generated: row.get(9),
            primary_key: primary_key(client, oid).await?,
            replica_identity: replident.chars().next().unwrap_or('d'),
            partitions,
            owned: row.get(6),
            owner: row.get(7),
            role: row.get(8),
        });
    }
    Ok(out)
}

/// Why walhook can never stream `t`'s changes, if it cannot: system catalogs, tables whose changes
/// never reach the WAL (UNLOGGED, temporary), and inheritance parents (their children's changes
/// are not published under the parent's name).
fn unmanageable(t: &TableName, persistence: String, has_children: bool) -> Option<String> {
    if matches!(t.schema.as_str(), "pg_catalog" | "information_schema")
        || t.schema.starts_with("pg_toast")
    {
        return Some(format!(
            "{t} is a system catalog table; walhook subscribes to application tables only"
        ));
    }
    match persistence.as_str() {
        "u" => {
            return Some(format!(
                "{t} is UNLOGGED: its changes are never written to the WAL, so walhook cannot see \
                 them. Make it logged (`ALTER TABLE {} SET LOGGED;`) or subscribe to another table",
                t.quoted()
            ))
        }
        "t" => {
            return Some(format!(
                "{t} is a temporary table: it lives in one session and its changes never reach \
                 the WAL, so walhook cannot see them"
            ))
        }
        _ => {}
    }
    if has_children {
        return Some(format!(
            "{t} has inheritance child tables, whose changes are not published under {t}'s name; \
             subscribe to each child table (or use declarative partitioning, which walhook follows)"
        ));
    }
    None
}

/// Refuses, before anything is changed, a table walhook's role would have to alter without the
/// owner's rights (setting REPLICA IDENTITY and adding a table to a publication are owner-only in
/// Postgres). A table already FULL (partitions included) and already in the publication needs
/// nothing, so a DBA may prepare it by hand for a role that does not own it.
pub async fn check_manageable(
    client: &Client,
    tables: &[TableInfo],
    publication: &str,
) -> Result<(), SourceError> {
    for t in tables.iter().filter(|t| !t.owned) {
        let needs_identity =
            t.replica_identity != 'f' || t.partitions.iter().any(|(_, r)| *r != 'f');
        let published = client
            .query_opt(
                "SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                 WHERE p.pubname = $1 AND pr.prrelid = $2::oid",
                &[&publication, &t.oid],
            )
            .await?
            .is_some();
        if needs_identity || !published {
            let q = t.table.quoted();
            return Err(table_err(
                &t.table,
                format!(
                    "walhook's role {role} cannot prepare {table}: it is owned by {owner}, and \
                     setting REPLICA IDENTITY and adding a table to a publication are owner-only. \
                     Run `GRANT {owner_q} TO {role_q};`, or as a superuser (adding a table to \
                     walhook's publication needs both the table's and the publication's owner \
                     rights, so {owner} alone cannot): \
                     `ALTER TABLE {q} REPLICA IDENTITY FULL; ALTER PUBLICATION {pub_q} ADD TABLE {q};` \
                     (and REPLICA IDENTITY FULL on each partition)",
                    role = t.role,
                    table = t.table,
                    owner = t.owner,
                    owner_q = quote_ident(&t.owner),
                    role_q = quote_ident(&t.role),
                    pub_q = quote_ident(publication),
                ),
            ));
        }
    }
    Ok(())
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
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
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
                tokio::time::sleep(backoff.next_delay()).await;
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
        // A partitioned table's changes happen in its leaves: each needs FULL, the parent too
        // (so partitions created from it later are easy to spot in `walhook check`).
        for i in 0..t.partitions.len() {
            let (leaf, ident) = t.partitions[i].clone();
            if ident == 'f' {
                continue;
            }
            let stmt = format!("ALTER TABLE {} REPLICA IDENTITY FULL", leaf.quoted());
            if !manage {
                return Err(table_err(&t.table, format!(
                    "partition {leaf} of {} has REPLICA IDENTITY other than FULL; walhook needs FULL on every partition. \
                     Run `{stmt};` or set source.manage_replica_identity = true",
                    t.table
                )));
            }
            ddl_with_lock_timeout(client, &stmt).await.map_err(|e| {
                if e.is_retryable() {
                    return e;
                }
                table_err(&t.table, format!(
                    "could not set REPLICA IDENTITY FULL on partition {leaf}: {e}. Run `{stmt};` as its owner"
                ))
            })?;
            info!(table = %t.table, partition = %leaf, "set REPLICA IDENTITY FULL on partition");
            t.partitions[i].1 = 'f';
        }
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
    // PostgreSQL 18+ can publish stored generated columns, which to_jsonb(row) includes.
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    let gencols = if version >= GENERATED_COLUMNS_VERSION {
        ", publish_generated_columns = stored"
    } else {
        ""
    };
    // `pubgencols` exists from 18 on ('s' = stored); earlier releases count as "as wanted".
    let row = client
        .query_opt(
            "SELECT puballtables, pubinsert AND pubupdate AND pubdelete AND pubviaroot
                    AND coalesce(to_jsonb(p) ->> 'pubgencols', 's') IN ('s', 'true')
             FROM pg_publication p WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    match row {
        None => {
            // Via the root: a partitioned table's changes carry the subscribed table's name.
            let sql = format!(
                "CREATE PUBLICATION {pub_q} WITH (publish = 'insert, update, delete', \
                 publish_via_partition_root = true{gencols})"
            );
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
                        "ALTER PUBLICATION {pub_q} SET (publish = 'insert, update, delete', \
                         publish_via_partition_root = true{gencols})"
                    ))
                    .await?;
                info!(
                    publication,
                    "publication now publishes insert, update, delete via partition roots"
                );
            }
        }
    }
    let current = publication_tables(client, publication).await?;
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
    /// `pg_replication_slots.wal_status`: reserved, extended, unreserved or lost (invalidated:
    /// the slot can never stream again).
    pub wal_status: Option<String>,
    /// Bytes of WAL that can still be written before the slot is invalidated
    /// (`safe_wal_size`); None when `max_slot_wal_keep_size` is -1 (no cap).
    pub safe_wal_size: Option<i64>,
}

impl SlotState {
    /// The slot was invalidated (PostgreSQL removed WAL it needed): it can never stream again.
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// The tables added to `publication` as such, by schema and name (pg_publication_tables
/// would list a partitioned table's leaves instead when not publishing via the root).
pub async fn publication_tables(
    client: &Client,
    publication: &str,
) -> Result<Vec<TableName>, SourceError> {
    Ok(client
        .query(
            "SELECT n.nspname::text, c.relname::text
             FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
             JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE p.pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await?
        .iter()
        .map(|r| TableName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect())
}

/// Reads the slot's state; None when it does not exist. Errors if it exists but is not a
/// pgoutput slot of this database.
pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, SourceError> {
    let row = client
        .query_opt(
            "SELECT s.plugin::text, s.database::text, current_database()::text, s.active,
                    s.confirmed_flush_lsn::text,
                    (pg_current_wal_lsn() - s.restart_lsn)::int8,
                    s.wal_status, s.safe_wal_size
             FROM pg_replication_slots s WHERE s.slot_name = $1",
            &[&slot],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    let plugin: Option<String> = r.get(0);
    let database: Option<String> = r.get(1);
    let current: String = r.get(2);
    if plugin.as_deref() != Some("pgoutput") || database.as_deref() != Some(current.as_str()) {
        // Physical slots have neither a plugin nor a database.
        let plugin = plugin.as_deref().unwrap_or("none: a physical slot");
        let database = database.as_deref().unwrap_or("none");
        return Err(SourceError::Setup(format!(
            "replication slot {slot} exists but is not a pgoutput slot of database {current} \
             (plugin {plugin}, database {database}); another program owns it: set source.slot \
             to another name"
        )));
    }
    let confirmed: Option<String> = r.get(4);
    Ok(Some(SlotState {
        active: r.get(3),
        confirmed_flush: confirmed.and_then(|s| s.parse().ok()),
        retained_bytes: r.get(5),
        wal_status: r.get(6),
        safe_wal_size: r.get(7),
    }))
}

/// `max_slot_wal_keep_size` in bytes; None when -1 (unlimited).
pub async fn max_slot_wal_keep_size(client: &Client) -> Result<Option<i64>, SourceError> {
    let bytes: i64 = client
        .query_one(
            "SELECT pg_size_bytes(current_setting('max_slot_wal_keep_size'))",
            &[],
        )
        .await?
        .get(0);
    Ok((bytes >= 0).then_some(bytes))
}

/// Creates the pgoutput slot (it must not exist); returns its start (the consistent point).
pub async fn create_slot(client: &Client, slot: &str) -> Result<Lsn, SourceError> {
    let r = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await?;
    let lsn: String = r.get(0);
    info!(slot, lsn = %lsn, "created replication slot");
    lsn.parse()
        .map_err(|_| SourceError::Decode(format!("slot start {lsn:?} is not an LSN")))
}

/// Drops the slot if it exists and is not in use (an invalidated or foreign one); true when it
/// was dropped.
pub async fn drop_slot(client: &Client, slot: &str) -> Result<bool, SourceError> {
    let n = client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    if n > 0 {
        warn!(slot, "dropped replication slot");
    }
    Ok(n > 0)
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
    check_manageable(client, &infos, publication).await?;
    for i in &infos {
        for d in deviations(client, i.oid).await? {
            warn!("{}", d.describe(&i.table));
        }
    }
    ensure_replica_identity(client, &mut infos, manage_replica_identity).await?;
    sync_publication(client, publication, tables, remove_extra).await?;
    Ok(infos)
}
