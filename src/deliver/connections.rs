//! HTTP/1.1 connections to receivers: opened through the egress policy, kept alive per origin,
//! reused by the next request to that origin.
//!
//! Guarantees:
//! - a connection is made only to an address the policy allows: IP literals were checked with
//!   the URL ([`super::http`]), names are resolved here by [`PolicyResolver`], which returns
//!   only allowed addresses (so a name that re-resolves to a private address is still refused);
//! - connecting (resolution, TCP and TLS together) ends within `connect_timeout`;
//! - HTTPS is verified by the [`TlsConnector`] built in `super::http` (webpki roots plus
//!   `ca_file`, ALPN `http/1.1`), with the URL's host as the name the certificate must carry;
//! - a connection goes back to the idle pool only after its response was read to the end
//!   ([`Connections::put`]); one that failed, timed out or was left mid-body is dropped, so a
//!   request never shares a connection with another's leftover bytes;
//! - idle connections are bounded: at most `max_requests_per_host` per origin are ever in use
//!   (`super::host_limit`), so no more are ever idle; one idle longer than the idle timeout or
//!   closed by the receiver is dropped when found, and the whole pool is swept of those every
//!   `SWEEP_EVERY`.
//!
//! A connection's I/O is driven by the task using it (`Io::drive`), not by a task of its own:
//! the request, its response and the socket's readiness wake that one task, instead of each
//! exchange passing from the request's task to a connection task and back. An idle connection
//! is polled by nobody; one the receiver closed meanwhile is found when taken
//! ([`Connections::get`] asks it to be ready) or at the next sweep, which closes it.
//!
//! Why not reqwest here: its layers (a pool shared through a channel to a connection task per
//! request, a redirect and timeout stack, URL re-parsing) cost ~40% of the CPU of a delivery's
//! HTTP exchange (benches measured 40 against 25 µs a request, receiver included). hyper's
//! connection API does the HTTP; this module only keeps connections.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::egress::{EgressError, PolicyResolver};

/// The request body type of every connection.
pub type Body = Full<Bytes>;

/// What a connection buffers of a response at most (hyper's default is ~400 KB): walhook reads
/// 64 KiB of a body at most (`super::http`), and hundreds of connections may be open at once.
const READ_BUF_MAX: usize = 64 * 1024;

/// How often the idle pool is swept of closed and expired connections.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The name did not resolve, or resolved only to refused addresses.
    #[error(transparent)]
    Egress(#[from] EgressError),
    #[error("connect timeout")]
    Timeout,
    #[error("{0}")]
    Tcp(std::io::Error),
    /// The TLS handshake failed; the text is rustls's (e.g. `UnknownIssuer`).
    #[error("{0}")]
    Tls(std::io::Error),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("HTTP handshake: {0}")]
    Handshake(hyper::Error),
}

/// Where a request goes, resolved from its URL once (`super::http` keeps these per URL).
#[derive(Debug)]
pub struct Endpoint {
    /// `scheme://host:port`: the pool's and `host_limit`'s key.
    pub origin: String,
    /// The `Host` header: host, and port when not the scheme's default.
    pub authority: String,
    /// Path and query, the request target.
    pub target: String,
    host: String,
    port: u16,
    /// An IP literal's address (already checked by the policy); `None` for a name.
    ip: Option<std::net::IpAddr>,
    tls: bool,
}

impl Endpoint {
    pub fn new(url: &url::Url, origin: String) -> Endpoint {
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port_or_known_default().unwrap_or(0);
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let mut target = url.path().to_string();
        if let Some(q) = url.query() {
            target.push('?');
            target.push_str(q);
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(a)) => Some(a.into()),
            Some(url::Host::Ipv6(a)) => Some(a.into()),
            _ => None,
        };
        Endpoint {
            origin,
            authority,
            target,
            // The name rustls and the resolver want: IPv6 without brackets.
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            ip,
            tls: url.scheme() == "https",
        }
    }
}

/// A connection ready for one request; given back with [`Connections::put`] once its response
/// was read, or dropped (closing it).
pub struct Conn {
    send: SendRequest<Body>,
    io: Io,
    /// Taken from the idle pool rather than opened for this request.
    pub(super) reused: bool,
}

impl Conn {
    /// The request side and the connection's I/O, borrowed apart so that a request's future
    /// can be [`Io::drive`]n by its connection.
    pub(super) fn parts(&mut self) -> (&mut SendRequest<Body>, &mut Io) {
        (&mut self.send, &mut self.io)
    }

    /// The connection can carry another exchange: its I/O has not ended.
    fn is_open(&self) -> bool {
        self.io.0.is_some() && !self.send.is_closed()
    }
}

/// hyper's connection state machine (reads, writes, keep-alive), `None` once it ended.
pub(super) struct Io(Option<Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>>);

impl Io {
    /// Runs `fut` (a request sent on this connection, or the reading of its response) while
    /// driving the connection in the same task. An error of the connection reaches `fut`
    /// (hyper hands it to the exchange in flight), so the connection's own result is dropped.
    pub(super) async fn drive<F: Future>(&mut self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            self.poll(cx);
            fut.as_mut().poll(cx)
        })
        .await
    }

    /// Advances the connection; it is `None` afterwards if it ended.
    fn poll(&mut self, cx: &mut Context<'_>) {
        if let Some(io) = self.0.as_mut() {
            if io.as_mut().poll(cx).is_ready() {
                self.0 = None;
            }
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Idle {
    fn expired(&self, now: Instant, timeout: Duration) -> bool {
        now.duration_since(self.since) >= timeout
    }

    /// For the sweep: not expired, and (polled without a task to wake) not closed by the peer.
    fn alive(&mut self, now: Instant, timeout: Duration) -> bool {
        if self.expired(now, timeout) {
            return false;
        }
        self.conn.io.poll(&mut Context::from_waker(Waker::noop()));
        self.conn.is_open()
    }
}

struct Pool {
    idle: HashMap<String, Vec<Idle>>,
    swept: Instant,
}

pub struct Connections {
    tls: TlsConnector,
    resolver: PolicyResolver,
    connect_timeout: Duration,
    idle_timeout: Duration,
    pool: Mutex<Pool>,
}

impl Connections {
    pub fn new(
        tls: TlsConnector,
        resolver: PolicyResolver,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Connections {
        Connections {
            tls,
            resolver,
            connect_timeout,
            idle_timeout,
            pool: Mutex::new(Pool {
                idle: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection to `ep`'s origin that is still open, or a new one.
    pub async fn get(&self, ep: &Endpoint) -> Result<Conn, ConnectError> {
        while let Some(mut conn) = self.take_idle(&ep.origin) {
            // Ready once the connection has seen the previous exchange end; an error means
            // the receiver closed it while idle.
            let (send, io) = conn.parts();
            if io.drive(send.ready()).await.is_ok() {
                conn.reused = true;
                return Ok(conn);
            }
        }
        self.open(ep).await
    }

    fn take_idle(&self, origin: &str) -> Option<Conn> {
        let mut pool = self.lock();
        let list = pool.idle.get_mut(origin)?;
        // Newest first: the warmest connection, and the one least likely closed by the peer.
        // Not polled here, under the lock: `get` drives it to ready, which finds it closed.
        let now = Instant::now();
        while let Some(idle) = list.pop() {
            if !idle.expired(now, self.idle_timeout) {
                return Some(idle.conn);
            }
        }
        pool.idle.remove(origin);
        None
    }

    /// Opens a new connection, bypassing the idle pool.
    pub async fn open(&self, ep: &Endpoint) -> Result<Conn, ConnectError> {
        tokio::time::timeout(self.connect_timeout, self.connect(ep))
            .await
            .map_err(|_| ConnectError::Timeout)?
    }

    /// Returns `conn` to the idle pool (its response must have been read to the end).
    pub fn put(&self, origin: &str, conn: Conn) {
        if !conn.is_open() {
            return;
        }
        let now = Instant::now();
        let mut pool = self.lock();
        if now.duration_since(pool.swept) >= SWEEP_EVERY {
            pool.swept = now;
            let timeout = self.idle_timeout;
            pool.idle.retain(|_, list| {
                list.retain_mut(|i| i.alive(now, timeout));
                !list.is_empty()
            });
        }
        let list = match pool.idle.get_mut(origin) {
            Some(l) => l,
            None => pool.idle.entry(origin.to_string()).or_default(),
        };
        list.push(Idle { conn, since: now });
    }

    async fn connect(&self, ep: &Endpoint) -> Result<Conn, ConnectError> {
        let addrs: Vec<SocketAddr> = match ep.ip {
            Some(ip) => vec![SocketAddr::new(ip, ep.port)],
            None => self
                .resolver
                .resolve_allowed(&ep.host)
                .await?
                .into_iter()
                .map(|a| SocketAddr::new(a.ip(), ep.port))
                .collect(),
        };
        let tcp = connect_first(&addrs, self.connect_timeout)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::TimedOut => ConnectError::Timeout,
                _ => ConnectError::Tcp(e),
            })?;
        // Requests are written whole; Nagle would hold the body's last segment for an ACK.
        tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
        if ep.tls {
            let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
                .map_err(|_| ConnectError::ServerName(ep.host.clone()))?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(ConnectError::Tls)?;
            handshake(TokioIo::new(stream)).await
        } else {
            handshake(TokioIo::new(tcp)).await
        }
    }
}

/// The first address that accepts, in the resolver's order; the last error otherwise. Each
/// address gets an equal share of `budget`, so one that drops packets cannot use up the whole
/// connect timeout before the next is tried.
async fn connect_first(addrs: &[SocketAddr], budget: Duration) -> std::io::Result<TcpStream> {
    let share = budget / (addrs.len().max(1) as u32);
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = Some(e),
            // Not the address in the text: errors are shown to API callers (see `egress`).
            Err(_) => last = Some(std::io::ErrorKind::TimedOut.into()),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
}

async fn handshake<T>(io: T) -> Result<Conn, ConnectError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (send, conn) = http1::Builder::new()
        .max_buf_size(READ_BUF_MAX)
        .handshake(io)
        .await
        .map_err(ConnectError::Handshake)?;
    Ok(Conn {
        send,
        io: Io(Some(Box::pin(conn))),
        reused: false,
    })
}
