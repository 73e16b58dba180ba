//! Every statement of backfills: the `backfills` rows (create, list, cancel, progress, finish),
//! and the reads a backfill makes on the app's table (its primary key, the check of a `where`
//! expression, one chunk, the watermarks written through the WAL).
//!
//! Guarantees (ARCHITECTURE.md invariant 5):
//! - every read of the app's table runs in its own short READ ONLY transaction with a
//!   `statement_timeout` and a `lock_timeout`, so a backfill never holds more than ACCESS SHARE,
//!   never for long, and never waits long behind a lock;
//! - a `where` expression is accepted only when it is one parenthesised boolean expression: no
//!   `;`, no comment, balanced parentheses outside quotes, and `EXPLAIN` (which plans but runs
//!   nothing) of `SELECT 1 FROM <table> WHERE (<expr>)` succeeds in a READ ONLY transaction;
//! - progress ([`store_progress`]) is written by the ingest writer inside the outbox transaction
//!   that stores the chunk's deliveries, and only while the backfill is `running`: a cancelled
//!   backfill's row never moves again.

use std::ops::ControlFlow;

use futures_util::TryStreamExt;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::{OutboxError, Schema};
use crate::model::{quote_ident, TableName};

/// The prefix of walhook's logical messages marking a chunk's watermarks.
pub const WATERMARK_PREFIX: &str = "walhook.backfill";

/// Longest a read of the app's table may run.
pub const STATEMENT_TIMEOUT_MS: u32 = 30_000;
/// Longest a read waits for its ACCESS SHARE lock (behind a pending DDL, say).
const LOCK_TIMEOUT_MS: u32 = 5_000;

/// One `backfills` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Backfill {
    pub id: i64,
    pub subscription_id: String,
    pub where_sql: Option<String>,
    pub chunk_size: i32,
    /// Pause between two chunks, in milliseconds.
    pub pause_ms: i32,
    /// `running`, `done`, `cancelled` or `failed`.
    pub state: String,
    pub last_key: Option<Value>,
    pub rows_done: i64,
    pub rows_estimated: Option<i64>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub error: Option<String>,
}

/// A chunk's progress, stored with its deliveries.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub backfill_id: i64,
    /// The primary-key columns of the chunk's last row.
    pub last_key: Value,
    /// Rows read so far, this chunk included.
    pub rows_done: i64,
    /// The chunk was the last one (shorter than the chunk size).
    pub finished: bool,
}

const COLUMNS: &str =
    "id, subscription_id, where_sql, chunk_size, pause_ms, state, last_key, rows_done, \
                       rows_estimated, started_at, finished_at, error";

fn from_row(r: &tokio_postgres::Row) -> Backfill {
    Backfill {
        id: r.get(0),
        subscription_id: r.get(1),
        where_sql: r.get(2),
        chunk_size: r.get(3),
        pause_ms: r.get(4),
        state: r.get(5),
        last_key: r.get(6),
        rows_done: r.get(7),
        rows_estimated: r.get(8),
        started_at: r.get(9),
        finished_at: r.get(10),
        error: r.get(11),
    }
}

/// Stores a new running backfill; returns it.
pub async fn create(
    client: &Client,
    schema: &Schema,
    subscription_id: &str,
    where_sql: Option<&str>,
    chunk_size: i32,
    pause_ms: i32,
    rows_estimated: Option<i64>,
) -> Result<Backfill, OutboxError> {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO {} (subscription_id, where_sql, chunk_size, pause_ms, rows_estimated)
                 VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}",
                schema.table("backfills")
            ),
            &[
                &subscription_id,
                &where_sql,
                &chunk_size,
                &pause_ms,
                &rows_estimated,
            ],
        )
        .await?;
    Ok(from_row(&row))
}

/// A subscription's backfills, newest first (at most `limit`).
pub async fn list(
    client: &Client,
    schema: &Schema,
    subscription_id: &str,
    limit: i64,
) -> Result<Vec<Backfill>, OutboxError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM {} WHERE subscription_id = $1 ORDER BY id DESC LIMIT $2",
                schema.table("backfills")
            ),
            &[&subscription_id, &limit],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// One backfill of a subscription.
pub async fn get(
    client: &Client,
    schema: &Schema,
    subscription_id: &str,
    id: i64,
) -> Result<Option<Backfill>, OutboxError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM {} WHERE subscription_id = $1 AND id = $2",
                schema.table("backfills")
            ),
            &[&subscription_id, &id],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// Every running backfill, oldest first.
pub async fn running(client: &Client, schema: &Schema) -> Result<Vec<Backfill>, OutboxError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM {} WHERE state = 'running' ORDER BY id",
                schema.table("backfills")
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Cancels a running backfill; returns the row as it is now (None: no such backfill).
pub async fn cancel(
    client: &Client,
    schema: &Schema,
    subscription_id: &str,
    id: i64,
) -> Result<Option<Backfill>, OutboxError> {
    client
        .execute(
            &format!(
                "UPDATE {} SET state = 'cancelled', finished_at = now()
                 WHERE subscription_id = $1 AND id = $2 AND state = 'running'",
                schema.table("backfills")
            ),
            &[&subscription_id, &id],
        )
        .await?;
    get(client, schema, subscription_id, id).await
}

/// Ends a running backfill as `done` or `failed` (with the error).
pub async fn finish(
    client: &Client,
    schema: &Schema,
    id: i64,
    error: Option<&str>,
) -> Result<(), OutboxError> {
    let state = if error.is_some() { "failed" } else { "done" };
    client
        .execute(
            &format!(
                "UPDATE {} SET state = $2, error = $3, finished_at = now()
                 WHERE id = $1 AND state = 'running'",
                schema.table("backfills")
            ),
            &[&id, &state, &error],
        )
        .await?;
    Ok(())
}

/// Stores chunks' progress; called inside the outbox transaction holding their deliveries.
pub async fn store_progress(
    client: &Client,
    schema: &Schema,
    progress: &[Progress],
) -> Result<(), OutboxError> {
    let sql = format!(
        "UPDATE {} SET last_key = $2, rows_done = $3,
             state = CASE WHEN $4 THEN 'done' ELSE state END,
             finished_at = CASE WHEN $4 THEN now() ELSE finished_at END
         WHERE id = $1 AND state = 'running'",
        schema.table("backfills")
    );
    for p in progress {
        client
            .execute(
                &sql,
                &[&p.backfill_id, &p.last_key, &p.rows_done, &p.finished],
            )
            .await?;
    }
    Ok(())
}

/// The chunk size of the backfill that `backfill = true` starts.
pub const ON_CREATE_CHUNK_SIZE: i32 = 1000;

/// Starts the `backfill = true` backfill of each subscription in `subscription_ids` that never
/// had one (the `on_create` mark, sql/010); returns the backfills started now. Idempotent: a
/// restart, a reload or a second instance calling it again starts nothing more, and a
/// subscription that is not stored (yet) is skipped.
pub async fn start_on_create(
    client: &Client,
    schema: &Schema,
    subscription_ids: &[String],
) -> Result<Vec<Backfill>, OutboxError> {
    if subscription_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            &format!(
                "INSERT INTO {b} (subscription_id, chunk_size, on_create)
                 SELECT id, $2, true FROM {s} WHERE id = ANY($1) ORDER BY id
                 ON CONFLICT (subscription_id) WHERE on_create DO NOTHING
                 RETURNING {COLUMNS}",
                b = schema.table("backfills"),
                s = schema.table("subscriptions"),
            ),
            &[&subscription_ids, &ON_CREATE_CHUNK_SIZE],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Records the planner's estimate of a backfill's rows (one started without one).
pub async fn set_estimate(
    client: &Client,
    schema: &Schema,
    id: i64,
    rows_estimated: i64,
) -> Result<(), OutboxError> {
    client
        .execute(
            &format!(
                "UPDATE {} SET rows_estimated = $2 WHERE id = $1 AND rows_estimated IS NULL",
                schema.table("backfills")
            ),
            &[&id, &rows_estimated],
        )
        .await?;
    Ok(())
}

// ---- reads of the app's table (the source database) ----

/// What a backfill needs to know of its table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    /// The table's OID, for catalog reads about its columns.
    pub oid: u32,
    /// Every column, in table order.
    pub columns: Vec<String>,
    /// The primary-key columns in key order, with their SQL types (`format_type`).
    pub key: Vec<(String, String)>,
}

/// Why a backfill of a table cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BackfillRefused {
    #[error("table {0} does not exist")]
    NoTable(String),
    #[error("table {0} has no primary key: a backfill reads it in primary-key order, chunk after chunk, and resumes after the last key it stored; add a PRIMARY KEY to backfill it")]
    NoPrimaryKey(String),
    #[error("where: {0}")]
    BadWhere(String),
    #[error(transparent)]
    Db(#[from] OutboxError),
}

/// The table's columns and primary key.
pub async fn table_info(client: &Client, table: &TableName) -> Result<TableInfo, BackfillRefused> {
    let oid: Option<u32> = client
        .query_one("SELECT to_regclass($1)::oid", &[&table.quoted()])
        .await
        .map_err(OutboxError::from)?
        .get(0);
    let Some(oid) = oid else {
        return Err(BackfillRefused::NoTable(table.to_string()));
    };
    let columns: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(OutboxError::from)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let key: Vec<(String, String)> = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_index i
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )
        .await
        .map_err(OutboxError::from)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if key.is_empty() {
        return Err(BackfillRefused::NoPrimaryKey(table.to_string()));
    }
    Ok(TableInfo { oid, columns, key })
}

/// The syntactic half of the `where` check: one expression that cannot close the parentheses
/// it is put in, with no statement separator and no comment.
pub fn check_where_syntax(expr: &str) -> Result<(), String> {
    if expr.trim().is_empty() {
        return Err("is empty; leave it out to backfill every row".into());
    }
    if expr.contains('\0') {
        return Err("contains a NUL character".into());
    }
    let b = expr.as_bytes();
    let mut depth: i32 = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b';' => {
                return Err(
                    "contains ';': it must be a single boolean expression, not statements".into(),
                )
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                return Err(
                    "contains a comment (--); it must be a single boolean expression".into(),
                )
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                return Err(
                    "contains a comment (/*); it must be a single boolean expression".into(),
                )
            }
            // A dollar-quoted string could hide anything from this scan ($1 is a parameter).
            b'$' if (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
                && b.get(i + 1).is_some_and(|c| !c.is_ascii_digit()) =>
            {
                return Err("contains a dollar-quoted string; use '…' quotes".into());
            }
            b'\''
                if i > 0
                    && matches!(b[i - 1], b'e' | b'E')
                    && (i == 1 || !(b[i - 2].is_ascii_alphanumeric() || b[i - 2] == b'_')) =>
            {
                // Backslash escapes would make quotes end where this scan does not see it.
                return Err("contains an E'…' string; use plain '…' quotes".into());
            }
            q @ (b'\'' | b'"') => {
                // Skip to the closing quote ('' and "" are escapes and simply reopen).
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                if i == b.len() {
                    return Err("has an unterminated quote".into());
                }
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(
                        "has a ')' without its '(': it must be a single boolean expression".into(),
                    );
                }
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return Err("has an unclosed '('".into());
    }
    Ok(())
}

/// Checks `where` (syntax, then `EXPLAIN` in a READ ONLY transaction: nothing runs) and returns
/// the planner's estimate of the rows it selects.
pub async fn check_where(
    client: &mut Client,
    table: &TableName,
    expr: Option<&str>,
) -> Result<Option<i64>, BackfillRefused> {
    if let Some(e) = expr {
        check_where_syntax(e).map_err(BackfillRefused::BadWhere)?;
    }
    let tx = read_only(client).await.map_err(OutboxError::from)?;
    let sql = format!(
        "EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE ({})",
        table.quoted(),
        expr.unwrap_or("true")
    );
    let plan = match tx.query_one(&sql, &[]).await {
        Ok(r) => r.get::<_, Value>(0),
        Err(e) => {
            let msg = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| crate::pg::error_text(&e));
            return Err(match e.as_db_error() {
                // Not the user's expression: the connection, the server.
                None => BackfillRefused::Db(OutboxError::Sql(e)),
                Some(_) => BackfillRefused::BadWhere(msg),
            });
        }
    };
    tx.rollback().await.map_err(OutboxError::from)?;
    Ok(plan
        .pointer("/0/Plan/Plan Rows")
        .and_then(Value::as_f64)
        .map(|r| r as i64))
}

async fn read_only(
    client: &mut Client,
) -> Result<tokio_postgres::Transaction<'_>, tokio_postgres::Error> {
    let tx = client.build_transaction().read_only(true).start().await?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}; SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}"
    ))
    .await?;
    Ok(tx)
}

/// Longest [`settle_commits`] waits for the transactions it saw in progress.
const SETTLE_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until the transactions in progress now that wrote to `table` have ended (at most
/// `SETTLE_MAX`).
///
/// Called after the low watermark committed and before the chunk is read. A transaction whose
/// commit record precedes the watermark in the WAL may still be invisible to a snapshot taken
/// just after the watermark's commit returned (it has written its commit record but not yet
/// left the proc array, or waits there for a synchronous standby); the chunk read would miss
/// its change while the stream, placing it before the watermark, would not record it in the
/// window, and the chunk's stale row would overtake it. Such a transaction is only instants
/// from visible (the watermark's own flush covered its commit record), so waiting for the
/// transactions in progress closes the gap; one still in progress after `SETTLE_MAX` is a
/// long transaction, which commits after the watermark and is recorded in the window.
///
/// "In progress" is read from the lock every transaction holds on its own xid until it has
/// left the proc array, not from a snapshot: a snapshot's list stops at its `xmax` (the newest
/// completed xid + 1), so a transaction that took its xid after every completed one, the
/// watermark's included, was not listed and not waited for.
///
/// Only a transaction that holds a lock allowing writes (anything above `ROW SHARE`) on `table`
/// or one of its partitions or inheritance children, in this database, can have changed a row
/// the chunk reads: every INSERT, UPDATE, DELETE, MERGE, COPY or TRUNCATE takes one and keeps
/// it, like its xid lock, until after it has become visible. The others are not waited for:
/// walhook's own outbox writer and delivery (they write only walhook's schema), and the rest
/// of the host's work, in this database or another (`pg_locks` shows the whole server), a long
/// report included, which would otherwise hold every chunk for `SETTLE_MAX`. A prepared
/// transaction keeps its locks under its own virtual transaction, so one that wrote the table
/// is still waited for.
///
/// Returns the transactions still in progress when it gave up (none: all ended).
pub async fn settle_commits(
    client: &Client,
    table: &TableName,
) -> Result<Vec<OpenWriter>, tokio_postgres::Error> {
    // A transaction's lock on its own xid, held until it has left the proc array.
    const HELD: &str = "l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted";
    let xids: Vec<String> = client
        .query_one(
            &format!(
                "WITH RECURSIVE rels(oid) AS (
                     SELECT $1::text::regclass::oid
                     UNION SELECT i.inhrelid FROM pg_inherits i JOIN rels ON i.inhparent = rels.oid)
                 SELECT coalesce(array_agg(l.transactionid::text), '{{}}') FROM pg_locks l WHERE {HELD}
                   AND EXISTS (
                     SELECT 1 FROM pg_locks w
                     WHERE w.virtualtransaction = l.virtualtransaction
                       AND w.locktype = 'relation'
                       AND w.database = (SELECT oid FROM pg_database
                                         WHERE datname = current_database())
                       AND w.relation IN (SELECT oid FROM rels)
                       AND w.mode NOT IN ('AccessShareLock', 'RowShareLock'))"
            ),
            &[&table.quoted()],
        )
        .await?
        .get(0);
    if xids.is_empty() {
        return Ok(Vec::new());
    }
    let deadline = std::time::Instant::now() + SETTLE_MAX;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        let open: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM pg_locks l WHERE {HELD} AND l.transactionid::text = ANY($1::text[])"
                ),
                &[&xids],
            )
            .await?
            .get(0);
        if open == 0 {
            return Ok(Vec::new());
        }
        if std::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
    // Who they are, for the operator who has to end them.
    let rows = client
        .query(
            &format!(
                "SELECT l.pid, coalesce(a.xact_start, p.prepared), p.gid
                 FROM pg_locks l
                 LEFT JOIN pg_stat_activity a ON a.pid = l.pid
                 LEFT JOIN pg_prepared_xacts p ON p.transaction = l.transactionid
                 WHERE {HELD} AND l.transactionid::text = ANY($1::text[])
                 ORDER BY 2"
            ),
            &[&xids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| OpenWriter {
            pid: r.get(0),
            since: r.get(1),
            prepared: r.get(2),
        })
        .collect())
}

/// A transaction that wrote to a backfilled table and was still open at the end of
/// [`settle_commits`]'s wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenWriter {
    /// Its backend (none for a prepared transaction).
    pub pid: Option<i32>,
    /// When it began, or was prepared.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// A prepared transaction's name (`pg_prepared_xacts.gid`).
    pub prepared: Option<String>,
}

impl std::fmt::Display for OpenWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.prepared, self.pid) {
            (Some(gid), _) => write!(f, "prepared transaction {gid:?}")?,
            (None, Some(pid)) => write!(f, "pid {pid}")?,
            (None, None) => write!(f, "a transaction")?,
        }
        if let Some(t) = self.since {
            write!(
                f,
                " (since {})",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )?;
        }
        Ok(())
    }
}

/// One row of a chunk: `to_jsonb(row)` text, and the text output of the columns asked for as
/// text (in the order asked; `None` for NULL).
pub struct ChunkRow<'a> {
    pub json: &'a str,
    pub texts: Vec<Option<&'a str>>,
}

/// What a chunk reads of each row besides its key order: the columns to leave out of
/// `to_jsonb(row)` (those the stream cannot send either), and the columns to read as text too
/// (those the stream sends as text where `to_jsonb` applies a cast).
pub struct ChunkColumns<'a> {
    pub where_sql: Option<&'a str>,
    pub leave_out: &'a [String],
    pub as_text: Vec<&'a str>,
}

/// Reads the next chunk: up to `limit` rows after `after` (the last key read), in primary-key
/// order, shaped by `columns`, handing each row to `each` as it arrives (so the caller renders
/// one row while the server produces the next), until `each` breaks. One short READ ONLY
/// transaction. Returns the rows handed over.
pub async fn read_chunk(
    client: &mut Client,
    table: &TableName,
    info: &TableInfo,
    columns: &ChunkColumns<'_>,
    after: Option<&Value>,
    limit: i32,
    mut each: impl FnMut(ChunkRow<'_>) -> ControlFlow<()>,
) -> Result<usize, tokio_postgres::Error> {
    let cols: Vec<String> = info
        .key
        .iter()
        .map(|(c, _)| format!("t.{}", quote_ident(c)))
        .collect();
    let cols = cols.join(", ");
    let keyset = match after {
        None => "true".to_string(),
        Some(_) => {
            // The stored key is the record's rendering; its text casts back to the column type.
            let vals: Vec<String> = info
                .key
                .iter()
                .map(|(c, ty)| format!("($1::jsonb ->> {})::{ty}", literal(c)))
                .collect();
            format!("({cols}) > ({})", vals.join(", "))
        }
    };
    let mut row = if columns.leave_out.is_empty() {
        "to_jsonb(t)::text".to_string()
    } else {
        let names: Vec<String> = columns.leave_out.iter().map(|c| literal(c)).collect();
        format!("(to_jsonb(t) - ARRAY[{}]::text[])::text", names.join(", "))
    };
    for c in &columns.as_text {
        row.push_str(&format!(", t.{}::text", quote_ident(c)));
    }
    let sql = format!(
        "SELECT {row} FROM {} t WHERE {keyset} AND ({}) ORDER BY {cols} LIMIT {limit}",
        table.quoted(),
        columns.where_sql.unwrap_or("true"),
    );
    let tx = read_only(client).await?;
    let params: Vec<&(dyn ToSql + Sync)> = after.iter().map(|k| *k as _).collect();
    let rows = tx.query_raw(&sql, params).await?;
    futures_util::pin_mut!(rows);
    let mut n = 0;
    while let Some(r) = rows.try_next().await? {
        n += 1;
        let row = ChunkRow {
            json: r.get(0),
            texts: (1..=columns.as_text.len()).map(|i| r.get(i)).collect(),
        };
        if each(row).is_break() {
            // The rest is not wanted; the transaction rolls back when dropped.
            return Ok(n);
        }
    }
    tx.commit().await?;
    Ok(n)
}

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Writes one watermark (`low:<token>` or `high:<token>`) through the WAL, in its own
/// transaction, so the stream sees it at that transaction's commit.
pub async fn emit_watermark(client: &Client, content: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&WATERMARK_PREFIX, &content],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_where_syntax;

    #[test]
    fn where_must_be_one_expression() {
        assert!(check_where_syntax("id > 5 AND status = 'paid'").is_ok());
        assert!(check_where_syntax("name = 'a;b'").is_ok());
        assert!(check_where_syntax("(a) OR (b)").is_ok());
        assert!(check_where_syntax("\"we;ird\" = 1").is_ok());
        assert!(check_where_syntax("x = 'it''s'").is_ok());
        for bad in [
            "true; DROP TABLE t",
            "true -- x",
            "true /* x */",
            "true) UNION SELECT 1 FROM pg_sleep(10) WHERE (true",
            "(true",
            "'open",
            "x = $$a$$",
            "x = E'\\'' ) OR (true",
            "  ",
        ] {
            assert!(check_where_syntax(bad).is_err(), "{bad}");
        }
    }
}
