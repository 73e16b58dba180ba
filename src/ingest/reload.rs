//! Subscriptions into routing: config.toml at start and on SIGHUP, API changes as they happen.
//!
//! Guarantees:
//! - one reload at a time ([`Reloader`] serializes SIGHUP and API changes);
//! - a reload that fails validation changes nothing and is logged with the reason; a valid one
//!   switches routing before the publication gains a table, so no change of a newly subscribed
//!   table is dropped;
//! - an API subscription whose table or columns disappeared is left out of routing with an error
//!   naming it, so one stale subscription never stops the others.

use std::borrow::Borrow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::IngestError;
use crate::backoff::{sleep_or_cancel, Backoff};
use crate::config::Config;
use crate::model::Origin;
use crate::outbox::subscriptions::{self, Stored};
use crate::outbox::{self, OutboxError, Schema};
use crate::pg::tls;
use crate::route::Router;
use crate::source::setup::{describe_tables, ensure_replica_identity, prepare};
use crate::source::SourceError;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Builds the router from the config (whose load refused walhook's own tables).
pub fn build_router(config: &Config) -> Router {
    Router::for_config(config)
}

/// A stored subscription (hand-edited, say) to walhook's own tables is refused: walhook would
/// feed on its own writes.
fn check_own_schema(config: &Config, router: &Router) -> Result<(), IngestError> {
    if config.outbox.url.is_none() {
        if let Some(t) = router
            .tables()
            .into_iter()
            .find(|t| t.schema == config.outbox.schema.as_str())
        {
            return Err(IngestError::OwnSchema(t));
        }
    }
    Ok(())
}

/// Migrates, stores config.toml's subscriptions and builds the first router from the
/// subscriptions table; waits for the database if it is not up yet. None when cancelled.
pub async fn initial_router(
    config: &Config,
    metrics: &crate::metrics::Metrics,
    cancel: &CancellationToken,
) -> Result<Option<Router>, IngestError> {
    let mut backoff = Backoff::new(Duration::from_millis(250), MAX_BACKOFF);
    loop {
        let attempt = async {
            let mut client = outbox::connect(config).await?;
            let schema = Schema::new(config.outbox.schema.as_str());
            outbox::migrate(&mut client, &schema).await?;
            let subs: Vec<_> = config.subscriptions().collect();
            outbox::sync_config_subscriptions(&mut client, &schema, &subs).await?;
            let stored = subscriptions::load_all(&client, &schema).await?;
            let source = tls::connect_sql(&config.pg_config()).await?;
            Ok::<_, IngestError>(without_broken_api_subscriptions(&source, stored).await)
        };
        match attempt.await {
            Ok((stored, left_out)) => {
                let router = router_for_stored(config, &stored)?;
                metrics.set_left_out(left_out);
                return Ok(Some(router));
            }
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
fn router_for_stored<S: Borrow<Stored>>(
    config: &Config,
    stored: &[S],
) -> Result<Router, IngestError> {
    let router = Router::with_project(config, stored.iter().map(|s| s.borrow().sub.clone()));
    check_own_schema(config, &router)?;
    Ok(router)
}

/// Applies the subscriptions table to routing and the publication; one at a time.
pub struct Reloader {
    router_tx: watch::Sender<Router>,
    /// Bumped after each applied change, so delivery re-reads the subscriptions.
    subs_tx: watch::Sender<u64>,
    /// The config in force (replaced by a successful SIGHUP reload).
    current: Mutex<Config>,
    /// Where the subscriptions left out of routing are shown (API, /readyz, /metrics).
    metrics: Arc<crate::metrics::Metrics>,
    /// The connections a reload uses, shared with the other background tasks.
    background: crate::pg::Background,
    /// The subscriptions of the last reading: a reload decodes only the rows that changed.
    cache: Mutex<subscriptions::Cache>,
}

impl Reloader {
    pub fn new(
        router_tx: watch::Sender<Router>,
        subs_tx: watch::Sender<u64>,
        config: Config,
        metrics: Arc<crate::metrics::Metrics>,
        background: crate::pg::Background,
    ) -> Reloader {
        Reloader {
            router_tx,
            subs_tx,
            current: Mutex::new(config),
            metrics,
            background,
            cache: Mutex::new(subscriptions::Cache::default()),
        }
    }

    /// Reads the subscriptions table, validates every subscription against its table, then
    /// switches routing and only then adds tables to the publication, so no change of a newly
    /// subscribed table is dropped. On error nothing changes.
    async fn apply(&self, config: &Config) -> Result<usize, IngestError> {
        let schema = Schema::new(config.outbox.schema.as_str());
        let stored = {
            let outbox_client = self.background.outbox().await.map_err(OutboxError::from)?;
            let mut cache = self.cache.lock().await;
            cache.load(&outbox_client, &schema).await?
        };
        let client = self.background.source().await?;
        let (stored, left_out) = without_broken_api_subscriptions(&client, stored).await;
        let router = router_for_stored(config, &stored)?;
        validate_columns(&client, &router).await?;
        self.router_tx.send_replace(router.clone());
        self.metrics.set_left_out(left_out);
        prepare(
            &client,
            &router.tables(),
            config.source.publication.as_str(),
            config.source.manage_replica_identity,
            true,
            |t| router.validate_table(&t.table, &t.columns, &t.unpublished_generated),
        )
        .await?;
        self.subs_tx.send_modify(|n| *n = n.wrapping_add(1));
        Ok(stored.len())
    }
}

/// Leaves out, with an error naming it, an API subscription whose table or columns no longer
/// exist (dropped after it was created), so that one stale subscription does not stop the others.
/// config.toml's subscriptions are kept: their errors stop a start or a reload, loudly.
pub(super) async fn without_broken_api_subscriptions<S: Borrow<Stored>>(
    client: &tokio_postgres::Client,
    stored: Vec<S>,
) -> (Vec<S>, Vec<(String, String)>) {
    use std::collections::hash_map::Entry;
    use std::collections::HashMap;
    // Each table is described once per reload, not once per subscription: with thousands of
    // API subscriptions on a few tables, every create would otherwise cost thousands of
    // catalog round trips.
    let mut described: HashMap<crate::model::TableName, Option<Result<Vec<_>, String>>> =
        HashMap::new();
    let mut keep = Vec::with_capacity(stored.len());
    let mut left_out = Vec::new();
    for held in stored {
        let sub: &Stored = held.borrow();
        if sub.origin == Origin::Api {
            let route = &sub.sub;
            let info = match described.entry(route.table.clone()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let answer =
                        match describe_tables(client, std::slice::from_ref(&route.table)).await {
                            // Only a definite answer (no such table) drops it; a lost connection
                            // must not, or its changes would go unrouted meanwhile.
                            Err(e @ SourceError::Table { .. }) => Some(Err(e.to_string())),
                            Err(_) => None,
                            Ok(infos) => Some(Ok(infos)),
                        };
                    e.insert(answer)
                }
            };
            let problem = match info {
                None => None,
                Some(Err(e)) => Some(e.clone()),
                Some(Ok(infos)) => infos
                    .iter()
                    .find_map(|i| {
                        crate::route::check_columns(route, &i.columns, &i.unpublished_generated)
                            .err()
                    })
                    .map(|e| e.to_string()),
            };
            if let Some(problem) = problem {
                error!(subscription = %sub.id, error = %problem, "subscription left out of routing until it is fixed or deleted");
                left_out.push((sub.id.clone(), problem));
                continue;
            }
        }
        keep.push(held);
    }
    (keep, left_out)
}

/// Every table exists and has the columns that filters and selects name.
async fn validate_columns(
    client: &tokio_postgres::Client,
    router: &Router,
) -> Result<(), IngestError> {
    for info in describe_tables(client, &router.tables()).await? {
        router.validate_table(&info.table, &info.columns, &info.unpublished_generated)?;
    }
    Ok(())
}

pub async fn reload_loop(path: PathBuf, reloader: Arc<Reloader>, cancel: CancellationToken) {
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
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = reload(&path, &reloader) => r,
        };
        match result {
            Ok(n) => info!(subscriptions = n, "config reloaded"),
            Err(e) => {
                error!(error = %e, "config reload failed; keeping the previous subscriptions")
            }
        }
    }
}

async fn reload(path: &Path, reloader: &Reloader) -> Result<usize, IngestError> {
    let config = Config::load(path)?;
    // Held to the end: a SIGHUP reload and an API change are never applied at the same time.
    let mut current = reloader.current.lock().await;
    let needs_restart = sections_needing_restart(&current, &config);
    if !needs_restart.is_empty() {
        warn!(
            sections = %needs_restart.join(", "),
            "these sections changed and take effect only after a restart; SIGHUP applies [[subscriptions]] only"
        );
    }
    // Validate before the table is touched: names, filters, the outbox schema rule, columns.
    let router = build_router(&config);
    {
        let client = reloader.background.source().await?;
        validate_columns(&client, &router).await?;
    }
    let subs: Vec<_> = config.subscriptions().collect();
    {
        let mut outbox_client = reloader
            .background
            .outbox()
            .await
            .map_err(OutboxError::from)?;
        outbox::sync_config_subscriptions(
            &mut outbox_client,
            &Schema::new(config.outbox.schema.as_str()),
            &subs,
        )
        .await?;
    }
    // Each step above gave its connection back: apply takes the pool's two itself.
    let n = reloader.apply(&config).await?;
    let outbox_client = reloader
        .background
        .outbox()
        .await
        .map_err(OutboxError::from)?;
    // After routing includes them: new `backfill = true` subscriptions get their backfill. The
    // reload itself is applied either way; a failure here is tried again at the next start or
    // SIGHUP (the statement starts only what was never started).
    if let Err(e) = super::backfill::start_on_create(
        &outbox_client,
        &Schema::new(config.outbox.schema.as_str()),
        config.backfill_on_create(),
    )
    .await
    {
        warn!(error = %e, "starting the backfills of backfill = true failed");
    }
    *current = config;
    Ok(n)
}

/// The sections of config.toml that SIGHUP does not apply and that differ between `old` and
/// `new`. Secrets compare by value (their `Debug` is masked).
fn sections_needing_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    if differs(&old.source, &new.source) || old.source.url.expose() != new.source.url.expose() {
        out.push("[source]");
    }
    if differs(&old.project, &new.project) {
        out.push("[project]");
    }
    let outbox_url = |c: &Config| c.outbox.url.as_ref().map(|u| u.expose().to_string());
    if differs(&old.outbox, &new.outbox) || outbox_url(old) != outbox_url(new) {
        out.push("[outbox]");
    }
    if differs(&old.delivery, &new.delivery) {
        out.push("[delivery]");
    }
    let token = |c: &Config| c.api.token.as_ref().map(|t| t.expose().to_string());
    if differs(&old.api, &new.api) || token(old) != token(new) {
        out.push("[api]");
    }
    out
}

/// Follows changes made through the API (or by delivery, on 410 Gone).
/// Lets whoever stored a subscription change wait until routing includes it, so that a change
/// committed after the API answered is routed by the new version.
#[derive(Debug)]
pub struct RoutingSync {
    /// Tickets handed out, one per stored change (taken after its commit).
    requested: AtomicU64,
    /// Every ticket up to this one is covered by the routing in force.
    applied: watch::Sender<u64>,
    /// Set once a reload loop runs; until then nobody waits (an API without `walhook run`).
    live: std::sync::atomic::AtomicBool,
}

impl RoutingSync {
    pub fn new() -> Arc<RoutingSync> {
        Arc::new(RoutingSync {
            requested: AtomicU64::new(0),
            applied: watch::Sender::new(0),
            live: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Takes a ticket for a change that is committed; then notify the reload loop.
    pub fn ticket(&self) -> u64 {
        self.requested.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Waits until a reload that started after `ticket` was taken has switched routing; false
    /// when `timeout` ran out first (the reload failed or is slow).
    pub async fn wait(&self, ticket: u64, timeout: Duration) -> bool {
        if !self.live.load(Ordering::SeqCst) {
            return true;
        }
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|a| *a >= ticket))
            .await
            .is_ok_and(|r| r.is_ok());
        reached
    }
}

pub async fn changes_loop(
    reloader: Arc<Reloader>,
    changed: Arc<Notify>,
    routing: Arc<RoutingSync>,
    cancel: CancellationToken,
) {
    routing.live.store(true, Ordering::SeqCst);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changed.notified() => {}
        }
        let config = reloader.current.lock().await;
        // Read before the subscriptions are: every ticket up to here was taken after its
        // change committed, so this reload sees those changes.
        let covering = routing.requested.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        // Stopping never waits on a statement stuck on a dead connection.
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = reloader.apply(&config) => r,
        };
        match result {
            Ok(n) => {
                info!(
                    subscriptions = n,
                    took_ms = started.elapsed().as_millis() as u64,
                    "subscriptions changed; routing updated"
                );
                routing
                    .applied
                    .send_if_modified(|a| std::mem::replace(a, covering.max(*a)) < covering);
            }
            Err(e) => {
                error!(error = %e, "subscriptions changed but could not be applied; keeping the previous routing")
            }
        }
    }
}

/// How often partitions created or attached while walhook runs are made REPLICA IDENTITY FULL.
pub const PARTITION_SWEEP: Duration = Duration::from_secs(5);

/// Partitions created or attached while walhook runs start with the default replica identity;
/// this sweep gives them FULL (with `manage_replica_identity`), like the partitions that existed
/// at start. Errors are logged and retried at the next sweep; they never stop ingest.
pub async fn partitions_loop(
    config: Config,
    background: crate::pg::Background,
    router: watch::Receiver<Router>,
    cancel: CancellationToken,
) {
    if !config.source.manage_replica_identity {
        return;
    }
    loop {
        if !sleep_or_cancel(PARTITION_SWEEP, &cancel).await {
            return;
        }
        let tables = router.borrow().tables();
        if tables.is_empty() {
            continue;
        }
        let work = async {
            let c = background.source().await?;
            // One catalog query for all tables; only partitioned ones are described further.
            let tables = partitioned(&c, &tables).await?;
            if tables.is_empty() {
                return Ok(());
            }
            let mut infos = describe_tables(&c, &tables).await?;
            infos.retain(|i| i.partitions.iter().any(|(_, ident)| *ident != 'f'));
            ensure_replica_identity(&c, &mut infos, true).await
        };
        // Stopping never waits on a statement stuck on a dead connection.
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = work => r,
        };
        if let Err(e) = result {
            warn!(error = %e, "partition sweep failed; retrying at the next one");
        }
    }
}

/// The partitioned tables among `tables`.
async fn partitioned(
    client: &tokio_postgres::Client,
    tables: &[crate::model::TableName],
) -> Result<Vec<crate::model::TableName>, SourceError> {
    let (schemas, names): (Vec<&str>, Vec<&str>) = tables
        .iter()
        .map(|t| (t.schema.as_str(), t.name.as_str()))
        .unzip();
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text
             FROM unnest($1::text[], $2::text[]) AS t(schema, name)
             JOIN pg_namespace n ON n.nspname = t.schema
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.name
             WHERE c.relkind = 'p'",
            &[&schemas, &names],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| crate::model::TableName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[source]\nurl = \"postgres://u:pw@127.0.0.1/db\"\n[project]\nid = \"p\"\n{extra}"
        );
        Config::parse(&text, "test.toml").unwrap()
    }

    #[test]
    fn names_the_sections_a_sighup_cannot_apply() {
        let base = config("");
        assert!(sections_needing_restart(&base, &config("")).is_empty());
        let changed = config("[delivery]\nmax_in_flight = 3\n[api]\ntoken = \"t\"\n");
        assert_eq!(
            sections_needing_restart(&base, &changed),
            vec!["[delivery]", "[api]"]
        );
        // A secret that differs only in value is still noticed, though its Debug is masked.
        let other_pw = Config::parse(
            "[source]\nurl = \"postgres://u:other@127.0.0.1/db\"\n[project]\nid = \"p\"\n",
            "test.toml",
        )
        .unwrap();
        assert_eq!(sections_needing_restart(&base, &other_pw), vec!["[source]"]);
    }
}
