//! Loopback endpoints for the scale bench: a fast receiver that records what arrived (requests,
//! distinct delivery ids and paths, commit → arrival latency per distinct event id), a receiver
//! that answers after a delay, a listener that accepts and never answers, and a port with nothing
//! listening. Also a one-shot HTTP/1.1 POST for the management API (no client crate needed).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Only count requests (millions of them).
pub const COUNT: u8 = 0;
/// Also keep distinct `X-Walhook-Delivery-Id` headers and request paths.
pub const IDS: u8 = 1;
/// Also keep commit → first arrival per distinct payload event id.
pub const LATENCY: u8 = 2;

#[derive(Default)]
pub struct Rx {
    pub count: AtomicU64,
    pub mode: AtomicU8,
    pub delivery_ids: Mutex<HashSet<String>>,
    pub paths: Mutex<HashSet<String>>,
    /// Event id → commit → first arrival, microseconds.
    pub latencies: Mutex<HashMap<String, u64>>,
    pub duplicates: AtomicU64,
    pub bad_bodies: AtomicU64,
}

impl Rx {
    pub fn reset(&self, mode: u8) {
        self.count.store(0, Ordering::Relaxed);
        self.delivery_ids.lock().unwrap().clear();
        self.paths.lock().unwrap().clear();
        self.latencies.lock().unwrap().clear();
        self.duplicates.store(0, Ordering::Relaxed);
        self.bad_bodies.store(0, Ordering::Relaxed);
        self.mode.store(mode, Ordering::Relaxed);
    }

    pub fn distinct_ids(&self) -> usize {
        self.delivery_ids.lock().unwrap().len()
    }

    pub fn distinct_events(&self) -> usize {
        self.latencies.lock().unwrap().len()
    }

    fn record(&self, uri: &Uri, headers: &HeaderMap, body: &[u8]) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mode = self.mode.load(Ordering::Relaxed);
        if mode == COUNT {
            return;
        }
        let id = headers
            .get("x-walhook-delivery-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !self.delivery_ids.lock().unwrap().insert(id) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        self.paths.lock().unwrap().insert(uri.path().to_string());
        if mode == LATENCY {
            match arrival(body) {
                Some((event, lat)) => {
                    self.latencies.lock().unwrap().entry(event).or_insert(lat);
                }
                None => {
                    self.bad_bodies.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The payload's event id and its commit (`timestamp`) → now latency in microseconds.
pub fn arrival(body: &[u8]) -> Option<(String, u64)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let ts = chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str()?).ok()?;
    let lat = chrono::Utc::now().signed_duration_since(ts);
    let micros = lat.num_microseconds().map(|m| m.max(0) as u64)?;
    Some((v["id"].as_str()?.to_string(), micros))
}

/// An axum receiver on 127.0.0.1 answering 200 after `delay`; returns its base URL.
pub async fn receiver(state: Arc<Rx>, delay: Duration) -> anyhow::Result<String> {
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let state = state.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            state.record(&uri, &headers, &body);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// A listener that accepts connections, reads and discards what comes, and never answers.
/// Returns its base URL and a count of connections accepted.
pub async fn black_hole() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let accepted = Arc::new(AtomicU64::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    Ok((url, accepted))
}

/// A loopback port with nothing listening (bound, then released): connections are refused.
pub fn refused_url() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    drop(l);
    Ok(format!("http://127.0.0.1:{port}"))
}

/// A free loopback port for walhook's API.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One HTTP/1.1 request (`Connection: close`); returns the status code and the body.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    sock.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), sock.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
