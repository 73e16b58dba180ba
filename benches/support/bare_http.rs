//! The delivery limit: a minimal HTTP/1.1 client (keep-alive, one request at a time per
//! connection, no pooling logic, no retries) posting signed bodies to the same receiver over the
//! same number of connections as walhook. What it reaches is what the machine's HTTP stack and
//! the receiver can carry; walhook's end-to-end rate is compared against it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Posts `total` requests, cycling through `bodies`, each signed with HMAC-SHA256 like walhook's
/// `X-Archie-Signature`, over `connections` keep-alive connections. Returns the elapsed time.
pub async fn post_all(
    url: &str,
    bodies: Arc<Vec<String>>,
    total: usize,
    connections: usize,
) -> anyhow::Result<Duration> {
    let u = url::Url::parse(url)?;
    let addr = format!(
        "{}:{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(80)
    );
    let path = u.path().to_string();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (addr, path, bodies, next) = (addr.clone(), path.clone(), bodies.clone(), next.clone());
        tasks.spawn(async move { connection(&addr, &path, &bodies, &next, total).await });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(start.elapsed())
}

async fn connection(
    addr: &str,
    path: &str,
    bodies: &[String],
    next: &AtomicUsize,
    total: usize,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            return Ok(());
        }
        let body = &bodies[i % bodies.len()];
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s").expect("any key length");
        mac.update(body.as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nx-archie-signature: {sig}\r\nx-archie-event-id: evt_{i}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        read_response(&mut stream, &mut buf).await?;
    }
}

/// Reads one response (status line, headers, `content-length` body) and checks it is a 2xx.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "receiver closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 2"), "not a 2xx: {head}");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "receiver closed the connection mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}
