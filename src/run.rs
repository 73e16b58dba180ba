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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Mutex, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::{sleep_or_cancel, Backoff};
use crate::config::Config;
use crate::deliver::http::HttpSender;
use crate::deliver::worker::{self, Engine};
use crate::metrics::Metrics;
use crate::model::Lsn;
use crate::model::Origin;
use crate::outbox::enqueue::{Hooks, IngestError, OutboxSink};
use crate::outbox::subscriptions::{self, Stored};
use crate::outbox::{self, OutboxError, Schema};
use crate::pg::tls;
use crate::route::Router;
use crate::source::conn::ReplicationClient;
use crate::source::decode::ChangeDecoder;
use crate::source::setup::{describe_tables, ensure_slot, prepare, slot_state};
use crate::source::stream::{Sink, SourceLoop};
use crate::source::SourceError;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Builds the router from the config (whose load refused walhook's own tables).
pub fn build_router(config: &Config) -> Result<Router, SourceError> {
    Ok(Router::for_config(config))
}

fn check_own_schema(config: &Config, router: &Router) -> Result<(), SourceError> {
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
    Ok(())
}

/// Kept for `run.rs`'s callers; the connection itself is [`outbox::connect`].
pub async fn connect_outbox(config: &Config) -> Result<tokio_postgres::Client, OutboxError> {
    outbox::connect(config).await
}

/// `walhook migrate`: applies outbox migrations and returns the versions applied.
pub async fn migrate(config: &Config) -> Result<Vec<i32>, OutboxError> {
    outbox::migrate_config(config).await
}

/// Handles shared by the tasks of `walhook run`, and visible to whoever starts it (tests, demo).
#[derive(Clone)]
pub struct Handles {
    pub metrics: Arc<Metrics>,
    /// True while the replication stream is up.
    pub streaming: Arc<AtomicBool>,
    /// Notify after changing the subscriptions table; routing and the publication follow.
    pub changed: Arc<Notify>,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            metrics: Arc::new(Metrics::new()),
            streaming: Arc::new(AtomicBool::new(false)),
            changed: Arc::new(Notify::new()),
        }
    }
}

pub async fn run(
    path: PathBuf,
    config: Config,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    run_with(Some(path), config, cancel, Handles::default()).await
}

/// Ingest, delivery, config reload and retention until `cancel`. Without a `path`, SIGHUP
/// reloads nothing.
pub async fn run_with(
    path: Option<PathBuf>,
    config: Config,
    cancel: CancellationToken,
    handles: Handles,
) -> Result<(), IngestError> {
    let router = match initial_router(&config, &cancel).await? {
        Some(r) => r,
        None => return Ok(()),
    };
    let (router_tx, router_rx) = watch::channel(router);
    let (subs_tx, subs_rx) = watch::channel(0u64);
    let (wake_tx, wake_rx) = watch::channel(0u64);
    let mut tasks = JoinSet::new();
    tasks.spawn(retention_loop(
        config.outbox_pg_config(),
        Schema::new(config.outbox.schema.as_str()),
        config.outbox.retention.0,
        config.outbox.dead_retention.0,
        cancel.clone(),
    ));
    let reloader = Arc::new(Reloader {
        router_tx,
        subs_tx,
        current: Mutex::new(config.clone()),
    });
    if let Some(path) = path {
        tasks.spawn(reload_loop(path, reloader.clone(), cancel.clone()));
    }
    tasks.spawn(changes_loop(
        reloader.clone(),
        handles.changed.clone(),
        cancel.clone(),
    ));
    if config.delivery.enabled {
        let sender = HttpSender::new(&config.delivery)
            .map_err(|e| SourceError::Config(format!("delivery: {e}")))?;
        let engine = Arc::new(Engine::new(
            Schema::new(config.outbox.schema.as_str()),
            tls::pool(&config.outbox_pg_config(), config.delivery.pool_size),
            config.delivery.clone(),
            sender,
            handles.metrics.clone(),
            wake_rx,
            handles.changed.clone(),
        ));
        tasks.spawn(worker::run(engine, subs_rx, cancel.clone()));
    } else {
        info!("delivery is off ([delivery] enabled = false); deliveries stay in the outbox");
    }
    match &config.api.token {
        Some(token) => {
            let addr = config.api.listen.as_str();
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                SourceError::Config(format!("api.listen: cannot listen on {addr}: {e}"))
            })?;
            let state = Arc::new(crate::api::ApiState {
                project_id: config.project.id.to_string(),
                environment: config.project.environment.to_string(),
                token: token.clone(),
                schema: Schema::new(config.outbox.schema.as_str()),
                outbox: tls::pool(&config.outbox_pg_config(), 8),
                source: config.pg_config(),
                slot: config.source.slot.to_string(),
                manage_replica_identity: config.source.manage_replica_identity,
                delivery: config.delivery.clone(),
                metrics: handles.metrics.clone(),
                streaming: handles.streaming.clone(),
                changed: handles.changed.clone(),
            });
            let cancel = cancel.clone();
            tasks.spawn(async move {
                if let Err(e) = crate::api::serve(state, listener, cancel).await {
                    error!(error = %e, "management API stopped");
                }
            });
        }
        None => info!("management API off: set [api] token to enable it"),
    }
    let hooks = Hooks {
        wake: Some(wake_tx),
        metrics: Some(handles.metrics.clone()),
    };
    let result = ingest_loop(&config, router_rx, hooks, &handles.streaming, &cancel).await;
    cancel.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            error!(error = %e, "task panicked");
        }
    }
    result
}

/// Migrates, stores config.toml's subscriptions and builds the first router from the
/// subscriptions table; waits for the database if it is not up yet. None when cancelled.
async fn initial_router(
    config: &Config,
    cancel: &CancellationToken,
) -> Result<Option<Router>, IngestError> {
    // Config errors (bad table names, the outbox schema) fail before touching the database.
    build_router(config)?;
    let mut backoff = Backoff::new(Duration::from_millis(250), MAX_BACKOFF);
    loop {
        let attempt = async {
            let mut client = connect_outbox(config).await?;
            let schema = Schema::new(config.outbox.schema.as_str());
            outbox::migrate(&mut client, &schema).await?;
            let subs: Vec<_> = config.subscriptions().collect();
            outbox::sync_config_subscriptions(&mut client, &schema, &subs).await?;
            let stored = subscriptions::load_all(&client, &schema).await?;
            let source = tls::connect_sql(&config.pg_config())
                .await
                .map_err(SourceError::from)?;
            Ok::<_, IngestError>(without_broken_api_subscriptions(&source, stored).await)
        };
        match attempt.await {
            Ok(stored) => return Ok(Some(router_for_stored(config, &stored)?)),
            Err(e) if e.is_retryable() && !cancel.is_cancelled() => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "outbox database not reachable yet");
                if !sleep_or_cancel(delay, cancel).await {
                    return Ok(None);
                }
            }
            Err(_) if cancel.is_cancelled() => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// The router for the stored subscriptions, refusing walhook's own tables.
fn router_for_stored(config: &Config, stored: &[Stored]) -> Result<Router, SourceError> {
    let router = Router::with_project(config, stored.iter().map(|s| s.sub.clone()));
    check_own_schema(config, &router)?;
    Ok(router)
}

async fn ingest_loop(
    config: &Config,
    router: watch::Receiver<Router>,
    hooks: Hooks,
    streaming: &AtomicBool,
    cancel: &CancellationToken,
) -> Result<(), IngestError> {
    let mut backoff = Backoff::new(Duration::from_millis(250), MAX_BACKOFF);
    loop {
        let started = Instant::now();
        let result = ingest_once(config, router.clone(), hooks.clone(), streaming, cancel).await;
        streaming.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && !cancel.is_cancelled() => {
                // A connection that streamed for a while was healthy: start the backoff over.
                if started.elapsed() > Duration::from_secs(60) {
                    backoff.reset();
                }
                let mut delay = backoff.next_delay();
                // Another instance streams from the slot (55006): a standby polls at a steady
                // pace, so it takes over within a second of that instance's death however long
                // it has been waiting (a growing backoff reached 30 s).
                if matches!(&e, IngestError::Source(s) if s.code() == Some(crate::pg::sqlstate::OBJECT_IN_USE))
                {
                    backoff.reset();
                    delay = delay.min(Duration::from_secs(1));
                }
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

    let mut outbox_client = connect_outbox(config).await?;
    outbox::migrate(&mut outbox_client, &schema).await?;
    let checkpoint = outbox::load_checkpoint(&outbox_client, &schema, slot)
        .await?
        .unwrap_or(Lsn::ZERO);

    let pg = config.pg_config();
    let source_client = tls::connect_sql(&pg).await.map_err(SourceError::from)?;
    let router = router_rx.borrow().clone();
    prepare(
        &source_client,
        &router.tables(),
        publication,
        config.source.manage_replica_identity,
        true,
        |t| {
            router
                .validate_table(&t.table, &t.columns)
                .map_err(|e| e.to_string())
        },
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

/// Applies the subscriptions table to routing and the publication; one at a time.
struct Reloader {
    router_tx: watch::Sender<Router>,
    /// Bumped after each applied change, so delivery re-reads the subscriptions.
    subs_tx: watch::Sender<u64>,
    /// The config in force (replaced by a successful SIGHUP reload).
    current: Mutex<Config>,
}

impl Reloader {
    /// Reads the subscriptions table, validates every subscription against its table, then
    /// switches routing and only then adds tables to the publication, so no change of a newly
    /// subscribed table is dropped. On error nothing changes.
    async fn apply(&self, config: &Config) -> Result<usize, String> {
        let outbox_client = connect_outbox(config).await.map_err(|e| e.to_string())?;
        let schema = Schema::new(config.outbox.schema.as_str());
        let stored = subscriptions::load_all(&outbox_client, &schema)
            .await
            .map_err(|e| e.to_string())?;
        let client = tls::connect_sql(&config.pg_config())
            .await
            .map_err(|e| e.to_string())?;
        let stored = without_broken_api_subscriptions(&client, stored).await;
        let router = router_for_stored(config, &stored).map_err(|e| e.to_string())?;
        validate_columns(&client, &router).await?;
        self.router_tx.send_replace(router.clone());
        prepare(
            &client,
            &router.tables(),
            config.source.publication.as_str(),
            config.source.manage_replica_identity,
            true,
            |t| {
                router
                    .validate_table(&t.table, &t.columns)
                    .map_err(|e| e.to_string())
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        self.subs_tx.send_modify(|n| *n = n.wrapping_add(1));
        Ok(stored.len())
    }
}

/// Leaves out, with an error naming it, an API subscription whose table or columns no longer
/// exist (dropped after it was created), so that one stale subscription does not stop the others.
/// config.toml's subscriptions are kept: their errors stop a start or a reload, loudly.
async fn without_broken_api_subscriptions(
    client: &tokio_postgres::Client,
    stored: Vec<Stored>,
) -> Vec<Stored> {
    let mut keep = Vec::with_capacity(stored.len());
    for sub in stored {
        if sub.origin == Origin::Api {
            let problem = {
                let route = &sub.sub;
                {
                    match describe_tables(client, std::slice::from_ref(&route.table)).await {
                        // Only a definite answer (no such table) drops it; a lost connection must
                        // not, or its changes would go unrouted meanwhile.
                        Err(e @ SourceError::Config(_)) => Some(e.to_string()),
                        Err(_) => None,
                        Ok(infos) => infos
                            .iter()
                            .find_map(|i| crate::route::check_columns(route, &i.columns).err())
                            .map(|e| e.to_string()),
                    }
                }
            };
            if let Some(problem) = problem {
                error!(subscription = %sub.id, error = %problem, "subscription left out of routing until it is fixed or deleted");
                continue;
            }
        }
        keep.push(sub);
    }
    keep
}

/// Every table exists and has the columns that filters and selects name.
async fn validate_columns(client: &tokio_postgres::Client, router: &Router) -> Result<(), String> {
    for info in describe_tables(client, &router.tables())
        .await
        .map_err(|e| e.to_string())?
    {
        router
            .validate_table(&info.table, &info.columns)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn reload_loop(path: PathBuf, reloader: Arc<Reloader>, cancel: CancellationToken) {
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
        match reload(&path, &reloader).await {
            Ok(n) => info!(subscriptions = n, "config reloaded"),
            Err(e) => {
                error!(error = %e, "config reload failed; keeping the previous subscriptions")
            }
        }
    }
}

async fn reload(path: &std::path::Path, reloader: &Reloader) -> Result<usize, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    // Validate before the table is touched: names, filters, the outbox schema rule, columns.
    let router = build_router(&config).map_err(|e| e.to_string())?;
    let client = tls::connect_sql(&config.pg_config())
        .await
        .map_err(|e| e.to_string())?;
    validate_columns(&client, &router).await?;
    let mut outbox_client = connect_outbox(&config).await.map_err(|e| e.to_string())?;
    let subs: Vec<_> = config.subscriptions().collect();
    outbox::sync_config_subscriptions(
        &mut outbox_client,
        &Schema::new(config.outbox.schema.as_str()),
        &subs,
    )
    .await
    .map_err(|e| e.to_string())?;
    let n = reloader.apply(&config).await?;
    *reloader.current.lock().await = config;
    Ok(n)
}

/// Follows changes made through the API (or by delivery, on 410 Gone).
async fn changes_loop(reloader: Arc<Reloader>, changed: Arc<Notify>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changed.notified() => {}
        }
        let config = reloader.current.lock().await;
        match reloader.apply(&config).await {
            Ok(n) => info!(subscriptions = n, "subscriptions changed; routing updated"),
            Err(e) => {
                error!(error = %e, "subscriptions changed but could not be applied; keeping the previous routing")
            }
        }
    }
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
