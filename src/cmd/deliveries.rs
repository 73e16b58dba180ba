//! The CLI twins of the API: `walhook deliveries list|replay` and `walhook send-test`. They talk
//! to the outbox database directly through the same outbox functions as the handlers
//! ([`crate::outbox::deliveries`], [`crate::api::ping`]), so they work while the daemon (and its API)
//! is down.
//!
//! Guarantees: the same rules as the API (a delivery in flight is not replayed; a replay only
//! touches the named subscription's deliveries); output is one line per delivery, or one
//! summary line; secrets are never printed.

use std::io::Write;

use chrono::{DateTime, Utc};

use crate::api::common::time;
use crate::api::deliveries::{format_id, parse_id};
use crate::api::ping::{self, PingError};
use crate::config::Config;
use crate::outbox::deliveries::{self, ListQuery, ReplayOne, STATUSES};
use crate::outbox::subscriptions::load_one;
use crate::outbox::{self, OutboxError, Schema};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(
        "no subscription with id {0:?} in the outbox (has `walhook run` or `walhook migrate` run?)"
    )]
    NoSubscription(String),
    #[error("no delivery {0} for this subscription")]
    NoDelivery(String),
    #[error("{0} is not finished: it is queued or being attempted; only delivered or dead deliveries are replayed")]
    Unfinished(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Ping(#[from] PingError),
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

/// What `walhook deliveries replay` replays.
#[derive(Debug, Clone)]
pub enum ReplayTarget {
    /// One delivery, `del_<n>`.
    Delivery(String),
    /// Every dead letter, or those dead-lettered at or after the time (RFC 3339).
    Dead { since: Option<String> },
}

async fn connect(
    config: &Config,
    subscription: &str,
) -> Result<(tokio_postgres::Client, Schema), CliError> {
    let client = outbox::connect(config).await?;
    let schema = Schema::new(config.outbox.schema.as_str());
    if load_one(&client, &schema, subscription).await?.is_none() {
        return Err(CliError::NoSubscription(subscription.to_string()));
    }
    Ok((client, schema))
}

/// `walhook deliveries list`: one line per delivery, newest first.
pub async fn deliveries_list(
    config: &Config,
    subscription: &str,
    status: Option<&str>,
    limit: i64,
    out: &mut impl Write,
) -> Result<usize, CliError> {
    if let Some(s) = status {
        if !STATUSES.contains(&s) {
            return Err(CliError::Invalid(format!(
                "--status {s:?}: expected one of {}",
                STATUSES.join(", ")
            )));
        }
    }
    if !(1..=deliveries::MAX_LIMIT).contains(&limit) {
        return Err(CliError::Invalid(format!(
            "--limit {limit}: expected 1 to {}",
            deliveries::MAX_LIMIT
        )));
    }
    let (client, schema) = connect(config, subscription).await?;
    let q = ListQuery {
        status: status.map(str::to_string),
        limit,
        before: None,
        after_sequence: None,
    };
    let rows = deliveries::list(&client, &schema, subscription, &q).await?;
    for d in &rows {
        let http = d.http_status.map_or("-".to_string(), |s| s.to_string());
        write!(
            out,
            "{}\t{}\t{}\t{}\thttp={http}\tattempts={}\tcreated={}",
            format_id(d.id),
            d.event_id,
            d.event,
            d.status,
            d.attempts,
            time(d.created_at)
        )?;
        if let Some(e) = &d.last_error {
            // One delivery, one line, whatever the receiver's error said.
            write!(out, "\terror={}", e.replace(['\n', '\r', '\t'], " "))?;
        }
        writeln!(out)?;
    }
    Ok(rows.len())
}

/// `walhook deliveries replay`: prints a summary line; returns how many were replayed.
pub async fn deliveries_replay(
    config: &Config,
    subscription: &str,
    target: ReplayTarget,
    out: &mut impl Write,
) -> Result<u64, CliError> {
    let (client, schema) = connect(config, subscription).await?;
    match target {
        ReplayTarget::Delivery(d) => {
            let id = parse_id(&d).ok_or_else(|| {
                CliError::Invalid(format!("--delivery {d:?}: expected an id like del_42"))
            })?;
            match deliveries::replay_one(&client, &schema, subscription, id).await? {
                ReplayOne::Replayed(r) => {
                    writeln!(
                        out,
                        "replayed {} ({}): pending, due now",
                        format_id(r.id),
                        r.event_id
                    )?;
                    Ok(1)
                }
                ReplayOne::NotFound => Err(CliError::NoDelivery(d)),
                ReplayOne::Unfinished => Err(CliError::Unfinished(d)),
            }
        }
        ReplayTarget::Dead { since } => {
            let since = since
                .map(|s| {
                    DateTime::parse_from_rfc3339(&s)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|_| {
                            CliError::Invalid(format!(
                                "--since {s:?}: expected an RFC 3339 time like 2026-12-01T00:00:00Z"
                            ))
                        })
                })
                .transpose()?;
            let n = deliveries::replay_dead(&client, &schema, subscription, since).await?;
            writeln!(out, "replayed {n} dead letter(s) of {subscription}")?;
            Ok(n)
        }
    }
}

/// `walhook send-test`: sends a signed ping; returns whether the receiver answered 2xx.
pub async fn send_test(
    config: &Config,
    subscription: &str,
    out: &mut impl Write,
) -> Result<bool, CliError> {
    let client = outbox::connect(config).await?;
    let schema = Schema::new(config.outbox.schema.as_str());
    let sub = load_one(&client, &schema, subscription)
        .await?
        .ok_or_else(|| CliError::NoSubscription(subscription.to_string()))?;
    let r = ping::send(
        &sub,
        config.project.id.as_str(),
        config.project.environment.as_str(),
        &config.delivery,
    )
    .await?;
    let status = r.http_status.map_or("-".to_string(), |s| s.to_string());
    write!(
        out,
        "{subscription} http={status} duration_ms={}",
        r.duration_ms
    )?;
    if let Some(e) = &r.error {
        write!(out, " error={}", e.replace(['\n', '\r'], " "))?;
    }
    writeln!(out)?;
    Ok(r.error.is_none() && r.http_status.is_some_and(|s| (200..300).contains(&s)))
}
