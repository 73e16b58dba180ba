//! Which columns of a table a payload's `record` cannot render as `to_jsonb(row)` does, and why.
//!
//! Guarantees: [`deviations`] reads the catalog only (nothing is changed) and names every column
//! that differs from `to_jsonb` on this server: generated columns pgoutput does not publish
//! (all of them before PostgreSQL 18; virtual ones on 18+), and columns whose type (directly or
//! inside an array, domain or composite) has a cast to json that walhook does not reproduce.
//! `walhook check` prints them per column; the source logs them once at start, and every
//! change of a table lists its unpublished generated columns under `omitted` (see
//! [`unpublished_generated`]), so a payload is never silently different from `to_jsonb`.

use tokio_postgres::Client;

use super::error::SourceError;
use super::types::{TypeKind, TypeResolver};
use super::values::TEXT_SESSION;
use crate::model::TableName;

/// The first release whose pgoutput publishes stored generated columns
/// (`publish_generated_columns`).
pub const GENERATED_COLUMNS_VERSION: i32 = 180_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deviation {
    /// A generated column pgoutput does not send: it is missing from `record`.
    GeneratedNotPublished { column: String },
    /// A column sent as its text where `to_jsonb` would apply the type's cast to json.
    /// `kind` is how the stream renders it (a backfill renders it the same way).
    CastNotReproduced {
        column: String,
        type_name: String,
        kind: TypeKind,
    },
}

impl Deviation {
    /// One line for `walhook check` and the start-up log, saying what differs and why.
    pub fn describe(&self, table: &TableName) -> String {
        match self {
            Deviation::GeneratedNotPublished { column } => format!(
                "table {table}: generated column {column} is not in record (pgoutput publishes \
                 stored generated columns from PostgreSQL 18 on, virtual ones never); \
                 to_jsonb(row) includes it; each payload lists it under \"omitted\""
            ),
            Deviation::CastNotReproduced {
                column, type_name, ..
            } => format!(
                "table {table}: column {column} ({type_name}) is sent as its text: its type has a \
                 cast to json, which to_jsonb(row) applies and walhook does not (only hstore's is \
                 reproduced)"
            ),
        }
    }
}

/// The columns of `table` (by OID) whose values in `record` differ from `to_jsonb(row)`.
pub async fn deviations(client: &Client, table_oid: u32) -> Result<Vec<Deviation>, SourceError> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod),
                    a.attgenerated <> ''
                    AND (a.attgenerated <> 's'
                         OR current_setting('server_version_num')::int < $2)
             FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&table_oid, &GENERATED_COLUMNS_VERSION],
        )
        .await?;
    let oids: Vec<u32> = rows.iter().map(|r| r.get(1)).collect();
    let mut types = TypeResolver::new();
    types.resolve(client, &oids).await?;
    let mut out = Vec::new();
    for r in &rows {
        let column: String = r.get(0);
        if r.get::<_, bool>(3) {
            out.push(Deviation::GeneratedNotPublished { column });
        } else if let Some(kind) = types.get(r.get(1)).filter(|k| k.has_cast_fallback()) {
            out.push(Deviation::CastNotReproduced {
                column,
                type_name: r.get(2),
                kind: kind.clone(),
            });
        }
    }
    Ok(out)
}

/// Sets the session settings under which the stream's text output is read
/// ([`TEXT_SESSION`]) on a plain SQL session, so that `to_jsonb` and `::text` there render
/// time zones, intervals and bytea as the stream's values do (a backfill reads rows this way).
pub async fn pin_text_output(client: &Client) -> Result<(), tokio_postgres::Error> {
    let sql: String = TEXT_SESSION
        .iter()
        .map(|(name, value)| format!("SET {name} = '{value}';"))
        .collect();
    client.batch_execute(&sql).await
}

/// The generated columns of `table_oid` that a Relation message listing `published` left out,
/// in column order: those pgoutput does not send on this server. Read once per Relation
/// message (start of streaming, and after each ALTER TABLE), never per row.
pub async fn unpublished_generated(
    client: &Client,
    table_oid: u32,
    published: &[&str],
) -> Result<Vec<String>, SourceError> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated <> ''
             ORDER BY a.attnum",
            &[&table_oid],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|c| !published.contains(&c.as_str()))
        .collect())
}

/// Waits (about a second at most) until transaction `xid` is visible to new snapshots of
/// `client`'s session. Logical decoding may send a transaction as soon as its commit record is
/// flushed, a moment before other sessions see it as committed; a catalog read in that moment
/// would miss the transaction's own DDL (a column it added). Gives up with a warning rather
/// than stalling the stream.
pub async fn wait_visible(client: &Client, xid: u32) -> Result<(), SourceError> {
    // The 32-bit xid in the epoch of the snapshot's xmax (or the one before, if it is ahead).
    const SQL: &str = "WITH s AS (SELECT pg_current_snapshot() AS snap),
         x AS (SELECT snap, pg_snapshot_xmax(snap)::text::int8 AS xmax FROM s),
         c AS (SELECT snap, CASE WHEN ((xmax >> 32) << 32 | $1) > xmax
                                 THEN (greatest((xmax >> 32) - 1, 0) << 32) | $1
                                 ELSE ((xmax >> 32) << 32) | $1 END AS full_xid FROM x)
         SELECT pg_visible_in_snapshot(full_xid::text::xid8, snap) FROM c";
    for attempt in 0..200 {
        let visible: bool = client.query_one(SQL, &[&i64::from(xid)]).await?.get(0);
        if visible {
            return Ok(());
        }
        if attempt == 0 {
            tracing::debug!(xid, "transaction not yet visible to the catalog; waiting");
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tracing::warn!(
        xid,
        "a streamed transaction is still not visible after 1 s; reading the catalog anyway"
    );
    Ok(())
}
