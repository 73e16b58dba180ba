//! No password in the clear: SQL connections (tokio-postgres, which authenticates internally)
//! that could send a password without TLS are opened through [`AuthGuard`], which reads what the
//! server sends before authentication and fails the connection when the server asks for a
//! cleartext or MD5 password on an unencrypted channel, before tokio-postgres can answer.
//!
//! Guarantees:
//! - the decision rests on what the server actually asked (its authentication request), not on
//!   a guess from settings: SCRAM (which never reveals the password) and trust pass; so does
//!   anything after a TLS handshake (`S` answer to the SSLRequest) and anything over a Unix
//!   socket (no network to read it on);
//! - a refused connection fails with [`Refusal`] inside the I/O error, which
//!   `super::connect_error` and [`crate::pg::classify`] turn into a configuration error naming
//!   `allow_insecure_password` and the fixes; it is never retried as a connection loss;
//! - the guard only reads bytes already received; it adds no round trip and stops inspecting
//!   once authentication succeeded.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::{Host, TargetSessionAttrs};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls};

use super::{MakeRustlsConnect, SslMode};

/// The server asked for a password walhook will not send unencrypted.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub method: &'static str,
    pub host: String,
    pub mode: SslMode,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", refusal_text(self.method, &self.host, self.mode))
    }
}

impl std::error::Error for Refusal {}

/// The one wording of a refusal, shared with the replication connection.
pub fn refusal_text(method: &str, host: &str, mode: SslMode) -> String {
    let article = if method.starts_with(['a', 'e', 'i', 'o', 'u', 'M']) {
        "an"
    } else {
        "a"
    };
    format!(
        "the server {host} asked for {article} {method} over an unencrypted connection (sslmode={mode}); \
         walhook does not send a password where it can be read on the network. Fix one of: use \
         TLS (sslmode=require, or verify-full with sslrootcert); or make the server use SCRAM \
         (password_encryption = 'scram-sha-256', a scram-sha-256 line in pg_hba.conf, then set \
         the role's password again); or accept the risk with allow_insecure_password = true in \
         [source] (or [outbox] for outbox.url)"
    )
}

/// The SSLRequest packet: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

enum State {
    /// Nothing written yet: the first write says whether TLS is being negotiated.
    FirstWrite,
    /// SSLRequest sent; the server's one-byte answer comes next.
    SslAnswer,
    /// Unencrypted protocol messages, read until authentication succeeds.
    Plain(Parser),
    /// TLS, a Unix socket, or authenticated: nothing more to check.
    Pass,
}

/// Walks backend messages (type byte, 4-byte length including itself) across reads.
#[derive(Default)]
struct Parser {
    /// Type, length and, for `R` messages, the 4-byte authentication code.
    header: [u8; 9],
    have: usize,
    /// Bytes of the current message body still to skip.
    skip: usize,
}

enum Seen {
    Nothing,
    Forbidden(&'static str),
    Authenticated,
}

impl Parser {
    fn feed(&mut self, mut bytes: &[u8]) -> Seen {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let is_auth = self.header[0] == b'R' && self.have > 0;
            let need = if is_auth && self.have >= 5 && self.len() >= 8 {
                9
            } else {
                5
            };
            let n = (need - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < need {
                continue;
            }
            if self.header[0] == b'R' && need == 5 && self.len() >= 8 {
                continue; // read the authentication code next
            }
            let len = self.len();
            if need == 9 {
                let code = i32::from_be_bytes(self.header[5..9].try_into().expect("4 bytes"));
                self.have = 0;
                self.skip = len - 8;
                match code {
                    0 => return Seen::Authenticated,
                    3 => return Seen::Forbidden("cleartext password"),
                    5 => return Seen::Forbidden("MD5 password"),
                    _ => {}
                }
            } else {
                self.have = 0;
                self.skip = len.saturating_sub(4);
            }
        }
        Seen::Nothing
    }

    fn len(&self) -> usize {
        u32::from_be_bytes(self.header[1..5].try_into().expect("4 bytes")) as usize
    }
}

/// A stream that refuses cleartext and MD5 password requests on an unencrypted channel.
pub struct AuthGuard<S> {
    inner: S,
    state: State,
    host: String,
    mode: SslMode,
}

impl<S> AuthGuard<S> {
    fn new(inner: S, host: String, mode: SslMode, check: bool) -> Self {
        AuthGuard {
            inner,
            state: if check {
                State::FirstWrite
            } else {
                State::Pass
            },
            host,
            mode,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        let this = &mut *self;
        let seen = match &mut this.state {
            State::Pass | State::FirstWrite => Seen::Nothing,
            State::SslAnswer => match new.split_first() {
                None => Seen::Nothing,
                Some((b'S', _)) => {
                    this.state = State::Pass;
                    Seen::Nothing
                }
                Some((_, rest)) => {
                    let mut p = Parser::default();
                    let seen = p.feed(rest);
                    this.state = State::Plain(p);
                    seen
                }
            },
            State::Plain(p) => p.feed(new),
        };
        match seen {
            Seen::Nothing => Poll::Ready(Ok(())),
            Seen::Authenticated => {
                this.state = State::Pass;
                Poll::Ready(Ok(()))
            }
            Seen::Forbidden(method) => {
                // The request never reaches tokio-postgres, so no password is written.
                buf.set_filled(before);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    Refusal {
                        method,
                        host: this.host.clone(),
                        mode: this.mode,
                    },
                )))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if matches!(self.state, State::FirstWrite) && !buf.is_empty() {
            self.state = if buf.starts_with(&SSL_REQUEST) {
                State::SslAnswer
            } else if buf[0] == 0x16 {
                // A TLS ClientHello (direct TLS negotiation).
                State::Pass
            } else {
                State::Plain(Parser::default())
            };
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TCP or Unix socket, so both kinds of host share one connection type.
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A connection's driver, to be spawned.
pub type Driver = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

/// Connects like `tokio_postgres::Config::connect` (each host in turn, `hostaddr`, keepalives,
/// `connect_timeout`, `tcp_user_timeout`, `target_session_attrs`), through an [`AuthGuard`].
pub async fn connect(
    pg: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
) -> Result<(Client, Driver), tokio_postgres::Error> {
    let hosts = pg.get_hosts();
    let addrs = pg.get_hostaddrs();
    let n = hosts.len().max(addrs.len());
    let mut last = None;
    for i in 0..n {
        let port = pg
            .get_ports()
            .get(i)
            .or_else(|| pg.get_ports().first())
            .copied()
            .unwrap_or(5432);
        let (name, socket) = match (hosts.get(i), addrs.get(i)) {
            (Some(Host::Unix(dir)), _) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let s = UnixStream::connect(&path).await.map(Socket::Unix);
                (None, s)
            }
            (host, addr) => {
                let name = match host {
                    Some(Host::Tcp(h)) => h.clone(),
                    _ => addr.map(|a| a.to_string()).unwrap_or_default(),
                };
                let to = addr.map(|a| a.to_string()).unwrap_or_else(|| name.clone());
                (Some(name), tcp(pg, &to, port).await.map(Socket::Tcp))
            }
        };
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                last = Some(io_error(e).await);
                continue;
            }
        };
        let check = name.is_some();
        let host = name.clone().unwrap_or_else(|| "(unix socket)".into());
        let guarded = AuthGuard::new(socket, host, tls.mode, check);
        let attempt = if tls.mode == SslMode::Disable {
            pg.connect_raw(guarded, NoTls)
                .await
                .map(|(c, conn)| (c, Box::pin(conn) as Driver))
        } else {
            let mut make = tls.clone();
            let connector =
                <MakeRustlsConnect as MakeTlsConnect<AuthGuard<Socket>>>::make_tls_connect(
                    &mut make,
                    name.as_deref().unwrap_or("localhost"),
                );
            match connector {
                Ok(c) => pg
                    .connect_raw(guarded, c)
                    .await
                    .map(|(c, conn)| (c, Box::pin(conn) as Driver)),
                Err(e) => Err(io_error(io::Error::other(e)).await),
            }
        };
        match attempt {
            Ok((client, driver)) => match session_ok(pg, client, driver).await {
                Ok(pair) => return Ok(pair),
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => e,
        None => {
            io_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no host configured",
            ))
            .await
        }
    })
}

async fn tcp(pg: &tokio_postgres::Config, to: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((to, port)).await? {
        let attempt = TcpStream::connect(addr);
        let s = match pg.get_connect_timeout() {
            Some(t) => match tokio::time::timeout(*t, attempt).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect timeout after {} s", t.as_secs()),
                )),
            },
            None => attempt.await,
        };
        match s {
            Ok(s) => {
                s.set_nodelay(true)?;
                let sock = socket2::SockRef::from(&s);
                if let Some(t) = pg.get_tcp_user_timeout() {
                    sock.set_tcp_user_timeout(Some(*t))?;
                }
                if pg.get_keepalives() {
                    let mut ka = socket2::TcpKeepalive::new().with_time(pg.get_keepalives_idle());
                    if let Some(i) = pg.get_keepalives_interval() {
                        ka = ka.with_interval(i);
                    }
                    if let Some(r) = pg.get_keepalives_retries() {
                        ka = ka.with_retries(r);
                    }
                    sock.set_tcp_keepalive(&ka)?;
                }
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve any addresses",
        )
    }))
}

/// `target_session_attrs=read-write` / `read-only`, checked as tokio-postgres does.
async fn session_ok(
    pg: &tokio_postgres::Config,
    client: Client,
    driver: Driver,
) -> Result<(Client, Driver), tokio_postgres::Error> {
    let want_writes = match pg.get_target_session_attrs() {
        TargetSessionAttrs::ReadWrite => true,
        TargetSessionAttrs::ReadOnly => false,
        _ => return Ok((client, driver)),
    };
    // The driver must run for the query; it is handed back as a task's completion.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let r = driver.await;
        let _ = tx.send(());
        r
    });
    let read_only = client
        .simple_query("SHOW transaction_read_only")
        .await?
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v == "on"),
            _ => None,
        })
        .unwrap_or(false);
    let driver: Driver = Box::pin(async move {
        let _ = rx.await;
        task.await.unwrap_or(Ok(()))
    });
    if read_only == want_writes {
        let what = if want_writes {
            "database does not allow writes"
        } else {
            "database is not read only"
        };
        return Err(io_error(io::Error::new(io::ErrorKind::PermissionDenied, what)).await);
    }
    Ok((client, driver))
}

/// tokio-postgres's errors cannot be built outside it; this one carries `e` as its I/O cause
/// (what a failed socket connect gives there too), made by a startup on a stream that fails.
async fn io_error(e: io::Error) -> tokio_postgres::Error {
    struct Failing(Option<io::Error>);
    impl AsyncRead for Failing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(self
                .0
                .take()
                .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())))
        }
    }
    impl AsyncWrite for Failing {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(self
                .0
                .take()
                .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    let mut cfg = tokio_postgres::Config::new();
    cfg.user("walhook")
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    match tokio::time::timeout(
        Duration::from_secs(5),
        cfg.connect_raw(Failing(Some(e)), NoTls),
    )
    .await
    {
        Ok(Err(err)) => err,
        // Unreachable: the first write fails. Kept total rather than panicking.
        Ok(Ok(_)) | Err(_) => match cfg.connect_raw(Failing(None), NoTls).await {
            Err(err) => err,
            Ok(_) => unreachable!("a stream that fails every write cannot start a session"),
        },
    }
}

/// The [`Refusal`] an error (an I/O error from the guard) carries, if any.
pub(crate) fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
    if let Some(r) = e.downcast_ref::<Refusal>() {
        return Some(r);
    }
    e.downcast_ref::<io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<Refusal>())
}

/// A pool's connections through [`connect`].
pub(super) struct GuardedConnect(pub(super) MakeRustlsConnect);

impl deadpool_postgres::Connect for GuardedConnect {
    fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> futures_util::future::BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let pg = pg.clone();
        Box::pin(async move {
            let (client, driver) = connect(&pg, &self.0).await?;
            let task = tokio::spawn(async move {
                if let Err(e) = driver.await {
                    tracing::warn!(error = %e, "SQL connection ended with an error");
                }
            });
            Ok((client, task))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        b.extend_from_slice(extra);
        msg(b'R', &b)
    }

    #[test]
    fn finds_the_request_across_any_split() {
        let mut stream = msg(b'N', b"SNOTICE\0\0");
        stream.extend(auth(5, &[1, 2, 3, 4]));
        for split in 0..stream.len() {
            let mut p = Parser::default();
            let a = p.feed(&stream[..split]);
            let b = p.feed(&stream[split..]);
            assert!(
                matches!(a, Seen::Forbidden("MD5 password"))
                    || matches!(b, Seen::Forbidden("MD5 password")),
                "split at {split}"
            );
        }
        let mut p = Parser::default();
        assert!(matches!(
            p.feed(&auth(3, &[])),
            Seen::Forbidden("cleartext password")
        ));
        // SASL (10) with its mechanism list, then OK: allowed.
        let mut p = Parser::default();
        assert!(matches!(
            p.feed(&auth(10, b"SCRAM-SHA-256\0\0")),
            Seen::Nothing
        ));
        assert!(matches!(p.feed(&auth(0, &[])), Seen::Authenticated));
        // An error answer is passed on.
        let mut p = Parser::default();
        assert!(matches!(p.feed(&msg(b'E', b"SFATAL\0\0")), Seen::Nothing));
    }
}
