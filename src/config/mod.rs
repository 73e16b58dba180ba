//! `config.toml`: what walhook reads, and the errors it gives when the file is wrong.
//!
//! Guarantees:
//! - every error names the key at fault and, for syntax and type errors, the line and column
//!   (unknown keys are errors, not silently ignored);
//! - any string value may use `${ENV_VAR}`; a variable that is not set is an error naming it;
//! - secrets are held in [`Secret`], whose `Debug`/`Display` never show the value.
//!
//! Checks that need the database (tables and columns exist) live in `route` and `check`.

mod delivery;
pub mod duration;
mod env;
mod telemetry;

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::model::egress::EgressPolicy;
use crate::model::options::DEFAULT_BATCH_WAIT;
pub use crate::model::subscription::{check_standard_secret, Format, SignatureScheme};
use crate::model::subscription::{dedup_events, Invalid, Origin, Rules, Subscription};
pub use crate::model::{
    quote_ident, Batch, Condition, EventKind, Filter, Op, RateLimit, Secret, TableName,
};
pub use delivery::{ApiConfig, DeliveryConfig};
pub use duration::Duration;
pub use env::EnvString;
pub use telemetry::TelemetryConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Syntax, type and unknown-key errors; toml's message already names line, column and key.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: line {line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    pub project: ProjectConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default, rename = "subscriptions")]
    raw_subscriptions: Vec<Spanned<RawSubscription>>,
    /// Filled from `[[subscriptions]]` by [`Config::parse`], every one validated. Shared: the
    /// config is cloned into several tasks, and thousands of subscriptions need not be copied.
    #[serde(skip)]
    subscriptions: std::sync::Arc<Vec<Subscription>>,
    /// The ids of the subscriptions with `backfill = true`, in file order.
    #[serde(skip)]
    backfill_on_create: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Schema holding walhook's tables.
    #[serde(default = "default_walhook")]
    pub schema: EnvString,
    /// Another database for the outbox; by default the source database.
    #[serde(default)]
    pub url: Option<Secret>,
    /// Delivered rows are pruned after this long.
    #[serde(default = "default_retention")]
    pub retention: Duration,
    /// Dead-lettered rows are kept this long.
    #[serde(default = "default_dead_retention")]
    pub dead_retention: Duration,
    /// For `url`: send a cleartext or MD5 password without TLS when the server asks for one.
    #[serde(default)]
    pub allow_insecure_password: bool,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            schema: default_walhook(),
            url: None,
            retention: default_retention(),
            dead_retention: default_dead_retention(),
            allow_insecure_password: false,
        }
    }
}

fn default_retention() -> Duration {
    Duration(std::time::Duration::from_secs(24 * 3600))
}
fn default_dead_retention() -> Duration {
    Duration(std::time::Duration::from_secs(7 * 24 * 3600))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub url: Secret,
    #[serde(default = "default_walhook")]
    pub slot: EnvString,
    #[serde(default = "default_walhook")]
    pub publication: EnvString,
    #[serde(default = "default_true")]
    pub manage_replica_identity: bool,
    /// Send a cleartext or MD5 password without TLS when the server asks for one (refused by
    /// default: anyone on the path could read or replay it).
    #[serde(default)]
    pub allow_insecure_password: bool,
    /// What `walhook run` does when its slot was invalidated, dropped or recreated behind its
    /// back: stay up and report it (`stop`, the default), or recover by itself (`recover`).
    #[serde(default)]
    pub on_slot_lost: OnSlotLost,
    /// Warn when the slot's retained WAL passes this fraction of `max_slot_wal_keep_size`.
    #[serde(default = "default_wal_warn_fraction")]
    pub slot_wal_warn_fraction: f64,
}

/// `[source] on_slot_lost`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSlotLost {
    /// Stay up, not ready, until `walhook slot recover` (or the API call).
    #[default]
    Stop,
    /// Recreate the slot and backfill every subscription by itself.
    Recover,
}

fn default_wal_warn_fraction() -> f64 {
    0.8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    pub id: EnvString,
    #[serde(default = "default_environment")]
    pub environment: EnvString,
}

/// A `[[subscriptions]]` entry as written; [`Config::parse`] turns each into a validated
/// [`Subscription`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscription {
    id: EnvString,
    table: EnvString,
    events: Vec<EventKind>,
    url: EnvString,
    secret: Secret,
    #[serde(default = "default_true")]
    active: bool,
    #[serde(default)]
    filter: Option<Filter>,
    #[serde(default)]
    select: Option<Vec<EnvString>>,
    #[serde(default)]
    format: Format,
    #[serde(default)]
    signature: SignatureScheme,
    #[serde(default)]
    previous_secret: Option<Secret>,
    /// RFC 3339; required with `previous_secret`.
    #[serde(default)]
    previous_secret_expires_at: Option<EnvString>,
    /// Static headers; values may use `${ENV}` and are secrets.
    #[serde(default)]
    headers: std::collections::BTreeMap<String, Secret>,
    #[serde(default)]
    signature_header: Option<EnvString>,
    /// Taken literally: no `${ENV}` expansion inside a template.
    #[serde(default)]
    template: Option<String>,
    /// `"50/s"`, `"100/m"`, `"1000/h"`.
    #[serde(default)]
    rate_limit: Option<EnvString>,
    /// `{ max_events = 100, max_wait = "50ms" }`.
    #[serde(default)]
    batch: Option<RawBatch>,
    /// Backfill the table once, when the subscription is first stored.
    #[serde(default)]
    backfill: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    max_events: i64,
    #[serde(default)]
    max_wait: Option<Duration>,
}

fn default_walhook() -> EnvString {
    EnvString("walhook".into())
}
fn default_environment() -> EnvString {
    EnvString("master".into())
}
fn default_true() -> bool {
    true
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(text, path)?;
        Ok(config)
    }

    fn validate(&mut self, text: &str, path: &str) -> Result<(), ConfigError> {
        let invalid = |span: std::ops::Range<usize>, message: String| ConfigError::Invalid {
            path: path.to_string(),
            line: line_of(text, span.start),
            message,
        };
        let whole_file = |message: String| ConfigError::Invalid {
            path: path.to_string(),
            line: 1,
            message,
        };
        self.delivery.validate().map_err(|e| whole_file(e.0))?;
        self.telemetry.validate().map_err(whole_file)?;
        let rules = Rules {
            egress: EgressPolicy::from_config(&self.delivery),
            own_schema: self
                .outbox
                .url
                .is_none()
                .then(|| self.outbox.schema.as_str().to_string()),
        };
        let mut seen = std::collections::HashMap::new();
        let mut subscriptions = Vec::with_capacity(self.raw_subscriptions.len());
        for (i, raw) in std::mem::take(&mut self.raw_subscriptions)
            .into_iter()
            .enumerate()
        {
            let span = raw.span();
            let r = raw.into_inner();
            let at = format!("subscriptions[{i}] (id {:?})", r.id.as_str());
            if let Some(prev) = seen.insert(r.id.as_str().to_string(), span.clone()) {
                return Err(invalid(
                    span,
                    format!(
                        "{at}.id: duplicate subscription id, already used at line {}",
                        line_of(text, prev.start)
                    ),
                ));
            }
            let backfill = r.backfill;
            let sub = subscription_from_raw(r)
                .and_then(|s| s.validate(&rules).map(|()| s))
                .map_err(|e| invalid(span.clone(), format!("{at}.{e}")))?;
            if backfill {
                self.backfill_on_create.push(sub.id.clone());
            }
            subscriptions.push(sub);
        }
        self.subscriptions = std::sync::Arc::new(subscriptions);
        self.api
            .listen
            .as_str()
            .parse::<std::net::SocketAddr>()
            .map_err(|_| {
                whole_file(format!(
                    "api.listen: {:?} is not an address like \"127.0.0.1:8080\"",
                    self.api.listen.as_str()
                ))
            })?;
        let url = self.source.url.expose();
        crate::pg::tls::PgConfig::parse(url).map_err(|e| ConfigError::Invalid {
            path: path.to_string(),
            line: text
                .lines()
                .position(|l| l.trim_start().starts_with("url"))
                .map_or(1, |i| i + 1),
            // Neither PgConfig's nor tokio-postgres's message ever echoes the password.
            message: format!("source.url: not a valid Postgres connection string: {e}"),
        })?;
        if let Some(u) = &self.outbox.url {
            crate::pg::tls::PgConfig::parse(u.expose()).map_err(|e| ConfigError::Invalid {
                path: path.to_string(),
                line: 1,
                message: format!("outbox.url: not a valid Postgres connection string: {e}"),
            })?;
        }
        let f = self.source.slot_wal_warn_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return Err(whole_file(format!(
                "source.slot_wal_warn_fraction: {f} must be greater than 0 and at most 1 \
                 (a fraction of max_slot_wal_keep_size, e.g. 0.8)"
            )));
        }
        for (key, v) in [
            ("source.slot", self.source.slot.as_str()),
            ("source.publication", self.source.publication.as_str()),
            ("outbox.schema", self.outbox.schema.as_str()),
        ] {
            if v.is_empty()
                || v.len() > 63
                || !v
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(ConfigError::Invalid {
                    path: path.to_string(),
                    line: 1,
                    message: format!(
                        "{key}: {v:?} must be 1-63 characters of lower-case letters, digits and '_'"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The ids of the subscriptions with `backfill = true`: each is backfilled once, when walhook
    /// first stores it (the backfills mark it `on_create`, so it happens once).
    pub fn backfill_on_create(&self) -> &[String] {
        &self.backfill_on_create
    }

    /// config.toml's subscriptions, validated, in file order.
    pub fn subscriptions(&self) -> impl ExactSizeIterator<Item = &Subscription> {
        self.subscriptions.iter()
    }

    pub fn pg_config(&self) -> crate::pg::tls::PgConfig {
        let mut cfg = with_app_name(
            self.source
                .url
                .expose()
                .parse()
                .expect("source.url validated at load"),
        );
        cfg.allow_insecure_password(self.source.allow_insecure_password);
        cfg
    }

    /// Where the outbox lives: `outbox.url`, or the source database.
    pub fn outbox_pg_config(&self) -> crate::pg::tls::PgConfig {
        match &self.outbox.url {
            Some(u) => {
                let mut cfg =
                    with_app_name(u.expose().parse().expect("outbox.url validated at load"));
                cfg.allow_insecure_password(self.outbox.allow_insecure_password);
                cfg
            }
            None => self.pg_config(),
        }
    }
}

/// walhook's defaults for every connection, where the URL does not set its own: its name in
/// `pg_stat_activity`, and TCP keepalives that notice a silently dropped path within about a
/// minute (30 s idle + 3 probes 10 s apart) instead of the kernel's two hours, and a bounded
/// connect.
fn with_app_name(mut cfg: crate::pg::tls::PgConfig) -> crate::pg::tls::PgConfig {
    if cfg.get_application_name().is_none() {
        cfg.application_name("walhook");
    }
    // tokio-postgres's default idle time is 2 hours; a URL that asks for another keeps it.
    if cfg.get_keepalives_idle() == std::time::Duration::from_secs(2 * 60 * 60) {
        cfg.keepalives_idle(std::time::Duration::from_secs(30));
    }
    if cfg.get_keepalives_interval().is_none() {
        cfg.keepalives_interval(std::time::Duration::from_secs(10));
    }
    if cfg.get_keepalives_retries().is_none() {
        cfg.keepalives_retries(3);
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(std::time::Duration::from_secs(10));
    }
    cfg
}

/// The TOML shape to the model: parses what serde left as text (table, times).
fn subscription_from_raw(r: RawSubscription) -> Result<Subscription, Invalid> {
    let bad = |field: &'static str, message: String| Invalid { field, message };
    let table = TableName::parse(r.table.as_str()).map_err(|m| bad("table", m.0))?;
    let previous_secret_expires_at = r
        .previous_secret_expires_at
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t.as_str())
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| {
                    bad(
                        "previous_secret_expires_at",
                        format!(
                            "{:?} is not an RFC 3339 time like \"2026-12-01T00:00:00Z\"",
                            t.as_str()
                        ),
                    )
                })
        })
        .transpose()?;
    let rate_limit = r
        .rate_limit
        .map(|r| RateLimit::parse(r.as_str()).map_err(|m| bad("rate_limit", m.0)))
        .transpose()?;
    let batch = r
        .batch
        .map(|b| {
            let wait = b.max_wait.map_or(DEFAULT_BATCH_WAIT, |d| d.0);
            Batch::new(b.max_events, wait).map_err(|m| bad("batch", m.0))
        })
        .transpose()?;
    Ok(Subscription {
        id: r.id.0,
        origin: Origin::Config,
        table,
        events: dedup_events(&r.events),
        url: r.url.0,
        secret: r.secret,
        active: r.active,
        filter: r.filter,
        select: r.select.map(|v| v.into_iter().map(|c| c.0).collect()),
        format: r.format,
        signature: r.signature,
        previous_secret: r.previous_secret,
        previous_secret_expires_at,
        headers: r.headers.into_iter().collect(),
        signature_header: r.signature_header.map(|h| h.0),
        template: r.template,
        rate_limit,
        batch,
    })
}

#[cfg(test)]
mod tests;
