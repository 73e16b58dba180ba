//! The delivery supervisor: follows the subscriptions table and keeps one pump
//! ([`super::worker`]) per active subscription, with the shared tasks they use (the batched
//! claimer and recorder, [`super::batch`]; ownership, [`super::owner`]).
//!
//! Guarantees:
//! - a subscription never has two pumps in one process: a stopped pump's replacement starts only
//!   after the old one recorded its last results;
//! - a pump that panicked is replaced at once (its rows were only held in its memory; the outbox
//!   has them all);
//! - on shutdown, the pumps record their last results before the shared tasks end and ownership
//!   is given up.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::batch::Batcher;
use super::owner::{self, Ownership};
use super::worker::{Engine, Pump, RESCAN};
use super::DeliverError;
use crate::outbox::subscriptions::{self, Stored};

/// Runs pumps for the active subscriptions until `cancel`; `subs_changed` is bumped whenever the
/// subscriptions table was changed by this process.
pub async fn run(
    engine: Arc<Engine>,
    mut subs_changed: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    let mut pumps: HashMap<String, (watch::Sender<Arc<Stored>>, CancellationToken)> =
        HashMap::new();
    // Pumps told to stop that have not recorded their last results yet: no replacement for
    // them starts before they are done (it could send what they still hold).
    let mut stopping: HashSet<String> = HashSet::new();
    let mut tasks = JoinSet::new();
    // Which subscription each pump task serves, so a panicked one can be replaced.
    let mut pump_ids: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut shared = JoinSet::new();
    let ownership = Arc::new(Ownership::default());
    let kick = Arc::new(Notify::new());
    let owner_stop = CancellationToken::new();
    let owner_task = tokio::spawn(owner::run(
        engine.clone(),
        ownership.clone(),
        kick.clone(),
        owner_stop.clone(),
    ));
    let batcher = Batcher::start(engine.clone(), &mut shared);
    // Every subscription of the last reading, active or not: one that vanished was deleted (by
    // the API or by leaving config.toml), and its metric series go with it.
    let mut known: HashSet<String> = HashSet::new();
    // The last reading: a new one decodes only the subscriptions that changed.
    let mut cache = subscriptions::Cache::default();
    info!(worker = %engine.worker, pool_size = engine.config.pool_size, "delivery started");
    loop {
        let mut waiting = false;
        match load_all(&engine, &mut cache).await {
            Ok(all) => {
                let now: HashSet<String> = all.iter().map(|s| s.id.clone()).collect();
                for gone in known.difference(&now) {
                    engine.metrics.forget_subscription(gone);
                }
                known = now;
                let subs: Vec<Arc<Stored>> = all.into_iter().filter(|s| s.active).collect();
                let ids: HashSet<String> = subs.iter().map(|s| s.id.clone()).collect();
                pumps.retain(|id, (_, token)| {
                    let keep = ids.contains(id) && !token.is_cancelled();
                    if !keep {
                        token.cancel();
                        stopping.insert(id.clone());
                        info!(subscription = %id, "delivery stopped for subscription");
                    }
                    keep
                });
                for sub in subs {
                    match pumps.get(&sub.id) {
                        Some((tx, _)) => {
                            // The cache hands out a new value exactly when the row was
                            // written again: an edit that left `updated_at` alone (by SQL)
                            // reaches the pump too.
                            tx.send_if_modified(|old| {
                                let changed = !Arc::ptr_eq(old, &sub);
                                if changed {
                                    *old = sub.clone();
                                }
                                changed
                            });
                        }
                        None if stopping.contains(&sub.id) => waiting = true,
                        None => {
                            let (tx, rx) = watch::channel(sub.clone());
                            let token = cancel.child_token();
                            pumps.insert(sub.id.clone(), (tx, token.clone()));
                            let slot = engine.handoff.register(&sub.id);
                            let pump = Pump::new(
                                engine.clone(),
                                rx,
                                ownership.follow(&sub.id),
                                batcher.clone(),
                                slot,
                            );
                            let handle = tasks.spawn(pump.run(token));
                            pump_ids.insert(handle.id(), sub.id.clone());
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read subscriptions; delivery keeps its pumps"),
        }
        // A replacement waits for its predecessor: look again soon, not after a full rescan.
        let rescan = if waiting {
            engine.config.poll_interval.0
        } else {
            RESCAN
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = subs_changed.changed() => {
                if r.is_err() { break }
                kick.notify_one();
            }
            _ = tokio::time::sleep(rescan) => {}
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                match joined {
                    Ok((task, id)) => {
                        pump_ids.remove(&task);
                        stopping.remove(&id);
                        // A pump that ended by itself (410 Gone) is forgotten; the rescan decides.
                        if pumps.get(&id).is_some_and(|(_, t)| !t.is_cancelled()) {
                            pumps.remove(&id);
                        }
                        // A stopped pump records its last attempts after the reading that forgot
                        // a deleted subscription: forget it again once the pump is done.
                        if !known.contains(&id) {
                            engine.metrics.forget_subscription(&id);
                        }
                        if !pumps.contains_key(&id) {
                            engine.handoff.unregister(&id);
                            ownership.forget(&id);
                        }
                    }
                    Err(e) => {
                        // Its rows were only held in its memory: the outbox has them all, and
                        // the replacement (started by the next reading) claims them.
                        let id = pump_ids.remove(&e.id()).unwrap_or_default();
                        error!(subscription = %id, error = %e, "a delivery pump panicked; it is restarted");
                        pumps.remove(&id);
                    }
                }
                pumps.retain(|_, (_, token)| !token.is_cancelled());
            }
        }
    }
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    // The pumps recorded their last results: the shared tasks end with the last handle, then
    // ownership is given up.
    drop(batcher);
    while shared.join_next().await.is_some() {}
    owner_stop.cancel();
    let _ = owner_task.await;
    info!("delivery stopped");
}

async fn load_all(
    engine: &Engine,
    cache: &mut subscriptions::Cache,
) -> Result<Vec<Arc<Stored>>, DeliverError> {
    let client = engine.conn().await?;
    cache
        .load(&client, &engine.schema)
        .await
        .map_err(DeliverError::from)
}
