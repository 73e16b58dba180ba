//! The durable outbox in Postgres: EVERY statement on walhook's own schema lives under this
//! module (migrations, the checkpoint, enqueue, subscriptions, the delivery queue, listing and
//! replay, retention, gauges); the layers above call typed functions and never write SQL.
//!
//! Guarantees (ARCHITECTURE.md invariant 1): the deliveries of a source transaction and the checkpoint
//! (its commit LSN) are committed in one outbox transaction ([`enqueue`]); the checkpoint only
//! moves forward; migrations are applied once, in order, under an advisory lock, so several
//! instances starting together do not race.

pub mod backfills;
pub mod console;
pub mod deliveries;
pub mod enqueue;
pub mod gauges;
pub mod handoff;
pub mod queue;
pub mod retention;
pub mod slot;
pub mod subscriptions;

pub use subscriptions::sync_config_subscriptions;

use tokio_postgres::Client;
use tracing::info;

use crate::config::Config;
use crate::model::{quote_ident, Lsn};
use crate::pg::{classify, error_text, tls};

const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../sql/001_outbox.sql")),
    (2, include_str!("../../sql/002_delivery.sql")),
    (3, include_str!("../../sql/003_owners.sql")),
    (4, include_str!("../../sql/004_sessions_sequences.sql")),
    (5, include_str!("../../sql/005_delivery_options.sql")),
    (6, include_str!("../../sql/006_backfills.sql")),
    (7, include_str!("../../sql/007_batching.sql")),
    (8, include_str!("../../sql/008_id_blocks.sql")),
    (9, include_str!("../../sql/009_slot.sql")),
    (10, include_str!("../../sql/010_backfill_on_create.sql")),
    (11, include_str!("../../sql/011_claim_tail.sql")),
    (12, include_str!("../../sql/012_success_outcome.sql")),
    (13, include_str!("../../sql/013_replays.sql")),
    (14, include_str!("../../sql/014_one_subscription_index.sql")),
    (15, include_str!("../../sql/015_delivered_cursor.sql")),
    (16, include_str!("../../sql/016_rare_rows.sql")),
    (17, include_str!("../../sql/017_run_columns.sql")),
    (
        18,
        include_str!("../../sql/018_claims_without_key_index.sql"),
    ),
    (19, include_str!("../../sql/019_full_pages.sql")),
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

impl From<crate::pg::PgError> for OutboxError {
    fn from(e: crate::pg::PgError) -> Self {
        match e {
            crate::pg::PgError::Sql(e) => OutboxError::Sql(e),
            other => OutboxError::Connect {
                retryable: other.is_retryable(),
                message: other.to_string(),
            },
        }
    }
}

impl OutboxError {
    /// Transient failures (connection loss, server restarts, conflicts; see [`classify`]) are
    /// retryable; SQL and migration errors are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            OutboxError::Sql(e) => classify(e).is_retryable(),
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

/// Opens a plain (unpooled) connection to the outbox database of `config`.
pub async fn connect(config: &Config) -> Result<Client, OutboxError> {
    tls::connect_sql(&config.outbox_pg_config())
        .await
        .map_err(|e| OutboxError::Connect {
            message: e.to_string(),
            retryable: e.is_retryable(),
        })
}

/// `walhook migrate`: connects to the outbox of `config` and applies missing migrations;
/// returns the versions applied now.
pub async fn migrate_config(config: &Config) -> Result<Vec<i32>, OutboxError> {
    let mut client = connect(config).await?;
    migrate(&mut client, &Schema::new(config.outbox.schema.as_str())).await
}

/// Answers whether the outbox database runs a statement (readiness probes).
pub async fn ping(client: &Client) -> Result<(), OutboxError> {
    client.simple_query("SELECT 1").await?;
    Ok(())
}

/// Applies missing migrations; returns the versions applied now.
pub async fn migrate(client: &mut Client, schema: &Schema) -> Result<Vec<i32>, OutboxError> {
    let tx = client.transaction().await?;
    // "already exists, skipping" NOTICEs on every start are noise in the operator's log.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
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
