//! An in-process webhook receiver on 127.0.0.1 port 0 that records every request and answers
//! as each test scripts it; and a listener that resets every connection.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// How to answer one request.
#[derive(Clone, Debug)]
pub enum Answer {
    Status(u16),
    /// Status with a `Retry-After` in seconds.
    RetryAfter(u16, u64),
    /// Wait, then answer 200.
    Slow(Duration),
    /// Never answer (until the client gives up).
    Hang,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub at: Instant,
    /// The sender's end of the connection: requests of one walhook process share a few.
    pub peer: std::net::SocketAddr,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

type Script = dyn Fn(&Request, usize) -> Answer + Send + Sync;

pub struct Receiver {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    requests: Arc<Mutex<Vec<Request>>>,
    script: Box<Script>,
}

impl Receiver {
    /// Always 200.
    pub async fn ok() -> Receiver {
        Receiver::scripted(|_, _| Answer::Status(200)).await
    }

    /// `script(request, index of this request)` decides the answer.
    pub async fn scripted(
        script: impl Fn(&Request, usize) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            requests: requests.clone(),
            script: Box::new(script),
        });
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url,
            requests,
            task,
        }
    }

    pub fn snapshot(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.snapshot();
            if got.len() >= n {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "receiver {}: expected {n} requests, got {}",
                    self.url,
                    got.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = Request {
        at: Instant::now(),
        peer,
        path: uri.path().to_string(),
        headers,
        body,
    };
    let index = {
        let mut r = shared.requests.lock().unwrap();
        r.push(req.clone());
        r.len() - 1
    };
    match (shared.script)(&req, index) {
        Answer::Status(s) => (StatusCode::from_u16(s).unwrap(), "answer body").into_response(),
        Answer::RetryAfter(s, secs) => (
            StatusCode::from_u16(s).unwrap(),
            [("retry-after", secs.to_string())],
            "slow down",
        )
            .into_response(),
        Answer::Slow(d) => {
            tokio::time::sleep(d).await;
            (StatusCode::OK, "ok").into_response()
        }
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
    }
}

/// A listener that accepts, reads a little, and resets every connection; counts them.
pub struct Resetter {
    pub url: String,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Resetter {
    pub async fn start() -> Resetter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // SO_LINGER 0: close sends RST instead of FIN.
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                let mut buf = [0u8; 64];
                let _ = stream.readable().await;
                let _ = stream.try_read(&mut buf);
                drop(stream);
            }
        });
        Resetter {
            url,
            connections,
            task,
        }
    }
}

impl Drop for Resetter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// HMAC-SHA256 hex, as the seed's verification code computes it.
pub fn hmac_hex(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}
