//! The durable outbox in Postgres: schema migrations, the checkpoint, config subscriptions.
//!
//! Guarantees (DESIGN.md invariant 1): the deliveries of a source transaction and the checkpoint
//! (its commit LSN) are committed in one outbox transaction ([`enqueue`]); the checkpoint only
//! moves forward; migrations are applied once, in order, under an advisory lock, so several
//! instances starting together do not race.

pub mod enqueue;
pub mod gauges;
pub mod retention;
pub mod subscriptions;

use tokio_postgres::Client;
use tracing::info;

use crate::config::{quote_ident, SubscriptionConfig};
use crate::model::Lsn;
use crate::pg::error_text;

const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../sql/001_outbox.sql")),
    (2, include_str!("../../sql/002_delivery.sql")),
    (3, include_str!("../../sql/003_owners.sql")),
];

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox database: {}", error_text(.0))]
    Sql(#[from] tokio_postgres::Error),
    #[error("outbox migration {version} failed: {}", error_text(.source))]
    Migration {
        version: i32,
        source: tokio_postgres::Error,
    },
    #[error("cannot connect to the outbox database: {message}")]
    Connect { message: String, retryable: bool },
    #[error("stored subscription {id:?}: field {field}: {detail}")]
    BadSubscription {
        id: String,
        field: String,
        detail: String,
    },
}

impl OutboxError {
    /// Connection loss and server restarts are retryable; SQL and migration errors are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            OutboxError::Sql(e) => {
                e.is_closed()
                    || e.code().is_none_or(|c| {
                        let c = c.code();
                        c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
                    })
            }
            // A wrong password or a missing database does not fix itself.
            OutboxError::Connect { retryable, .. } => *retryable,
            OutboxError::Migration { .. } | OutboxError::BadSubscription { .. } => false,
        }
    }
}

/// The outbox's schema, quoted for SQL.
#[derive(Debug, Clone)]
pub struct Schema(pub String);

impl Schema {
    pub fn new(name: &str) -> Schema {
        Schema(quote_ident(name))
    }
    pub fn table(&self, t: &str) -> String {
        format!("{}.{}", self.0, t)
    }
}

/// Applies missing migrations; returns the versions applied now.
pub async fn migrate(client: &mut Client, schema: &Schema) -> Result<Vec<i32>, OutboxError> {
    let tx = client.transaction().await?;
    // Serialises concurrent starts; released at commit.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('walhook-migrate'))",
        &[],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
             version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        s = schema.0
    ))
    .await?;
    let done: Vec<i32> = tx
        .query(
            &format!("SELECT version FROM {}", schema.table("schema_migrations")),
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        let sql = sql.replace("{schema}", &schema.0);
        tx.batch_execute(&sql)
            .await
            .map_err(|source| OutboxError::Migration {
                version: *version,
                source,
            })?;
        tx.execute(
            &format!(
                "INSERT INTO {} (version) VALUES ($1)",
                schema.table("schema_migrations")
            ),
            &[version],
        )
        .await?;
        info!(version, schema = %schema.0, "applied outbox migration");
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}

pub async fn load_checkpoint(
    client: &Client,
    schema: &Schema,
    slot: &str,
) -> Result<Option<Lsn>, OutboxError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT commit_lsn FROM {} WHERE slot = $1",
                schema.table("checkpoint")
            ),
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| Lsn(r.get::<_, i64>(0) as u64)))
}

/// Makes the stored `config` subscriptions equal to the config file's (API ones untouched).
pub async fn sync_config_subscriptions(
    client: &mut Client,
    schema: &Schema,
    subs: &[&SubscriptionConfig],
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
        let select: Option<Vec<String>> = s
            .select
            .as_ref()
            .map(|v| v.iter().map(|c| c.to_string()).collect());
        tx.execute(
            &upsert,
            &[
                &s.id.as_str(),
                &s.table.as_str(),
                &events,
                &s.url.as_str(),
                &s.secret.expose(),
                &s.active,
                &filter,
                &select,
                &s.format.as_str(),
                &s.signature.as_str(),
                &s.previous_secret.as_ref().map(|p| p.expose()),
                &s.previous_secret_expires_at.as_ref().map(|t| t.as_str()),
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
