//! What a failed start left in the host database, and how to remove it.
//!
//! Guarantees: [`Snapshot::take`] only reads the catalog. [`report`] compares the state before
//! a start with the state after it failed, drops a replication slot that this start created
//! (nothing has streamed from it yet, and a slot left behind would pin WAL while walhook is
//! stopped), and returns one line per change left in place (replica identity, publication,
//! publication membership) with the statement that undoes it, so a failed start never changes
//! the host database without saying so.

use tokio_postgres::Client;
use tracing::info;

use super::error::SourceError;
use crate::model::{quote_ident, TableName};

/// The parts of the host database a start may change.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    slot: bool,
    /// The publication's tables, or None when it does not exist.
    publication: Option<Vec<TableName>>,
    /// Each subscribed table and partition: its replica identity ('d', 'n', 'f', 'i') and, for
    /// 'i', the index.
    identities: Vec<(TableName, String, Option<String>)>,
}

impl Snapshot {
    pub async fn take(
        client: &Client,
        tables: &[TableName],
        publication: &str,
        slot: &str,
    ) -> Result<Snapshot, SourceError> {
        let slot_exists = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?
            .is_some();
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await?
            .is_some();
        let publication = if exists {
            Some(super::setup::publication_tables(client, publication).await?)
        } else {
            None
        };
        let mut identities = Vec::new();
        for t in tables {
            // The table and, when partitioned, its partitions (pg_partition_tree lists nothing
            // for a plain table); a missing table (to_regclass NULL) lists nothing.
            for r in client
                .query(
                    "SELECT n.nspname::text, c.relname::text, c.relreplident::text,
                            (SELECT i.indexrelid::regclass::text FROM pg_index i
                             WHERE i.indrelid = c.oid AND i.indisreplident)
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.oid = to_regclass($1)
                        OR c.oid IN (SELECT relid FROM pg_partition_tree(to_regclass($1)))
                     ORDER BY c.oid <> to_regclass($1), 1, 2",
                    &[&t.quoted()],
                )
                .await?
            {
                identities.push((
                    TableName {
                        schema: r.get(0),
                        name: r.get(1),
                    },
                    r.get(2),
                    r.get(3),
                ));
            }
        }
        Ok(Snapshot {
            slot: slot_exists,
            publication,
            identities,
        })
    }
}

fn identity_clause(ident: &str, index: Option<&str>) -> String {
    match (ident, index) {
        ("n", _) => "NOTHING".into(),
        ("f", _) => "FULL".into(),
        ("i", Some(ix)) => format!("USING INDEX {}", ix.rsplit('.').next().unwrap_or(ix)),
        _ => "DEFAULT".into(),
    }
}

/// After a failed start: drops the slot this start created, and lists what else it changed,
/// each with the statement that undoes it. Errors reading the catalog are listed as such.
pub async fn report(
    client: &Client,
    before: &Snapshot,
    tables: &[TableName],
    publication: &str,
    slot: &str,
) -> Vec<String> {
    let after = match Snapshot::take(client, tables, publication, slot).await {
        Ok(a) => a,
        Err(e) => {
            return vec![format!(
                "could not read what the failed start left ({e}); compare the replica identity \
                 of the subscribed tables, publication {publication} and slot {slot} with what \
                 you expect"
            )]
        }
    };
    let mut left = Vec::new();
    if after.slot && !before.slot {
        match client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await
        {
            Ok(1) => info!(
                slot,
                "dropped the replication slot this failed start created"
            ),
            _ => left.push(format!(
                "created replication slot {slot}, which keeps WAL until it is used or dropped \
                 (to undo: SELECT pg_drop_replication_slot('{slot}'))"
            )),
        }
    }
    let pub_q = quote_ident(publication);
    match (&before.publication, &after.publication) {
        (None, Some(_)) => left.push(format!(
            "created publication {publication} (to undo: DROP PUBLICATION {pub_q})"
        )),
        (Some(was), Some(now)) => {
            for t in now.iter().filter(|t| !was.contains(t)) {
                left.push(format!(
                    "added {t} to publication {publication} (to undo: ALTER PUBLICATION {pub_q} \
                     DROP TABLE {})",
                    t.quoted()
                ));
            }
        }
        _ => {}
    }
    for (t, ident, index) in &after.identities {
        let Some((_, was, was_index)) = before.identities.iter().find(|(b, _, _)| b == t) else {
            continue;
        };
        if was != ident || was_index != index {
            left.push(format!(
                "set REPLICA IDENTITY {} on {t} (it was {}; to undo, once it is in no publication \
                 that publishes UPDATE or DELETE: ALTER TABLE {} REPLICA IDENTITY {})",
                identity_clause(ident, index.as_deref()),
                identity_clause(was, was_index.as_deref()),
                t.quoted(),
                identity_clause(was, was_index.as_deref()),
            ));
        }
    }
    left
}
