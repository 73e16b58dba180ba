//! Ownership of this instance's subscriptions, tied to a live Postgres session.
//!
//! Guarantees:
//! - one dedicated connection per instance (not one per subscription) holds a session-level
//!   advisory lock `(SESSION_LOCK_NS, token)`; every subscription this instance owns carries that
//!   token. When the process dies the server ends the session, the lock disappears, and another
//!   instance (or the restarted one) takes those subscriptions over at its next round (every
//!   `poll_interval`), without waiting for the lease;
//! - the lease (renewed for all owned subscriptions in one statement every third of `lease`)
//!   is the fallback for a network partition: an instance that cannot renew stops sending once
//!   its lease has run out, and one that loses its lock session stops at once, since others may
//!   take over from that moment;
//! - the owned set is published to the pumps ([`Ownership`]), each pump hearing only about its
//!   own subscription; only subscriptions in it are claimed, and the database fences claims and
//!   records by worker id, so a stale set never sends twice;
//! - once per `poll_interval` the owned subscriptions' watermarks (last sequence number, replay
//!   count) are read in one statement, and the pumps taking rows from memory whose subscription
//!   moved without them since the reading before are woken to read the outbox;
//! - on stop, ownership is given up only after the pumps recorded their last results.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::worker::Engine;
use super::DeliverError;
use crate::backoff::Backoff;
use crate::outbox::queue;

/// The subscriptions this instance owns now, told to each pump about its own subscription only:
/// a change wakes the pumps whose ownership changed. (With one set watched by every pump, each
/// subscription created next to 10,000 others woke 10,000 pumps to look it up: a fifth of
/// walhook's CPU during a burst of API creates.)
#[derive(Default)]
pub struct Ownership {
    inner: Mutex<Followers>,
}

#[derive(Default)]
struct Followers {
    owned: HashSet<String>,
    pumps: HashMap<String, watch::Sender<bool>>,
}

impl Ownership {
    fn lock(&self) -> std::sync::MutexGuard<'_, Followers> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this instance owns `id`, now and as it changes, for the pump of `id` (a pump
    /// started again for `id` replaces the previous one's).
    pub fn follow(&self, id: &str) -> watch::Receiver<bool> {
        let mut f = self.lock();
        let (tx, rx) = watch::channel(f.owned.contains(id));
        f.pumps.insert(id.to_string(), tx);
        rx
    }

    /// The pump of `id` is gone and none replaces it.
    pub fn forget(&self, id: &str) {
        self.lock().pumps.remove(id);
    }

    /// Sets the owned set, telling the pumps whose subscription went in or out of it.
    fn publish(&self, owned: &HashSet<String>) {
        let mut f = self.lock();
        let Followers { owned: cur, pumps } = &mut *f;
        if cur == owned {
            return;
        }
        for id in cur.symmetric_difference(owned) {
            if let Some(tx) = pumps.get(id) {
                let now = owned.contains(id);
                tx.send_if_modified(|v| std::mem::replace(v, now) != now);
            }
        }
        *cur = owned.clone();
    }
}

/// The lock connection, taken out of the pool for good.
struct Session {
    client: deadpool_postgres::ClientWrapper,
    token: i32,
    pid: i32,
}

async fn open(engine: &Engine) -> Result<Session, DeliverError> {
    let client = deadpool_postgres::Object::take(engine.conn().await?);
    // A token another live instance holds is refused by pg_try_advisory_lock: draw again.
    for _ in 0..16 {
        let token: i32 = rand::thread_rng().gen_range(1..i32::MAX);
        if let Some(pid) = queue::try_session_lock(&client, token).await? {
            return Ok(Session { client, token, pid });
        }
    }
    Err(DeliverError::Outbox {
        message: "no free session lock token after 16 tries".into(),
        retryable: true,
    })
}

/// The owned subscriptions' watermarks as read a poll ago, to wake the pumps taking rows from
/// memory that missed some (rows stored by another instance, replays by another process): one
/// statement per `poll_interval` for all of them, instead of a claim per pump.
#[derive(Default)]
struct Watermarks {
    read_at: Option<Instant>,
    /// Subscription → (last sequence number, replays).
    prev: HashMap<String, (i64, i64)>,
}

impl Watermarks {
    async fn follow(&mut self, engine: &Engine, s: &Session) -> Result<(), DeliverError> {
        let poll = engine.config.poll_interval.0;
        if self.read_at.is_some_and(|t| t.elapsed() < poll) {
            return Ok(());
        }
        self.read_at = Some(Instant::now());
        let now = engine
            .queue
            .watermarks(&s.client, engine.worker)
            .await
            .map_err(DeliverError::from)?;
        // Compared with the reading before: what was stored by then has been handed over to
        // this process's pumps if this process stored it. A subscription seen for the first
        // time is only remembered (its pump claimed when it started or took it over).
        let woken = engine.handoff.wake_behind(now.iter().filter_map(|w| {
            let (seq, replays) = self.prev.get(&w.subscription)?;
            Some((w.subscription.as_str(), *seq, w.replays != *replays))
        }));
        if woken > 0 {
            debug!(worker = %engine.worker, pumps = woken, "rows stored or replayed elsewhere: pumps read the outbox");
        }
        self.prev = now
            .into_iter()
            .map(|w| (w.subscription, (w.last_sequence, w.replays)))
            .collect();
        Ok(())
    }
}

/// Renews (when due) and takes over what is free; returns how many were taken over.
async fn round(
    engine: &Engine,
    s: &Session,
    owned: &mut HashSet<String>,
    renew_at: &mut Instant,
    valid_until: &mut Option<Instant>,
) -> Result<usize, DeliverError> {
    let lease = engine.config.lease.0;
    let started = Instant::now();
    if started >= *renew_at {
        let ids = engine
            .queue
            .renew_all(&s.client, engine.worker, lease, s.token, s.pid)
            .await
            .map_err(DeliverError::from)?;
        let lost = owned.iter().filter(|id| !ids.contains(*id)).count();
        if lost > 0 {
            warn!(worker = %engine.worker, subscriptions = lost, "lost ownership of subscriptions (lease expired and taken over); their pumps stand by");
        }
        *owned = ids.into_iter().collect();
        *valid_until = Some(started + lease);
        *renew_at = started + lease / 3;
    }
    let taken = engine
        .queue
        .take_over(&s.client, engine.worker, lease, s.token, s.pid)
        .await
        .map_err(DeliverError::from)?;
    let n = taken.len();
    if n > 0 {
        let sample: Vec<&str> = taken.iter().take(10).map(String::as_str).collect();
        info!(worker = %engine.worker, subscriptions = n, first = ?sample, "delivering: took over subscriptions");
    }
    owned.extend(taken);
    if valid_until.is_none() {
        *valid_until = Some(started + lease);
    }
    Ok(n)
}

/// Keeps ownership until `stop` (cancelled once the pumps are done), then gives it up.
pub async fn run(
    engine: Arc<Engine>,
    ownership: Arc<Ownership>,
    kick: Arc<Notify>,
    stop: CancellationToken,
) {
    let poll = engine.config.poll_interval.0;
    let mut session: Option<Session> = None;
    let mut owned: HashSet<String> = HashSet::new();
    let mut renew_at = Instant::now();
    let mut valid_until: Option<Instant> = None;
    let mut watermarks = Watermarks::default();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let mut wait = poll;
        if session.is_none() {
            match open(&engine).await {
                Ok(s) => {
                    info!(worker = %engine.worker, pid = s.pid, token = s.token, "delivery ownership session open");
                    session = Some(s);
                    renew_at = Instant::now();
                    backoff.reset();
                }
                Err(e) => {
                    wait = backoff.next_delay();
                    warn!(worker = %engine.worker, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot open the delivery ownership session; retrying");
                }
            }
        }
        if let Some(s) = &session {
            let r = match round(&engine, s, &mut owned, &mut renew_at, &mut valid_until).await {
                Ok(_) => watermarks.follow(&engine, s).await,
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                // Whether or not the server still holds the lock, others may take over from
                // now on: stop sending at once, and come back with a new session.
                warn!(worker = %engine.worker, error = %e, "delivery ownership session failed; standing by and reconnecting");
                session = None;
                wait = backoff.next_delay();
            }
        }
        if session.is_none() || valid_until.is_some_and(|t| Instant::now() >= t) {
            owned.clear();
            valid_until = None;
        }
        ownership.publish(&owned);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = kick.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    ownership.publish(&HashSet::new());
    let released = match &session {
        Some(s) => engine.queue.disown_all(&s.client, engine.worker).await,
        None => match engine.conn().await {
            Ok(c) => engine.queue.disown_all(&c, engine.worker).await,
            Err(e) => {
                warn!(worker = %engine.worker, error = %e, "could not give up ownership; others take over when the lease expires");
                return;
            }
        },
    };
    match released {
        Ok(n) => info!(worker = %engine.worker, subscriptions = n, "gave up delivery ownership"),
        Err(e) => {
            warn!(worker = %engine.worker, error = %e, "could not give up ownership; others take over when the lease expires")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_pump_hears_only_about_its_own_subscription() {
        let o = Ownership::default();
        let mut a = o.follow("a");
        let mut b = o.follow("b");
        assert!(!*a.borrow_and_update() && !*b.borrow_and_update());

        o.publish(&set(&["a"]));
        assert!(a.has_changed().unwrap() && *a.borrow_and_update());
        assert!(!b.has_changed().unwrap(), "b's ownership did not change");

        // The same set again, or a change about others only, wakes nobody.
        o.publish(&set(&["a"]));
        o.publish(&set(&["a", "c"]));
        assert!(!a.has_changed().unwrap() && !b.has_changed().unwrap());

        // A pump started later sees the current set; one replaced gets the new follower.
        let mut c = o.follow("c");
        assert!(*c.borrow_and_update());
        let mut a2 = o.follow("a");
        assert!(*a2.borrow_and_update());
        assert!(
            a.has_changed().is_err(),
            "the replaced pump's sender is gone"
        );

        o.publish(&set(&["b"]));
        assert!(!*a2.borrow_and_update() && *b.borrow_and_update() && !*c.borrow_and_update());

        // A forgotten pump is told nothing more.
        o.forget("b");
        assert!(b.has_changed().is_err());
        o.publish(&HashSet::new());
        assert!(o.lock().pumps.len() == 2 && o.lock().owned.is_empty());
    }
}
