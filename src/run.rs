//! `walhook run`: the daemon. Ingest (slot → outbox), config reload on SIGHUP and retention run
//! as tasks owned by one `JoinSet` and stopped by one cancellation token.
//!
//! Guarantees:
//! - ingest reconnects by itself, with capped exponential backoff, when Postgres restarts or a
//!   connection drops; every state change is logged with the LSN;
//! - on SIGTERM/SIGINT the open outbox transaction is abandoned (it will be streamed again), the
//!   last committed checkpoint is reported to the slot, and the process exits cleanly;
//! - a reload that fails validation changes nothing; a valid one takes effect between source
//!   transactions, with the router updated before the publication gains a table, so no change of
//!   a newly subscribed table is dropped.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::outbox::enqueue::{IngestError, OutboxSink};
use crate::outbox::{self, OutboxError, Schema};
use crate::route::Router;
use crate::source::conn::ReplicationClient;
use crate::source::decode::ChangeDecoder;
use crate::source::setup::{describe_tables, ensure_slot, prepare, slot_state};
use crate::source::stream::{Sink, SourceLoop};
use crate::source::{tls, SourceError};
use crate::Lsn;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Builds the router from the config, refusing subscriptions to walhook's own tables.
pub fn build_router(config: &Config) -> Result<Router, SourceError> {
    let router = Router::for_config(config).map_err(|e| SourceError::Config(e.to_string()))?;
    if config.outbox.url.is_none() {
        if let Some(t) = router
            .tables()
            .into_iter()
            .find(|t| t.schema == config.outbox.schema.as_str())
        {
            return Err(SourceError::Config(format!(
                "table {t} is in walhook's own outbox schema and cannot be subscribed"
            )));
        }
    }
    Ok(router)
}

pub async fn connect_outbox(config: &Config) -> Result<tokio_postgres::Client, OutboxError> {
    tls::connect_sql(&config.outbox_pg_config())
        .await
        .map_err(|e| OutboxError::Connect(e.to_string()))
}

/// `walhook migrate`: applies outbox migrations and returns the versions applied.
pub async fn migrate(config: &Config) -> Result<Vec<i32>, OutboxError> {
    let mut client = connect_outbox(config).await?;
    outbox::migrate(&mut client, &Schema::new(config.outbox.schema.as_str())).await
}

pub async fn run(
    path: PathBuf,
    config: Config,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    let (router_tx, router_rx) = watch::channel(build_router(&config)?);
    let mut tasks = JoinSet::new();
    tasks.spawn(retention_loop(
        config.outbox_pg_config(),
        Schema::new(config.outbox.schema.as_str()),
        config.outbox.retention.0,
        config.outbox.dead_retention.0,
        cancel.clone(),
    ));
    tasks.spawn(reload_loop(path, router_tx, cancel.clone()));
    let result = ingest_loop(&config, router_rx, &cancel).await;
    cancel.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            error!(error = %e, "task panicked");
        }
    }
    result
}

async fn ingest_loop(
    config: &Config,
    router: watch::Receiver<Router>,
    cancel: &CancellationToken,
) -> Result<(), IngestError> {
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        match ingest_once(config, router.clone(), cancel).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && !cancel.is_cancelled() => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(250);
                }
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "ingest interrupted; reconnecting");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(_) if cancel.is_cancelled() => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

async fn ingest_once(
    config: &Config,
    router_rx: watch::Receiver<Router>,
    cancel: &CancellationToken,
) -> Result<(), IngestError> {
    let slot = config.source.slot.as_str();
    let publication = config.source.publication.as_str();
    let schema = Schema::new(config.outbox.schema.as_str());

    let mut outbox_client = connect_outbox(config).await?;
    outbox::migrate(&mut outbox_client, &schema).await?;
    let subs: Vec<_> = config.subscriptions().collect();
    outbox::sync_config_subscriptions(&mut outbox_client, &schema, &subs).await?;
    let checkpoint = outbox::load_checkpoint(&outbox_client, &schema, slot)
        .await?
        .unwrap_or(Lsn::ZERO);

    let pg = config.pg_config();
    let source_client = tls::connect_sql(&pg).await?;
    let router = router_rx.borrow().clone();
    prepare(
        &source_client,
        &router,
        publication,
        config.source.manage_replica_identity,
        true,
    )
    .await?;
    ensure_slot(&source_client, slot).await?;
    let confirmed = slot_state(&source_client, slot)
        .await?
        .and_then(|s| s.confirmed_flush)
        .unwrap_or(Lsn::ZERO);

    let repl = ReplicationClient::connect(&pg).await?;
    let pub_names = format!("\"{publication}\"");
    // The server starts at max(requested, confirmed_flush); transactions at or below the
    // checkpoint that it sends again are skipped by the sink.
    let stream = repl
        .start_logical(
            slot,
            checkpoint,
            &[("proto_version", "1"), ("publication_names", &pub_names)],
        )
        .await?;
    info!(slot, checkpoint = %checkpoint, confirmed_flush = %confirmed, "streaming");
    let mut sink = OutboxSink::new(
        outbox_client,
        schema,
        slot,
        router_rx,
        checkpoint,
        confirmed,
    );
    let source = SourceLoop {
        stream,
        decoder: ChangeDecoder::new(),
        client: source_client,
        status_interval: Duration::from_secs(1),
        flushed: confirmed.max(checkpoint),
    };
    let result = source.run(&mut sink, cancel).await;
    if result.is_err() {
        // The writer must be finished before a reconnect reads the checkpoint again, or a late
        // group commit could land after it and be stored twice.
        let _ = sink.close().await;
    }
    let flushed = result?;
    info!(slot, flushed = %flushed, "ingest stopped");
    Ok(())
}

async fn reload_loop(path: PathBuf, router_tx: watch::Sender<Router>, cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; config reload disabled");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = hup.recv() => {}
        }
        info!(path = %path.display(), "SIGHUP: reloading config");
        match reload(&path, &router_tx).await {
            Ok(n) => info!(subscriptions = n, "config reloaded"),
            Err(e) => {
                error!(error = %e, "config reload failed; keeping the previous subscriptions")
            }
        }
    }
}

async fn reload(
    path: &std::path::Path,
    router_tx: &watch::Sender<Router>,
) -> Result<usize, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let router = build_router(&config).map_err(|e| e.to_string())?;
    let client = tls::connect_sql(&config.pg_config())
        .await
        .map_err(|e| e.to_string())?;
    // Validate before anything changes: tables exist, filter/select columns exist.
    for info in describe_tables(&client, &router.tables())
        .await
        .map_err(|e| e.to_string())?
    {
        router
            .validate_table(&info.table, &info.columns)
            .map_err(|e| e.to_string())?;
    }
    // Router first, so changes of a table added next are routed, not dropped.
    router_tx.send_replace(router.clone());
    prepare(
        &client,
        &router,
        config.source.publication.as_str(),
        config.source.manage_replica_identity,
        true,
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut outbox_client = connect_outbox(&config).await.map_err(|e| e.to_string())?;
    let subs: Vec<_> = config.subscriptions().collect();
    outbox::sync_config_subscriptions(
        &mut outbox_client,
        &Schema::new(config.outbox.schema.as_str()),
        &subs,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(subs.len())
}

async fn retention_loop(
    pg: tokio_postgres::Config,
    schema: Schema,
    retention: Duration,
    dead_retention: Duration,
    cancel: CancellationToken,
) {
    let period =
        (retention.min(dead_retention) / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = tls::connect_sql(&pg).await.ok();
        }
        if let Some(c) = &client {
            if let Err(e) = outbox::retention::prune(c, &schema, retention, dead_retention).await {
                // Before the first migration the table may not exist yet; try again later.
                warn!(error = %e, "pruning the outbox failed");
                client = None;
            }
        }
    }
}
