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
//! - the owned set is published to the pumps; only subscriptions in it are claimed, and the
//!   database fences claims and records by worker id, so a stale set never sends twice;
//! - on stop, ownership is given up only after the pumps recorded their last results.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::worker::Engine;
use super::DeliverError;
use crate::backoff::Backoff;
use crate::outbox::queue;

/// The subscriptions this instance owns now.
pub type Owned = Arc<HashSet<String>>;

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
    tx: watch::Sender<Owned>,
    kick: Arc<Notify>,
    stop: CancellationToken,
) {
    let poll = engine.config.poll_interval.0;
    let mut session: Option<Session> = None;
    let mut owned: HashSet<String> = HashSet::new();
    let mut renew_at = Instant::now();
    let mut valid_until: Option<Instant> = None;
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
            if let Err(e) = round(&engine, s, &mut owned, &mut renew_at, &mut valid_until).await {
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
        tx.send_if_modified(|cur| {
            let changed = **cur != owned;
            if changed {
                *cur = Arc::new(owned.clone());
            }
            changed
        });
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = kick.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tx.send_replace(Arc::new(HashSet::new()));
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
