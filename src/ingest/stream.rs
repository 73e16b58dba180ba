//! The ingest loop: one replication stream from the checkpoint into the outbox sink,
//! reconnected with backoff when it is interrupted.
//!
//! Guarantees: streaming starts at the outbox checkpoint (transactions the server sends again
//! are skipped by the sink); `streaming` is true exactly while the stream is up; on cancel the
//! open outbox transaction is abandoned (it will be streamed again) and the last committed
//! checkpoint is reported to the slot; a broken slot (invalidated, dropped, moved: see
//! [`super::slot`]) is diagnosed before anything else and never silently recreated: ingest
//! waits, reporting it, until it is recovered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Hooks, IngestError, OutboxSink};
use crate::backoff::{sleep_or_cancel, Backoff};
use crate::config::Config;
use crate::model::Lsn;
use crate::outbox::{self, Schema};
use crate::pg::tls;
use crate::route::Router;
use crate::source::conn::ReplicationClient;
use crate::source::decode::ChangeDecoder;
use crate::source::leftovers::{self, Snapshot};
use crate::source::setup::{ensure_slot, prepare, slot_state};
use crate::source::stream::{receive_timeout, Fence, Sink, SourceLoop};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Streams until `cancel`, reconnecting after retryable errors.
pub async fn ingest_loop(
    config: &Config,
    router: watch::Receiver<Router>,
    hooks: Hooks,
    streaming: &AtomicBool,
    cancel: &CancellationToken,
) -> Result<(), IngestError> {
    let mut backoff = Backoff::new(Duration::from_millis(250), MAX_BACKOFF);
    let mut standing_by = false;
    loop {
        let started = Instant::now();
        let result = ingest_once(config, router.clone(), hooks.clone(), streaming, cancel).await;
        streaming.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => return Ok(()),
            Err(IngestError::SlotBroken(report)) if hooks.slot.is_some() => {
                let ctx = hooks.slot.as_ref().expect("checked");
                if super::slot::wait_broken(config, *report, ctx, cancel)
                    .await
                    .is_none()
                {
                    return Ok(());
                }
                backoff.reset();
            }
            // The slot vanished or was invalidated between the diagnosis and the stream's
            // start, or while streaming: the next attempt diagnoses it.
            Err(e) if slot_gone(&e) && hooks.slot.is_some() && !cancel.is_cancelled() => {
                warn!(error = %e, "the replication slot cannot stream; checking it");
                if !sleep_or_cancel(backoff.next_delay(), cancel).await {
                    return Ok(());
                }
            }
            Err(e) if e.is_retryable() && !cancel.is_cancelled() => {
                // A connection that streamed for a while was healthy: start the backoff over.
                if started.elapsed() > Duration::from_secs(60) {
                    backoff.reset();
                }
                let mut delay = backoff.next_delay();
                // Another instance streams from the slot (55006): a standby polls at a steady
                // pace, so it takes over within a second of that instance's death however long
                // it has been waiting (a growing backoff would reach 30 s). Said once, not every
                // second.
                if matches!(&e, IngestError::Source(s) if s.code() == Some(crate::pg::sqlstate::OBJECT_IN_USE))
                {
                    backoff.reset();
                    delay = delay.min(Duration::from_secs(1));
                    if !standing_by {
                        info!(error = %e, "another instance streams from the slot; standing by");
                    }
                    standing_by = true;
                    if !sleep_or_cancel(delay, cancel).await {
                        return Ok(());
                    }
                    continue;
                }
                standing_by = false;
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "ingest interrupted; reconnecting");
                if !sleep_or_cancel(delay, cancel).await {
                    return Ok(());
                }
            }
            Err(_) if cancel.is_cancelled() => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// A server error about the slot itself (it does not exist, or was invalidated).
fn slot_gone(e: &IngestError) -> bool {
    let IngestError::Source(s) = e else {
        return false;
    };
    matches!(s.code(), Some("55000") | Some("42704")) && s.to_string().contains("slot")
}

async fn ingest_once(
    config: &Config,
    router_rx: watch::Receiver<Router>,
    hooks: Hooks,
    streaming: &AtomicBool,
    cancel: &CancellationToken,
) -> Result<(), IngestError> {
    let slot = config.source.slot.as_str();
    let publication = config.source.publication.as_str();
    let schema = Schema::new(config.outbox.schema.as_str());

    let mut outbox_client = outbox::connect(config).await?;
    outbox::migrate(&mut outbox_client, &schema).await?;
    let checkpoint = outbox::load_checkpoint(&outbox_client, &schema, slot)
        .await?
        .unwrap_or(Lsn::ZERO);

    let pg = config.pg_config();
    let source_client = tls::connect_sql(&pg).await?;
    // The slot's health before anything is changed: a broken slot is reported, not recreated.
    let diagnosis = super::slot::diagnose(&source_client, &outbox_client, &schema, slot).await?;
    if diagnosis.report.health.is_broken() {
        return Err(IngestError::SlotBroken(Box::new(diagnosis.report)));
    }
    if let Some(ctx) = &hooks.slot {
        super::slot::check_retained(
            &ctx.control,
            &diagnosis.report,
            config.source.slot_wal_warn_fraction,
        );
        ctx.control.set(diagnosis.report.clone(), &ctx.metrics);
    }
    let router = router_rx.borrow().clone();
    let tables = router.tables();
    // The replication connection first: a role without REPLICATION, or a refused login, fails
    // here, before anything in the database is changed.
    let repl = ReplicationClient::connect(&pg).await?;
    // What the host database looks like before this start may change it, so that a start that
    // fails for good can say what it left (and drop a slot it created).
    let before = Snapshot::take(&source_client, &tables, publication, slot).await;
    let started: Result<_, IngestError> = async {
        prepare(
            &source_client,
            &tables,
            publication,
            config.source.manage_replica_identity,
            true,
            |t| router.validate_table(&t.table, &t.columns, &t.unpublished_generated),
        )
        .await?;
        // Again after the setup, which takes a while: the slot may have been dropped meanwhile,
        // and must then be reported, not recreated. Only a fresh start (no checkpoint) creates it.
        let diagnosis =
            super::slot::diagnose(&source_client, &outbox_client, &schema, slot).await?;
        if diagnosis.report.health.is_broken() {
            return Err(IngestError::SlotBroken(Box::new(diagnosis.report)));
        }
        if diagnosis.state.is_none() {
            ensure_slot(&source_client, slot).await?;
        }
        let confirmed = slot_state(&source_client, slot)
            .await?
            .and_then(|s| s.confirmed_flush)
            .unwrap_or(Lsn::ZERO);

        // The fence: never below where the slot and the checkpoint already are (a slot found
        // without a fence, before this version's first start, is adopted here).
        let fence_at = diagnosis
            .fence
            .unwrap_or(Lsn::ZERO)
            .max(checkpoint)
            .max(confirmed);
        crate::outbox::slot::raise_fence(&outbox_client, &schema, slot, fence_at).await?;
        let fence = Fence::new(fence_at);
        let fence_stop = CancellationToken::new();
        let _fence_guard = fence_stop.clone().drop_guard();
        let background = hooks.background.clone().unwrap_or_else(|| {
            crate::pg::Background::new(&config.outbox_pg_config(), &config.pg_config())
        });
        tokio::spawn(super::slot::fence_loop(
            config.clone(),
            background,
            fence.clone(),
            fence_stop.clone(),
        ));

        // pgoutput sends logical messages (the backfills' watermarks) from PostgreSQL 14 on.
        let version: i32 = source_client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(crate::source::SourceError::from)?
            .get(0);
        let messages = if version >= 140_000 { "true" } else { "false" };
        let pub_names = format!("\"{publication}\"");
        // The server starts at max(requested, confirmed_flush); transactions at or below the
        // checkpoint that it sends again are skipped by the sink.
        let stream = repl
            .start_logical(
                slot,
                checkpoint,
                &[
                    ("proto_version", "1"),
                    ("publication_names", &pub_names),
                    // Transactional logical messages: the backfills' watermarks.
                    ("messages", messages),
                ],
            )
            .await?;
        // Now that this stream holds the slot nobody can drop it; it must still be the slot the
        // fence describes (it was not dropped and recreated since the diagnosis).
        let held = super::slot::diagnose(&source_client, &outbox_client, &schema, slot).await?;
        if held.report.health.is_broken() {
            return Err(IngestError::SlotBroken(Box::new(held.report)));
        }
        Ok((stream, confirmed, fence, _fence_guard))
    }
    .await;
    let (stream, confirmed, fence, _fence_guard) = match started {
        Ok(s) => s,
        Err(e) => {
            // A broken slot is the slot diagnosis's to report; anything else that needs a
            // human leaves the database as listed.
            if !e.is_retryable() && !matches!(e, IngestError::SlotBroken(_)) {
                if let Ok(before) = &before {
                    let left =
                        leftovers::report(&source_client, before, &tables, publication, slot).await;
                    if !left.is_empty() {
                        error!(
                            left = %left.join("; "),
                            "the start failed after changing the database; these changes are left in place (each with the statement that undoes it)"
                        );
                    }
                }
            }
            return Err(e);
        }
    };
    info!(slot, checkpoint = %checkpoint, confirmed_flush = %confirmed, "streaming");
    streaming.store(true, Ordering::Relaxed);
    let mut sink = OutboxSink::new(
        outbox_client,
        schema,
        slot,
        router_rx,
        checkpoint,
        confirmed,
        hooks,
    );
    let receive_timeout = receive_timeout(&source_client).await?;
    let source = SourceLoop {
        stream,
        decoder: {
            let mut d = ChangeDecoder::new();
            d.limit_values(config.delivery.max_payload_bytes);
            d
        },
        client: source_client,
        status_interval: Duration::from_secs(1),
        flushed: confirmed.max(checkpoint),
        receive_timeout,
        fence: Some(fence),
    };
    let result = source.run(&mut sink, cancel).await;
    if let Err(e) = &result {
        // Said now: finishing the writer below can take as long as its connection needs to fail
        // (TCP keepalives, about a minute, when the outbox shares a dead path).
        warn!(slot, error = %e, "replication stream interrupted; finishing the outbox writer before reconnecting");
        // The writer must be finished before a reconnect reads the checkpoint again, or a late
        // group commit could land after it and be stored twice.
        let _ = sink.close().await;
    }
    let flushed = result?;
    info!(slot, flushed = %flushed, "ingest stopped");
    Ok(())
}
