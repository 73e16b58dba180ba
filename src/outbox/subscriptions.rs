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
use tokio_postgres::{Client, GenericClient, Row, Transaction};

use super::{OutboxError, Schema};
use crate::model::{EventKind, Filter, Format, Secret, SignatureScheme, Subscription};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionSource {
    Config,
    Api,
}

#[derive(Debug, Clone)]
pub struct StoredSubscription {
    pub id: String,
    pub source: SubscriptionSource,
    /// As written by the user: `orders` or `schema.orders`.
    pub table: String,
    pub events: Vec<EventKind>,
    pub url: String,
    pub secret: Secret,
    pub active: bool,
    pub filter: Option<Filter>,
    pub select: Option<Vec<String>>,
    pub format: Format,
    pub signature: SignatureScheme,
    pub previous_secret: Option<Secret>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub deactivated_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The column list [`StoredSubscription::from_row`] reads, for `SELECT {COLUMNS} FROM ...`.
pub const COLUMNS: &str = "id, source, table_name, events, url, secret, active, filter, \
     select_columns, format, signature, previous_secret, previous_secret_expires_at, \
     deactivated_reason, created_at, updated_at";

impl StoredSubscription {
    pub fn from_row(row: &Row) -> Result<StoredSubscription, OutboxError> {
        let id: String = row.try_get("id")?;
        let bad = |field: &str, detail: String| OutboxError::BadSubscription {
            id: id.clone(),
            field: field.to_string(),
            detail,
        };
        let source = match row.try_get::<_, &str>("source")? {
            "config" => SubscriptionSource::Config,
            "api" => SubscriptionSource::Api,
            other => return Err(bad("source", format!("unknown source {other:?}"))),
        };
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
            .map(|v| Filter::from_json(&v).map_err(|e| bad("filter", e)))
            .transpose()?;
        let format_s: &str = row.try_get("format")?;
        let format = Format::parse(format_s)
            .ok_or_else(|| bad("format", format!("unknown format {format_s:?}")))?;
        let sig_s: &str = row.try_get("signature")?;
        let signature = SignatureScheme::parse(sig_s)
            .ok_or_else(|| bad("signature", format!("unknown signature scheme {sig_s:?}")))?;
        Ok(StoredSubscription {
            source,
            table: row.try_get("table_name")?,
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
            deactivated_reason: row.try_get("deactivated_reason")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            id,
        })
    }

    /// The previous secret while it is still valid at `now`.
    pub fn previous_secret_at(&self, now: DateTime<Utc>) -> Option<&Secret> {
        match (&self.previous_secret, self.previous_secret_expires_at) {
            (Some(s), Some(until)) if now < until => Some(s),
            _ => None,
        }
    }
}

/// Every stored subscription, ordered by id.
pub async fn load_all(
    client: &Client,
    schema: &Schema,
) -> Result<Vec<StoredSubscription>, OutboxError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM {} ORDER BY id",
                schema.table("subscriptions")
            ),
            &[],
        )
        .await?;
    rows.iter().map(StoredSubscription::from_row).collect()
}

/// One stored subscription.
pub async fn load_one(
    client: &impl GenericClient,
    schema: &Schema,
    id: &str,
) -> Result<Option<StoredSubscription>, OutboxError> {
    select_one(client, schema, id, "").await
}

async fn select_one(
    client: &impl GenericClient,
    schema: &Schema,
    id: &str,
    lock: &str,
) -> Result<Option<StoredSubscription>, OutboxError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM {} WHERE id = $1{lock}",
                schema.table("subscriptions")
            ),
            &[&id],
        )
        .await?;
    row.as_ref().map(StoredSubscription::from_row).transpose()
}

/// The values of a subscription as the API writes them (create and update), checked already.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    /// As written by the user: `orders` or `schema.orders`.
    pub table: &'a str,
    pub events: &'a [EventKind],
    pub url: &'a str,
    pub secret: &'a str,
    pub active: bool,
    pub filter: Option<&'a Filter>,
    pub select: Option<&'a [String]>,
    pub format: Format,
    pub signature: SignatureScheme,
    pub previous_secret: Option<&'a str>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

impl Values<'_> {
    fn event_names(&self) -> Vec<&'static str> {
        self.events.iter().map(|e| e.as_str()).collect()
    }
}

/// Stores a new `source = 'api'` subscription with id `id`; returns it as stored.
pub async fn create(
    client: &Client,
    schema: &Schema,
    id: &str,
    v: &Values<'_>,
) -> Result<StoredSubscription, OutboxError> {
    let select: Option<Vec<&str>> = v.select.map(|s| s.iter().map(String::as_str).collect());
    let row = client
        .query_one(
            &format!(
                "INSERT INTO {} (id, source, table_name, events, url, secret, active, filter,
                     select_columns, format, signature, previous_secret, previous_secret_expires_at)
                 VALUES ($1, 'api', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 RETURNING {COLUMNS}",
                schema.table("subscriptions")
            ),
            &[
                &id,
                &v.table,
                &v.event_names(),
                &v.url,
                &v.secret,
                &v.active,
                &v.filter.map(|f| f.to_json()),
                &select,
                &v.format.as_str(),
                &v.signature.as_str(),
                &v.previous_secret,
                &v.previous_secret_expires_at,
            ],
        )
        .await?;
    StoredSubscription::from_row(&row)
}

/// A subscription locked for a read-modify-write; see the module doc.
pub struct Editing<'a> {
    tx: Transaction<'a>,
    schema: &'a Schema,
    /// The row as it is now, locked until [`Editing::update`], [`Editing::delete`] or drop.
    pub current: StoredSubscription,
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
    pub async fn update(self, v: &Values<'_>) -> Result<StoredSubscription, OutboxError> {
        let select: Option<Vec<&str>> = v.select.map(|s| s.iter().map(String::as_str).collect());
        let row = self
            .tx
            .query_one(
                &format!(
                    "UPDATE {} SET table_name = $2, events = $3, url = $4, secret = $5, active = $6,
                         filter = $7, select_columns = $8, format = $9, signature = $10,
                         previous_secret = $11, previous_secret_expires_at = $12,
                         deactivated_at = CASE WHEN $6 THEN NULL ELSE deactivated_at END,
                         deactivated_reason = CASE WHEN $6 THEN NULL ELSE deactivated_reason END,
                         updated_at = now()
                     WHERE id = $1 RETURNING {COLUMNS}",
                    self.schema.table("subscriptions")
                ),
                &[
                    &self.current.id,
                    &v.table,
                    &v.event_names(),
                    &v.url,
                    &v.secret,
                    &v.active,
                    &v.filter.map(|f| f.to_json()),
                    &select,
                    &v.format.as_str(),
                    &v.signature.as_str(),
                    &v.previous_secret,
                    &v.previous_secret_expires_at,
                ],
            )
            .await?;
        self.tx.commit().await?;
        StoredSubscription::from_row(&row)
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
                              format, signature, previous_secret, previous_secret_expires_at)
             VALUES ($1, 'config', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::timestamptz)
             ON CONFLICT (id) DO UPDATE SET source = 'config', table_name = $2, events = $3, url = $4,
                 secret = $5, filter = $7, select_columns = $8, format = $9,
                 signature = $10, previous_secret = $11,
                 previous_secret_expires_at = $12::text::timestamptz,
                 -- A receiver's 410 Gone sticks until the config gives another URL.
                 active = CASE WHEN {t}.deactivated_at IS NOT NULL AND {t}.url = $4
                               THEN false ELSE $6 END,
                 deactivated_at = CASE WHEN {t}.url = $4 THEN {t}.deactivated_at END,
                 deactivated_reason = CASE WHEN {t}.url = $4 THEN {t}.deactivated_reason END,
                 updated_at = now()"
        ))
        .await?;
    for s in subs {
        let events: Vec<&str> = s.events.iter().map(|e| e.as_str()).collect();
        let filter: Option<serde_json::Value> = s.filter.as_ref().map(|f| f.to_json());
        let expires = s.previous_secret_expires_at.map(|t| t.to_rfc3339());
        tx.execute(
            &upsert,
            &[
                &s.id.as_str(),
                &s.table.display_name(),
                &events,
                &s.url.as_str(),
                &s.secret.expose(),
                &s.active,
                &filter,
                &s.select,
                &s.format.as_str(),
                &s.signature.as_str(),
                &s.previous_secret.as_ref().map(|p| p.expose()),
                &expires,
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
