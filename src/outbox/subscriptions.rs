//! Subscriptions as stored in the outbox schema: the runtime source of truth for routing and
//! delivery. Rows with `source = 'config'` mirror config.toml (rewritten at start and on SIGHUP);
//! rows with `source = 'api'` belong to the management API.
//!
//! Guarantees: a row that no longer parses (hand-edited, say) is reported with its id and the
//! field at fault, never silently skipped; secrets stay inside [`Secret`].

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Row};

use super::{OutboxError, Schema};
use crate::config::{EventKind, Filter, Format, Secret, SignatureScheme};

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
    client: &Client,
    schema: &Schema,
    id: &str,
) -> Result<Option<StoredSubscription>, OutboxError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM {} WHERE id = $1",
                schema.table("subscriptions")
            ),
            &[&id],
        )
        .await?;
    row.as_ref().map(StoredSubscription::from_row).transpose()
}
