//! A cap on the requests in flight to one receiver (scheme, host and port), shared by every
//! subscription that posts there.
//!
//! Why: each request in flight holds an HTTP/1.1 connection with its buffers (about 30 KiB).
//! One change fanned out to 10,000 subscriptions of one receiver would otherwise open 10,000
//! connections at once; with the cap it goes through at most `max_requests_per_host` warm
//! connections, which is also gentler on the receiver.
//!
//! Guarantees:
//! - at most `cap` requests to one origin are in flight at a time; waiters are served in
//!   arrival order (tokio's semaphore is fair), so no subscription of that origin starves;
//! - origins are independent: a slow or dead receiver holds only its own origin's slots;
//! - the wait is bounded: every holder finishes within `[delivery] timeout`;
//! - an origin is forgotten once nobody holds or waits for it, so the map holds only origins in
//!   use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct HostLimits {
    cap: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// One request's slot at its origin; given back on drop.
#[derive(Debug)]
pub struct HostPermit {
    limits: Arc<HostLimits>,
    origin: String,
    sem: Option<Arc<Semaphore>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl HostLimits {
    pub fn new(cap: usize) -> Arc<HostLimits> {
        Arc::new(HostLimits {
            cap: cap.max(1),
            hosts: Mutex::new(HashMap::new()),
        })
    }

    /// The key of `url`'s receiver: `scheme://host:port`.
    pub fn origin(url: &url::Url) -> String {
        format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(0)
        )
    }

    /// Waits for a slot at `origin`.
    pub async fn acquire(self: &Arc<Self>, origin: String) -> HostPermit {
        let sem = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
            hosts
                .entry(origin.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.cap)))
                .clone()
        };
        // The guard exists before the wait, so a cancelled wait still forgets the origin.
        let mut permit = HostPermit {
            limits: self.clone(),
            origin,
            sem: Some(sem.clone()),
            permit: None,
        };
        // Never closed: the semaphore lives as long as someone holds it.
        permit.permit = sem.acquire_owned().await.ok();
        permit
    }

    /// Origins currently held or waited for (for tests).
    pub fn origins_in_use(&self) -> usize {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for HostPermit {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut hosts = self.limits.hosts.lock().unwrap_or_else(|e| e.into_inner());
        // Clones are made under this lock only, and ours is dropped under it: a count of one
        // (the map's) means nobody else holds or waits for this origin.
        drop(self.sem.take());
        if hosts
            .get(&self.origin)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            hosts.remove(&self.origin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn caps_each_origin_separately_and_forgets_idle_ones() {
        let limits = HostLimits::new(2);
        let a1 = limits.acquire("http://a:80".into()).await;
        let _a2 = limits.acquire("http://a:80".into()).await;
        // Another origin is not held back by a full one.
        let b = limits.acquire("http://b:80".into()).await;
        let third = tokio::time::timeout(
            Duration::from_millis(50),
            limits.acquire("http://a:80".into()),
        )
        .await;
        assert!(third.is_err(), "a third request to a full origin waits");
        assert_eq!(limits.origins_in_use(), 2);
        drop(a1);
        let _a3 =
            tokio::time::timeout(Duration::from_secs(5), limits.acquire("http://a:80".into()))
                .await
                .expect("a freed slot is taken");
        drop(b);
        assert_eq!(limits.origins_in_use(), 1, "b is forgotten once unused");
    }

    #[test]
    fn origin_includes_the_default_port() {
        let u = url::Url::parse("https://Example.com/hook?x=1").unwrap();
        assert_eq!(HostLimits::origin(&u), "https://example.com:443");
        let u = url::Url::parse("http://127.0.0.1:8080/a").unwrap();
        assert_eq!(HostLimits::origin(&u), "http://127.0.0.1:8080");
    }
}
