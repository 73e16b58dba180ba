//! Subscriptions as stored in the outbox schema: the runtime source of truth for routing and
//! delivery. Rows with `source = 'config'` mirror config.toml (rewritten at start and on SIGHUP);
//! rows with `source = 'api'` belong to the management API.
//!
//! Every statement on the `subscriptions` table is here.
//!
//! Guarantees:
//! - a row that no longer parses (hand-edited, say) is reported with its id and the field at
//!   fault, never silently skipped; secrets stay inside [`Secret`];
//! - an edit ([`edit`]) is a read-modify-write under `SELECT … FOR UPDATE` in one transaction,
//!   so two concurrent edits never lose each other's fields; dropping it without
//!   [`Editing::update`] or [`Editing::delete`] rolls back and changes nothing;
//! - deleting a subscription removes all its deliveries and their attempts in the same
//!   transaction, so no row is orphaned and nothing of it can be delivered afterwards;
//! - syncing config.toml's subscriptions never touches `source = 'api'` rows, and a receiver's
//!   410 Gone sticks until the config gives another URL.

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Transaction};

use super::{OutboxError, Schema};
use crate::model::{
    Batch, EventKind, Filter, Format, Origin, RateLimit, Secret, SignatureScheme, Subscription,
    TableName,
};

/// A subscription as stored: the model plus what the outbox records about it. Derefs to the
/// [`Subscription`], so `stored.url` reads as the subscription's url.
#[derive(Debug, Clone)]
pub struct Stored {
    pub sub: Subscription,
    /// Why the subscription was switched off by walhook (a receiver's 410 Gone), if it was.
    pub deactivated_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::ops::Deref for Stored {
    type Target = Subscription;
    fn deref(&self) -> &Subscription {
        &self.sub
    }
}

/// The column list [`Stored::from_row`] reads, for `SELECT {COLUMNS} FROM ...`.
pub const COLUMNS: &str = "id, source, table_name, events, url, secret, active, filter, \
     select_columns, format, signature, previous_secret, previous_secret_expires_at, \
     headers, signature_header, template, rate_limit, batch_max_events, batch_max_wait_ms, \
     deactivated_reason, created_at, updated_at";

impl Stored {
    pub fn from_row(row: &Row) -> Result<Stored, OutboxError> {
        let id: String = row.try_get("id")?;
        let bad = |field: &str, detail: String| OutboxError::BadSubscription {
            id: id.clone(),
            field: field.to_string(),
            detail,
        };
        let origin_s: &str = row.try_get("source")?;
        let origin = Origin::parse(origin_s)
            .ok_or_else(|| bad("source", format!("unknown source {origin_s:?}")))?;
        let table_s: &str = row.try_get("table_name")?;
        let table = TableName::parse(table_s).map_err(|m| bad("table_name", m.0))?;
        let events = row
            .try_get::<_, Vec<String>>("events")?
            .iter()
            .map(|e| match e.as_str() {
                "INSERT" => Ok(EventKind::Insert),
                "UPDATE" => Ok(EventKind::Update),
                "DELETE" => Ok(EventKind::Delete),
                other => Err(bad("events", format!("unknown event {other:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let filter = row
            .try_get::<_, Option<serde_json::Value>>("filter")?
            .map(|v| Filter::from_json(&v).map_err(|e| bad("filter", e.0)))
            .transpose()?;
        let format_s: &str = row.try_get("format")?;
        let format = Format::parse(format_s)
            .ok_or_else(|| bad("format", format!("unknown format {format_s:?}")))?;
        let headers = headers_from_json(row.try_get("headers")?).map_err(|m| bad("headers", m))?;
        let rate_limit = row
            .try_get::<_, Option<&str>>("rate_limit")?
            .map(|r| RateLimit::parse(r).map_err(|m| bad("rate_limit", m.0)))
            .transpose()?;
        let batch = match (
            row.try_get::<_, Option<i32>>("batch_max_events")?,
            row.try_get::<_, Option<i32>>("batch_max_wait_ms")?,
        ) {
            (Some(n), Some(ms)) => Some(
                Batch::new(n.into(), std::time::Duration::from_millis(ms.max(0) as u64))
                    .map_err(|m| bad("batch", m.0))?,
            ),
            _ => None,
        };
        let sig_s: &str = row.try_get("signature")?;
        let signature = SignatureScheme::parse(sig_s)
            .ok_or_else(|| bad("signature", format!("unknown signature scheme {sig_s:?}")))?;
        Ok(Stored {
            sub: Subscription {
                origin,
                table,
                events,
                url: row.try_get("url")?,
                secret: Secret::new(row.try_get::<_, String>("secret")?),
                active: row.try_get("active")?,
                filter,
                select: row.try_get("select_columns")?,
                format,
                signature,
                previous_secret: row
                    .try_get::<_, Option<String>>("previous_secret")?
                    .map(Secret::new),
                previous_secret_expires_at: row.try_get("previous_secret_expires_at")?,
                headers,
                signature_header: row.try_get("signature_header")?,
                template: row.try_get("template")?,
                rate_limit,
                batch,
                id,
            },
            deactivated_reason: row.try_get("deactivated_reason")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// `[[name, value], ...]` → the headers; the message never contains a value.
fn headers_from_json(v: serde_json::Value) -> Result<Vec<(String, Secret)>, String> {
    let bad = || "expected an array of [name, value] string pairs".to_string();
    let serde_json::Value::Array(items) = v else {
        return Err(bad());
    };
    items
        .into_iter()
        .map(|pair| match pair {
            serde_json::Value::Array(mut p) if p.len() == 2 => match (p.pop(), p.pop()) {
                (Some(serde_json::Value::String(value)), Some(serde_json::Value::String(name))) => {
                    Ok((name, Secret::new(value)))
                }
                _ => Err(bad()),
            },
            _ => Err(bad()),
        })
        .collect()
}

fn headers_to_json(headers: &[(String, Secret)]) -> serde_json::Value {
    serde_json::Value::Array(
        headers
            .iter()
            .map(|(n, v)| serde_json::json!([n, v.expose()]))
            .collect(),
    )
}

/// The stored subscriptions for a reader that follows the table (routing, delivery): each
/// reading costs one statement over the rows' ids and versions, and decodes only the rows that
/// are new or changed since the last reading. With 10,000 subscriptions, decoding all of them
/// on every API create took most of the create's time.
///
/// A row's version is its `xmin`, the transaction that wrote it: every UPDATE (hand edits
/// included) writes a new row version with the writer's transaction id, so a changed row never
/// shows the version it had when it was read. (A rewrite that changes nothing, or a freeze,
/// may show a new version: the row is then decoded again, which costs only time.) Hashing the
/// row's text instead cost 90 ms a reading at 10,000 subscriptions.
///
/// Guarantees: [`Cache::load`] answers what [`load_all`] would (every row, ordered by id, a
/// change of any column seen, hand edits included); a row that no longer parses fails the
/// reading with its id, as in [`load_all`], and leaves the cache as it was.
#[derive(Debug, Default)]
pub struct Cache {
    /// By id: the row's version and its decoded subscription.
    rows: std::collections::HashMap<String, (String, std::sync::Arc<Stored>)>,
}

impl Cache {
    pub async fn load(
        &mut self,
        client: &Client,
        schema: &Schema,
    ) -> Result<Vec<std::sync::Arc<Stored>>, OutboxError> {
        let t = schema.table("subscriptions");
        let versions = client
            .query(&format!("SELECT id, xmin::text FROM {t} ORDER BY id"), &[])
            .await?;
        let is_stale = |cached: &std::collections::HashMap<_, (String, _)>, r: &Row| {
            cached
                .get(r.get::<_, &str>(0))
                .is_none_or(|(v, _)| v != r.get::<_, &str>(1))
        };
        let stale: Vec<&str> = versions
            .iter()
            .filter(|r| is_stale(&self.rows, r))
            .map(|r| r.get(0))
            .collect();
        let mut fresh = std::collections::HashMap::with_capacity(stale.len());
        if !stale.is_empty() {
            // A row changed again since the first statement is read as it is now, with the
            // version that goes with it; the next reading compares against that.
            let rows = client
                .query(
                    &format!("SELECT {COLUMNS}, xmin::text AS version FROM {t} WHERE id = ANY($1)"),
                    &[&stale],
                )
                .await?;
            for r in &rows {
                let stored = Stored::from_row(r)?;
                let version: String = r.try_get("version")?;
                fresh.insert(stored.id.clone(), (version, std::sync::Arc::new(stored)));
            }
        }
        let mut out = Vec::with_capacity(versions.len());
        let mut rows = std::collections::HashMap::with_capacity(versions.len());
        for r in &versions {
            let id: &str = r.get(0);
            let entry = if is_stale(&self.rows, r) {
                // Read again above; absent when deleted between the two statements.
                fresh.remove(id)
            } else {
                self.rows.remove(id)
            };
            let Some(entry) = entry else { continue };
            out.push(entry.1.clone());
            rows.insert(id.to_string(), entry);
        }
        self.rows = rows;
        Ok(out)
    }
}

/// Every stored subscription, ordered by id.
pub async fn load_all(client: &Client, schema: &Schema) -> Result<Vec<Stored>, OutboxError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM {} ORDER BY id",
                schema.table("subscriptions")
            ),
            &[],
        )
        .await?;
    rows.iter().map(Stored::from_row).collect()
}

/// One stored subscription.
pub async fn load_one(
    client: &impl GenericClient,
    schema: &Schema,
    id: &str,
) -> Result<Option<Stored>, OutboxError> {
    select_one(client, schema, id, "").await
}

async fn select_one(
    client: &impl GenericClient,
    schema: &Schema,
    id: &str,
    lock: &str,
) -> Result<Option<Stored>, OutboxError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM {} WHERE id = $1{lock}",
                schema.table("subscriptions")
            ),
            &[&id],
        )
        .await?;
    row.as_ref().map(Stored::from_row).transpose()
}

/// The stored forms of the subscription's columns that are not stored as they are.
struct Columns<'a> {
    sub: &'a Subscription,
    table: String,
    events: Vec<&'static str>,
    filter: Option<serde_json::Value>,
    secret: &'a str,
    previous_secret: Option<&'a str>,
    format: &'static str,
    signature: &'static str,
    headers: serde_json::Value,
    rate_limit: Option<String>,
    batch_max_events: Option<i32>,
    batch_max_wait_ms: Option<i32>,
}

impl<'a> Columns<'a> {
    fn of(sub: &'a Subscription) -> Columns<'a> {
        Columns {
            sub,
            table: sub.table.display_name(),
            events: sub.events.iter().map(|e| e.as_str()).collect(),
            filter: sub.filter.as_ref().map(|f| f.to_json()),
            secret: sub.secret.expose(),
            previous_secret: sub.previous_secret.as_ref().map(|p| p.expose()),
            format: sub.format.as_str(),
            signature: sub.signature.as_str(),
            headers: headers_to_json(&sub.headers),
            rate_limit: sub.rate_limit.map(|r| r.to_string()),
            batch_max_events: sub.batch.map(|b| b.max_events as i32),
            batch_max_wait_ms: sub.batch.map(|b| b.max_wait.as_millis() as i32),
        }
    }

    /// $1..$18 of every insert and update: id, table_name, events, url, secret, active, filter,
    /// select_columns, format, signature, previous_secret, previous_secret_expires_at, headers,
    /// signature_header, template, rate_limit, batch_max_events, batch_max_wait_ms.
    fn params(&'a self, id: &'a String) -> [&'a (dyn ToSql + Sync); 18] {
        [
            id,
            &self.table,
            &self.events,
            &self.sub.url,
            &self.secret,
            &self.sub.active,
            &self.filter,
            &self.sub.select,
            &self.format,
            &self.signature,
            &self.previous_secret,
            &self.sub.previous_secret_expires_at,
            &self.headers,
            &self.sub.signature_header,
            &self.sub.template,
            &self.rate_limit,
            &self.batch_max_events,
            &self.batch_max_wait_ms,
        ]
    }
}

/// Stores a new `source = 'api'` subscription (validated by the caller); returns it as stored.
pub async fn create(
    client: &Client,
    schema: &Schema,
    sub: &Subscription,
) -> Result<Stored, OutboxError> {
    let c = Columns::of(sub);
    let row = client
        .query_one(
            &format!(
                "INSERT INTO {} (id, source, table_name, events, url, secret, active, filter,
                     select_columns, format, signature, previous_secret, previous_secret_expires_at,
                     headers, signature_header, template, rate_limit, batch_max_events,
                     batch_max_wait_ms)
                 VALUES ($1, 'api', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                         $17, $18)
                 RETURNING {COLUMNS}",
                schema.table("subscriptions")
            ),
            &c.params(&sub.id),
        )
        .await?;
    Stored::from_row(&row)
}

/// A subscription locked for a read-modify-write; see the module doc.
pub struct Editing<'a> {
    tx: Transaction<'a>,
    schema: &'a Schema,
    /// The row as it is now, locked until [`Editing::update`], [`Editing::delete`] or drop.
    pub current: Stored,
}

/// Locks subscription `id` (`SELECT … FOR UPDATE`) for an edit; None when there is none.
pub async fn edit<'a>(
    client: &'a mut Client,
    schema: &'a Schema,
    id: &str,
) -> Result<Option<Editing<'a>>, OutboxError> {
    let tx = client.transaction().await?;
    let Some(current) = select_one(&tx, schema, id, " FOR UPDATE").await? else {
        return Ok(None);
    };
    Ok(Some(Editing {
        tx,
        schema,
        current,
    }))
}

impl Editing<'_> {
    /// Writes `v` over the locked row and commits. Activating clears a 410 Gone's deactivation.
    pub async fn update(self, sub: &Subscription) -> Result<Stored, OutboxError> {
        let c = Columns::of(sub);
        let row = self
            .tx
            .query_one(
                &format!(
                    "UPDATE {} SET table_name = $2, events = $3, url = $4, secret = $5, active = $6,
                         filter = $7, select_columns = $8, format = $9, signature = $10,
                         previous_secret = $11, previous_secret_expires_at = $12,
                         headers = $13, signature_header = $14, template = $15, rate_limit = $16,
                         batch_max_events = $17, batch_max_wait_ms = $18,
                         deactivated_at = CASE WHEN $6 THEN NULL ELSE deactivated_at END,
                         deactivated_reason = CASE WHEN $6 THEN NULL ELSE deactivated_reason END,
                         updated_at = now()
                     WHERE id = $1 RETURNING {COLUMNS}",
                    self.schema.table("subscriptions")
                ),
                &c.params(&self.current.id),
            )
            .await?;
        self.tx.commit().await?;
        Stored::from_row(&row)
    }

    /// Deletes the locked subscription with all its deliveries and their attempts, and commits;
    /// returns how many deliveries went with it.
    pub async fn delete(self) -> Result<i64, OutboxError> {
        let id = &self.current.id;
        // attempts has no foreign key (see sql/002): its rows go with their deliveries.
        let removed: i64 = self
            .tx
            .query_one(
                &format!(
                    "WITH gone AS (DELETE FROM {} WHERE subscription_id = $1 RETURNING id),
                     attempts AS (DELETE FROM {} WHERE delivery_id IN (SELECT id FROM gone))
                     SELECT count(*) FROM gone",
                    self.schema.table("deliveries"),
                    self.schema.table("attempts")
                ),
                &[id],
            )
            .await?
            .get(0);
        self.tx
            .execute(
                &format!(
                    "DELETE FROM {} WHERE id = $1",
                    self.schema.table("subscriptions")
                ),
                &[id],
            )
            .await?;
        self.tx.commit().await?;
        Ok(removed)
    }
}

/// 410 Gone: the subscription stops receiving (routing and delivery) until someone reactivates
/// it; false when it was inactive already.
pub async fn deactivate(
    client: &impl GenericClient,
    schema: &Schema,
    subscription: &str,
    reason: &str,
) -> Result<bool, OutboxError> {
    let n = client
        .execute(
            &format!(
                "UPDATE {} SET active = false, deactivated_at = now(), deactivated_reason = $2,
                     updated_at = now()
                 WHERE id = $1 AND active",
                schema.table("subscriptions")
            ),
            &[&subscription, &reason],
        )
        .await?;
    Ok(n > 0)
}

/// Makes the stored `config` subscriptions equal to the config file's (API ones untouched).
pub async fn sync_config_subscriptions(
    client: &mut Client,
    schema: &Schema,
    subs: &[&Subscription],
) -> Result<(), OutboxError> {
    let t = schema.table("subscriptions");
    let tx = client.transaction().await?;
    let ids: Vec<String> = subs.iter().map(|s| s.id.to_string()).collect();
    tx.execute(
        &format!("DELETE FROM {t} WHERE source = 'config' AND NOT (id = ANY($1))"),
        &[&ids],
    )
    .await?;
    let upsert = tx
        .prepare(&format!(
            "INSERT INTO {t} (id, source, table_name, events, url, secret, active, filter, select_columns,
                              format, signature, previous_secret, previous_secret_expires_at,
                              headers, signature_header, template, rate_limit, batch_max_events,
                              batch_max_wait_ms)
             VALUES ($1, 'config', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                     $17, $18)
             ON CONFLICT (id) DO UPDATE SET source = 'config', table_name = $2, events = $3, url = $4,
                 secret = $5, filter = $7, select_columns = $8, format = $9,
                 signature = $10, previous_secret = $11,
                 previous_secret_expires_at = $12, headers = $13, signature_header = $14,
                 template = $15, rate_limit = $16, batch_max_events = $17, batch_max_wait_ms = $18,
                 -- A receiver's 410 Gone sticks until the config gives another URL.
                 active = CASE WHEN {t}.deactivated_at IS NOT NULL AND {t}.url = $4
                               THEN false ELSE $6 END,
                 deactivated_at = CASE WHEN {t}.url = $4 THEN {t}.deactivated_at END,
                 deactivated_reason = CASE WHEN {t}.url = $4 THEN {t}.deactivated_reason END,
                 updated_at = now()"
        ))
        .await?;
    for s in subs {
        let c = Columns::of(s);
        tx.execute(&upsert, &c.params(&s.id)).await?;
    }
    tx.commit().await?;
    Ok(())
}
