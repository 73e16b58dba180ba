//! `walhook run`: the daemon. Ingest (slot → outbox), delivery, the management API, config
//! reload on SIGHUP and retention run as tasks owned by one `JoinSet` and stopped by one
//! cancellation token.
//!
//! Guarantees: on SIGTERM/SIGINT every task is cancelled and awaited before `run` returns; a
//! panicking task is logged, never silently lost; a start that cannot listen or build its HTTP
//! client fails before anything is streamed.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::deliver::http::{HttpError, HttpSender};
use crate::deliver::supervisor;
use crate::deliver::worker::Engine;
use crate::ingest::reload::{changes_loop, initial_router, partitions_loop, reload_loop, Reloader};
use crate::ingest::stream::ingest_loop;
use crate::ingest::{Hooks, IngestError};
use crate::metrics::Metrics;
use crate::outbox::{self, Schema};
use crate::pg::tls;

/// The management API's outbox connections. Its statements are short and its callers few
/// (operators, the console); what it holds counts toward walhook's connection budget (README,
/// "Connections"), so it stays small.
const API_POOL: usize = 4;

/// Why `walhook run` stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("delivery: {0}")]
    Delivery(#[from] HttpError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error("api.listen: cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Handles shared by the tasks of `walhook run`, and visible to whoever starts it (tests, demo).
#[derive(Clone)]
pub struct Handles {
    pub metrics: Arc<Metrics>,
    /// True while the replication stream is up.
    pub streaming: Arc<AtomicBool>,
    /// Notify after changing the subscriptions table; routing and the publication follow.
    pub changed: Arc<Notify>,
    /// Lets the API answer a subscription change once routing includes it.
    pub routing: Arc<crate::ingest::reload::RoutingSync>,
    /// Bumped after a backfill is created or cancelled; the backfill runners look again.
    pub backfills: Arc<watch::Sender<u64>>,
    /// The replication slot's health and the API's recovery requests (issue #18).
    pub slot: Option<Arc<crate::ingest::slot::SlotControl>>,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            metrics: Arc::new(Metrics::new()),
            streaming: Arc::new(AtomicBool::new(false)),
            changed: Arc::new(Notify::new()),
            routing: crate::ingest::reload::RoutingSync::new(),
            backfills: Arc::new(watch::channel(0).0),
            slot: None,
        }
    }
}

pub async fn run(path: PathBuf, config: Config, cancel: CancellationToken) -> Result<(), AppError> {
    run_with(Some(path), config, cancel, Handles::default()).await
}

/// Ingest, delivery, config reload and retention until `cancel`. Without a `path`, SIGHUP
/// reloads nothing.
pub async fn run_with(
    path: Option<PathBuf>,
    config: Config,
    cancel: CancellationToken,
    handles: Handles,
) -> Result<(), AppError> {
    let router = match initial_router(&config, &handles.metrics, &cancel).await? {
        Some(r) => r,
        None => return Ok(()),
    };
    let (router_tx, router_rx) = watch::channel(router);
    let telemetry = match &config.telemetry.otlp_endpoint {
        Some(endpoint) => {
            let t = crate::telemetry::Telemetry::start(crate::telemetry::Settings {
                endpoint: endpoint.as_str().to_string(),
                service_name: config.telemetry.service_name.as_str().to_string(),
                export_interval: config.telemetry.export_interval.0,
            })?;
            info!(endpoint = %endpoint.as_str(), "exporting traces over OTLP/HTTP");
            t
        }
        None => crate::telemetry::Telemetry::off(),
    };
    let slot_control = handles
        .slot
        .clone()
        .unwrap_or_else(|| crate::ingest::slot::SlotControl::new(config.source.slot.as_str()));
    let (subs_tx, subs_rx) = watch::channel(0u64);
    let handoff = crate::outbox::handoff::Handoff::new();
    let mut tasks = JoinSet::new();
    // The background tasks' connections: two small shared pools instead of one each.
    let background = crate::pg::Background::new(&config.outbox_pg_config(), &config.pg_config());
    tasks.spawn(retention_loop(
        background.clone(),
        Schema::new(config.outbox.schema.as_str()),
        config.outbox.retention.0,
        config.outbox.dead_retention.0,
        cancel.clone(),
    ));
    let reloader = Arc::new(Reloader::new(
        router_tx,
        subs_tx,
        config.clone(),
        handles.metrics.clone(),
        background.clone(),
    ));
    if let Some(path) = path {
        tasks.spawn(reload_loop(path, reloader.clone(), cancel.clone()));
    }
    tasks.spawn(partitions_loop(
        config.clone(),
        background.clone(),
        router_rx.clone(),
        cancel.clone(),
    ));
    let routing = handles.routing.clone();
    tasks.spawn(changes_loop(
        reloader.clone(),
        handles.changed.clone(),
        routing.clone(),
        cancel.clone(),
    ));
    if config.delivery.enabled {
        let sender = HttpSender::new(&config.delivery)?;
        let mut engine = Engine::new(
            Schema::new(config.outbox.schema.as_str()),
            // The ownership session is taken out of this pool for good (`deliver::owner`) and
            // is the pool_size-th connection: pool_size is all delivery holds.
            tls::pool(&config.outbox_pg_config(), config.delivery.pool_size - 1),
            config.delivery.clone(),
            sender,
            handles.metrics.clone(),
            handoff.clone(),
            handles.changed.clone(),
        );
        engine.telemetry = telemetry.clone();
        let engine = Arc::new(engine);
        tasks.spawn(supervisor::run(engine, subs_rx, cancel.clone()));
    } else {
        info!("delivery is off ([delivery] enabled = false); deliveries stay in the outbox");
    }
    match &config.api.token {
        Some(token) => {
            let addr = config.api.listen.as_str();
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Listen {
                    addr: addr.to_string(),
                    source,
                })?;
            let state = Arc::new(crate::api::ApiState {
                project_id: config.project.id.to_string(),
                environment: config.project.environment.to_string(),
                token: token.clone(),
                schema: Schema::new(config.outbox.schema.as_str()),
                outbox: tls::pool(&config.outbox_pg_config(), API_POOL),
                source: config.pg_config(),
                slot: config.source.slot.to_string(),
                publication: config.source.publication.to_string(),
                manage_replica_identity: config.source.manage_replica_identity,
                delivery: config.delivery.clone(),
                metrics: handles.metrics.clone(),
                streaming: handles.streaming.clone(),
                changed: handles.changed.clone(),
                handoff: handoff.clone(),
                routing: routing.clone(),
                backfills: handles.backfills.clone(),
                slot_control: slot_control.clone(),
            });
            let cancel = cancel.clone();
            let app = crate::api::router(state.clone())
                .merge(crate::console::router(state, cancel.clone()));
            tasks.spawn(async move {
                if let Err(e) = crate::api::serve_with(app, listener, cancel).await {
                    error!(error = %e, "management API stopped");
                }
            });
        }
        None => info!("management API off: set [api] token to enable it"),
    }
    let slot_ctx = crate::ingest::slot_recover::Context {
        control: slot_control.clone(),
        metrics: handles.metrics.clone(),
        backfills: handles.backfills.clone(),
    };
    tasks.spawn(crate::ingest::slot::monitor_loop(
        config.clone(),
        background.clone(),
        slot_ctx.control.clone(),
        handles.metrics.clone(),
        cancel.clone(),
    ));
    let exchange = crate::ingest::watermarks::Exchange::new();
    tasks.spawn(crate::ingest::backfill::backfill_loop(
        Arc::new(crate::ingest::backfill::Backfills {
            config: config.clone(),
            router: router_rx.clone(),
            exchange: exchange.clone(),
            streaming: handles.streaming.clone(),
            wake: handles.backfills.subscribe(),
            metrics: handles.metrics.clone(),
            background: background.clone(),
        }),
        cancel.clone(),
    ));
    let hooks = Hooks {
        handoff: config.delivery.enabled.then(|| handoff.clone()),
        metrics: Some(handles.metrics.clone()),
        backfill: Some(exchange),
        slot: Some(slot_ctx),
        telemetry: telemetry.clone(),
        background: Some(background),
    };
    let result = ingest_loop(&config, router_rx, hooks, &handles.streaming, &cancel)
        .await
        .map_err(AppError::from);
    cancel.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            error!(error = %e, "task panicked");
        }
    }
    // What was traced until the end is sent before the process exits.
    telemetry.shutdown().await;
    result
}

/// How often retention looks whether walhook's tables need a vacuum (pruning itself runs every
/// tenth of the shorter retention, between 1 s and 60 s).
const VACUUM_CHECK: Duration = Duration::from_secs(10);

async fn retention_loop(
    background: crate::pg::Background,
    schema: Schema,
    retention: Duration,
    dead_retention: Duration,
    cancel: CancellationToken,
) {
    let prune_every =
        (retention.min(dead_retention) / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let tick = prune_every.min(VACUUM_CHECK);
    let mut last_prune = tokio::time::Instant::now();
    let mut last_vacuum_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let prune_due = last_prune.elapsed() >= prune_every;
        let vacuum_due = last_vacuum_check.elapsed() >= VACUUM_CHECK;
        // Stopping never waits on a statement stuck on a dead connection.
        let work = async {
            let client = background.outbox().await?;
            if prune_due {
                last_prune = tokio::time::Instant::now();
                outbox::retention::prune(&client, &schema, retention, dead_retention).await?;
            }
            if vacuum_due {
                last_vacuum_check = tokio::time::Instant::now();
                for v in outbox::retention::vacuum_if_bloated(&client, &schema).await? {
                    info!(table = %v.table, dead_rows = v.dead, live_rows = v.live, took_ms = v.took.as_millis() as u64, "vacuumed");
                }
            }
            Ok::<_, outbox::OutboxError>(())
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            // Before the first migration the table may not exist yet; tried again next period.
            r = work => if let Err(e) = r {
                warn!(error = %e, "outbox retention (prune, vacuum) failed; tried again at its next turn");
            }
        }
    }
}
