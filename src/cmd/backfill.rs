//! `walhook backfill`: the CLI twin of `POST /api/rest/_webhooks/{id}/backfill`. It checks and
//! stores the backfill through the same functions as the API ([`crate::outbox::backfills`]),
//! then follows its progress in the outbox until it ends; the running daemon (`walhook run`,
//! the instance streaming from the slot) performs it.
//!
//! Guarantees: the same checks as the API (a table with a primary key, a `where` that is one
//! boolean expression, checked with EXPLAIN in a READ ONLY transaction: nothing runs when
//! refused); progress is one line per interval (rows done/estimated, rate, ETA), redrawn in
//! place on a terminal; stopping the command (Ctrl-C) stops following, not the backfill.

use std::io::Write;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::deliveries::CliError;
use crate::config::Config;
use crate::outbox::backfills::{self, Backfill, BackfillRefused};
use crate::outbox::subscriptions::load_one;
use crate::outbox::{self, Schema};
use crate::pg::tls;

/// What to backfill.
pub struct Request<'a> {
    pub subscription: &'a str,
    pub where_sql: Option<&'a str>,
    pub chunk_size: i32,
    pub pause_ms: i32,
}

/// Starts the backfill and follows it; true when it ended `done`.
pub async fn run(
    config: &Config,
    req: &Request<'_>,
    terminal: bool,
    out: &mut impl Write,
    cancel: &CancellationToken,
) -> Result<bool, CliError> {
    if !(1..=10_000).contains(&req.chunk_size) {
        return Err(CliError::Invalid(
            "--chunk-size must be between 1 and 10000".into(),
        ));
    }
    if !(0..=60_000).contains(&req.pause_ms) {
        return Err(CliError::Invalid(
            "--pause-ms must be between 0 and 60000".into(),
        ));
    }
    let client = outbox::connect(config).await?;
    let schema = Schema::new(config.outbox.schema.as_str());
    let sub = load_one(&client, &schema, req.subscription)
        .await?
        .ok_or_else(|| CliError::NoSubscription(req.subscription.to_string()))?;
    let mut source = tls::connect_sql(&config.pg_config())
        .await
        .map_err(|e| CliError::Invalid(format!("source database: {e}")))?;
    let refused = |e: BackfillRefused| match e {
        BackfillRefused::Db(e) => CliError::Outbox(e),
        other => CliError::Invalid(other.to_string()),
    };
    backfills::table_info(&source, &sub.table)
        .await
        .map_err(refused)?;
    let estimate = backfills::check_where(&mut source, &sub.table, req.where_sql)
        .await
        .map_err(refused)?;
    drop(source);
    let b = backfills::create(
        &client,
        &schema,
        req.subscription,
        req.where_sql,
        req.chunk_size,
        req.pause_ms,
        estimate,
    )
    .await?;
    writeln!(
        out,
        "backfill bf_{} of {} started (about {} rows); `walhook run` performs it",
        b.id,
        req.subscription,
        estimate.map_or("?".to_string(), |e| e.to_string())
    )?;
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                writeln!(out, "\nstopped following bf_{}; it goes on (cancel: DELETE …/backfills/bf_{})", b.id, b.id)?;
                return Ok(false);
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Some(now) = backfills::get(&client, &schema, req.subscription, b.id).await? else {
            writeln!(
                out,
                "\nbackfill bf_{} is gone (its subscription was deleted)",
                b.id
            )?;
            return Ok(false);
        };
        let line = progress_line(&now, started.elapsed());
        if terminal {
            write!(out, "\r{line}\x1b[K")?;
        } else {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        if now.state != "running" {
            if terminal {
                writeln!(out)?;
            }
            if let Some(e) = &now.error {
                writeln!(out, "error: {e}")?;
            }
            return Ok(now.state == "done");
        }
    }
}

/// `bf_7 running: 12000/100000 rows (12%), 4000 rows/s, ETA 22 s`.
fn progress_line(b: &Backfill, elapsed: Duration) -> String {
    let rate = b.rows_done as f64 / elapsed.as_secs_f64().max(0.001);
    let mut line = format!("bf_{} {}: {}", b.id, b.state, b.rows_done);
    if let Some(total) = b.rows_estimated.filter(|t| *t > 0) {
        let pct = (b.rows_done as f64 * 100.0 / total as f64).min(100.0);
        line.push_str(&format!("/{total} rows ({pct:.0}%)"));
        if b.state == "running" && rate > 0.0 {
            let eta = ((total - b.rows_done).max(0) as f64 / rate).round();
            line.push_str(&format!(", {rate:.0} rows/s, ETA {eta} s"));
            return line;
        }
    } else {
        line.push_str(" rows");
    }
    line.push_str(&format!(", {rate:.0} rows/s"));
    line
}
