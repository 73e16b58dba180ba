//! `walhook slot status` and `walhook slot recover`: the CLI twins of `GET /api/rest/_slot` and
//! `POST /api/rest/_slot/recover` (issue #18).
//!
//! Guarantees: `status` changes nothing; `recover` refuses a healthy slot, and otherwise
//! recreates the slot and publication state, writes the RESYNC markers, waits (bounded) for the
//! running daemon to deliver them, starts one backfill per active subscription and prints what
//! it did, including the subscriptions it could not backfill and why. The daemon (`walhook
//! run`, which keeps running, not ready, while the slot is broken) notices the new slot within
//! seconds and streams again; it stores the markers and performs the backfills.

use std::io::Write;
use std::time::Duration;

use super::deliveries::CliError;
use crate::config::Config;
use crate::ingest::slot::diagnose;
use crate::ingest::slot_recover::{finish, recreate, RecoverError};
use crate::outbox::{self, Schema};
use crate::pg::tls;

/// Prints the slot's state; true when it is healthy.
pub async fn status(config: &Config, out: &mut impl Write) -> Result<bool, CliError> {
    let client = outbox::connect(config).await?;
    let source = tls::connect_sql(&config.pg_config())
        .await
        .map_err(|e| CliError::Invalid(format!("source database: {e}")))?;
    let schema = Schema::new(config.outbox.schema.as_str());
    let d = diagnose(&source, &client, &schema, config.source.slot.as_str())
        .await
        .map_err(|e| CliError::Invalid(e.to_string()))?;
    writeln!(out, "{}", d.report.message())?;
    if let Some(f) = d.report.retained_fraction() {
        writeln!(
            out,
            "retained WAL: {} bytes, {:.0}% of max_slot_wal_keep_size",
            d.report.retained_bytes.unwrap_or(0),
            f * 100.0
        )?;
    }
    Ok(!d.report.health.is_broken())
}

/// Recovers a broken slot; true when every subscription got its backfill.
pub async fn recover(
    config: &Config,
    wait: Duration,
    out: &mut impl Write,
) -> Result<bool, CliError> {
    let r = recreate(config).await.map_err(cli)?;
    writeln!(
        out,
        "slot {} recreated at {} (recovery {}, was {}: {}); changes committed after {} may be missing",
        r.recovery.slot,
        r.recovery.slot_lsn,
        r.recovery.id,
        r.recovery.reason,
        r.recovery.detail,
        r.recovery
            .since_lsn
            .map_or("the start".to_string(), |l| l.to_string()),
    )?;
    writeln!(
        out,
        "RESYNC marker written for {} subscription(s); waiting up to {} s for `walhook run` to deliver them",
        r.subscriptions.len(),
        wait.as_secs()
    )?;
    out.flush()?;
    let s = finish(config, &r, None, Some(wait)).await.map_err(cli)?;
    writeln!(
        out,
        "markers: {} stored, {} delivered",
        s.markers_stored, s.markers_finished
    )?;
    for (sub, id) in &s.backfills {
        writeln!(out, "backfill bf_{id} of {sub} started")?;
    }
    for (sub, why) in &s.skipped {
        writeln!(out, "NOT backfilled: {sub}: {why}")?;
    }
    writeln!(
        out,
        "rows deleted while the slot was broken cannot be replayed; receivers should reconcile on the RESYNC marker"
    )?;
    Ok(s.skipped.is_empty())
}

fn cli(e: RecoverError) -> CliError {
    CliError::Invalid(e.to_string())
}
