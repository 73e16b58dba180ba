//! Opening a replication connection: transport, TLS negotiation, startup and authentication.
//!
//! Guarantees:
//! - the password is only ever written to the socket, never into an error or a log line;
//! - after the SSLRequest exactly one byte is read before the handshake, so a server (or
//!   man in the middle) cannot inject plaintext that would later be treated as TLS-protected
//!   (CVE-2021-23222);
//! - the certificate is checked as `sslmode` says (see [`crate::pg::tls`]), with the host name
//!   from `host` even when `hostaddr` says where to connect;
//! - over TLS, SCRAM binds to the channel (`SCRAM-SHA-256-PLUS`, `tls-server-end-point`) when
//!   the server offers it, so a TLS-terminating man in the middle cannot relay the exchange;
//!   `channel_binding=require` refuses to authenticate any other way, `disable` never binds.
//!   Without binding the GS2 header is `y,,` when we could have bound but the server did not
//!   offer it, and `n,,` when we could not (no TLS, no usable certificate hash), so a server
//!   offering -PLUS never mistakes us for a downgraded client;
//! - over TCP without TLS, a cleartext or MD5 password request is refused (a configuration
//!   error naming `allow_insecure_password`) unless the operator allowed it; nothing is sent.

use std::path::PathBuf;

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::{ChannelBinding as BindingPolicy, Host};
use tokio_postgres::fallible_iterator::FallibleIterator;
use tracing::debug;

use super::wire::{fields, proto, server_error, Frame, Io, Wire};
use crate::pg::tls::{self, PgConfig, SslMode};
use crate::source::error::SourceError;

pub struct Opened {
    pub wire: Wire,
    pub params: Vec<(String, String)>,
    pub tls: bool,
    pub target: String,
}

enum Target {
    Tcp {
        host: String,
        connect_to: String,
        port: u16,
    },
    Unix {
        path: PathBuf,
    },
}

fn target(cfg: &tokio_postgres::Config) -> Result<Target, SourceError> {
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    match cfg.get_hosts().first() {
        Some(Host::Tcp(host)) => {
            // hostaddr, when given, is where to connect; host remains the name (SNI).
            let connect_to = cfg
                .get_hostaddrs()
                .first()
                .map(|a| a.to_string())
                .unwrap_or_else(|| host.clone());
            Ok(Target::Tcp {
                host: host.clone(),
                connect_to,
                port,
            })
        }
        Some(Host::Unix(dir)) => Ok(Target::Unix {
            path: dir.join(format!(".s.PGSQL.{port}")),
        }),
        None => match cfg.get_hostaddrs().first() {
            Some(addr) => Ok(Target::Tcp {
                host: addr.to_string(),
                connect_to: addr.to_string(),
                port,
            }),
            None => Err(SourceError::Config("no host configured".into())),
        },
    }
}

pub async fn open(cfg: &PgConfig) -> Result<Opened, SourceError> {
    let user = cfg
        .get_user()
        .ok_or_else(|| SourceError::Config("no user configured".into()))?;
    let target = target(cfg)?;
    let mut over_network = true;
    let (io, tls, desc, end_point): (Box<dyn Io>, bool, String, Option<Vec<u8>>) = match target {
        Target::Unix { path } => {
            // Like libpq, TLS is never used over Unix sockets (sslmode is ignored there).
            let s = UnixStream::connect(&path).await?;
            over_network = false;
            (Box::new(s), false, path.display().to_string(), None)
        }
        Target::Tcp {
            host,
            connect_to,
            port,
        } => {
            let mut s = TcpStream::connect((connect_to.as_str(), port)).await?;
            s.set_nodelay(true)?;
            // The same keepalives as the SQL connections: a silently dropped path is noticed.
            if cfg.get_keepalives() {
                let mut ka = socket2::TcpKeepalive::new().with_time(cfg.get_keepalives_idle());
                if let Some(i) = cfg.get_keepalives_interval() {
                    ka = ka.with_interval(i);
                }
                if let Some(r) = cfg.get_keepalives_retries() {
                    ka = ka.with_retries(r);
                }
                socket2::SockRef::from(&s).set_tcp_keepalive(&ka)?;
            }
            let desc = format!("{host}:{port}");
            match negotiate_tls(&mut s, cfg.ssl_mode()).await? {
                true => {
                    let t = tls::handshake(cfg, &host, s).await?;
                    let end_point = tls::peer_end_point(&t);
                    (Box::new(t), true, desc, end_point)
                }
                false => (Box::new(s), false, desc, None),
            }
        }
    };
    let mut wire = Wire::new(io);

    let mut params: Vec<(&str, &str)> = vec![("user", user), ("replication", "database")];
    params.push(("database", cfg.get_dbname().unwrap_or(user)));
    if let Some(app) = cfg.get_application_name() {
        params.push(("application_name", app));
    }
    if let Some(opts) = cfg.get_options() {
        params.push(("options", opts));
    }
    // Pinned so text output is parseable regardless of server defaults.
    params.extend_from_slice(crate::source::values::TEXT_SESSION);
    frontend::startup_message(params.iter().copied(), &mut wire.write_buf)
        .map_err(|e| SourceError::Config(format!("invalid startup parameter: {e}")))?;
    wire.flush().await?;

    let mut server_params = Vec::new();
    let binding = Binding {
        end_point,
        policy: cfg.get_channel_binding(),
    };
    let plain = Plaintext {
        refuse: over_network && !tls && !cfg.insecure_password_allowed(),
        host: desc.clone(),
        mode: cfg.ssl_mode(),
    };
    authenticate(
        &mut wire,
        user,
        cfg.get_password(),
        &binding,
        &plain,
        &mut server_params,
    )
    .await?;
    loop {
        match wire.read_message(&mut server_params).await? {
            Frame::Msg(Message::BackendKeyData(_)) => {}
            Frame::Msg(Message::ReadyForQuery(_)) => break,
            Frame::Msg(Message::ErrorResponse(body)) => return Err(server_error(body.fields())),
            _ => {
                return Err(SourceError::Protocol(
                    "unexpected message after authentication".into(),
                ))
            }
        }
    }
    Ok(Opened {
        wire,
        params: server_params,
        tls,
        target: desc,
    })
}

/// Returns whether to run a TLS handshake next.
async fn negotiate_tls(s: &mut TcpStream, mode: SslMode) -> Result<bool, SourceError> {
    let require = match mode {
        SslMode::Disable => return Ok(false),
        m => m.requires_tls(),
    };
    let mut buf = bytes::BytesMut::new();
    frontend::ssl_request(&mut buf);
    s.write_all(&buf).await?;
    s.flush().await?;
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => Ok(true),
        b'N' if require => Err(SourceError::Tls(format!(
            "the server does not support TLS (it refused the SSLRequest) but sslmode={mode}"
        ))),
        b'N' => {
            debug!("server refused TLS; continuing unencrypted (sslmode=prefer)");
            Ok(false)
        }
        b'E' => Err(SourceError::Protocol(
            "the server answered the SSLRequest with an error (pre-7.0 server?)".into(),
        )),
        other => Err(SourceError::Protocol(format!(
            "unexpected answer 0x{other:02x} to SSLRequest"
        ))),
    }
}

fn need_password<'a>(password: Option<&'a [u8]>, method: &str) -> Result<&'a [u8], SourceError> {
    password.ok_or_else(|| {
        SourceError::Auth(format!(
            "the server requested {method} authentication but no password is configured"
        ))
    })
}

/// An ErrorResponse during startup. Class 28 (invalid authorization) becomes `Auth` so the
/// caller sees a credentials problem, not a generic server error.
fn startup_error(body: &postgres_protocol::message::backend::ErrorResponseBody) -> SourceError {
    match fields(body.fields()) {
        Ok(f) if f.code.starts_with("28") => {
            SourceError::Auth(format!("{} (SQLSTATE {})", f.message, f.code))
        }
        _ => server_error(body.fields()),
    }
}

/// What SCRAM may bind to: the TLS channel's `tls-server-end-point`, when there is one.
struct Binding {
    end_point: Option<Vec<u8>>,
    policy: BindingPolicy,
}

impl Binding {
    /// The mechanism and GS2 channel-binding flag for the mechanisms the server offers.
    fn choose(
        &self,
        offered: &[String],
    ) -> Result<(&'static str, sasl::ChannelBinding), SourceError> {
        let plus = offered.iter().any(|m| m == sasl::SCRAM_SHA_256_PLUS);
        let plain = offered.iter().any(|m| m == sasl::SCRAM_SHA_256);
        let end_point = self
            .end_point
            .clone()
            .filter(|_| self.policy != BindingPolicy::Disable);
        let chosen = match end_point {
            Some(hash) if plus => (
                sasl::SCRAM_SHA_256_PLUS,
                sasl::ChannelBinding::tls_server_end_point(hash),
            ),
            _ if !plain => {
                return Err(SourceError::Auth(format!(
                    "the server offers only unsupported SASL mechanisms: {}",
                    offered.join(", ")
                )))
            }
            // TLS without binding: tell the server we could have bound (a downgrade shows).
            Some(_) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()),
            None => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
        };
        if self.policy == BindingPolicy::Require && chosen.0 != sasl::SCRAM_SHA_256_PLUS {
            return Err(SourceError::Auth(
                "channel_binding=require but the connection cannot use SCRAM-SHA-256-PLUS \
                 (no TLS, a certificate without a usable hash, or the server does not offer it)"
                    .into(),
            ));
        }
        Ok(chosen)
    }

    /// `channel_binding=require` refuses any authentication that is not SCRAM with binding.
    fn allow_unbound(&self, method: &str) -> Result<(), SourceError> {
        if self.policy == BindingPolicy::Require {
            return Err(SourceError::Auth(format!(
                "channel_binding=require but the server asked for {method} authentication"
            )));
        }
        Ok(())
    }
}

/// Whether a cleartext or MD5 password may be sent on this connection.
struct Plaintext {
    refuse: bool,
    host: String,
    mode: SslMode,
}

impl Plaintext {
    fn check(&self, method: &str, password: Option<&[u8]>) -> Result<(), SourceError> {
        if self.refuse && password.is_some() {
            return Err(SourceError::Config(tls::guard::refusal_text(
                method, &self.host, self.mode,
            )));
        }
        Ok(())
    }
}

async fn authenticate(
    wire: &mut Wire,
    user: &str,
    password: Option<&[u8]>,
    binding: &Binding,
    plain: &Plaintext,
    params: &mut Vec<(String, String)>,
) -> Result<(), SourceError> {
    let mut scram: Option<ScramSha256> = None;
    loop {
        let msg = match wire.read_message(params).await? {
            Frame::Msg(m) => m,
            Frame::CopyBothResponse => {
                return Err(SourceError::Protocol(
                    "CopyBothResponse during authentication".into(),
                ))
            }
        };
        match msg {
            Message::AuthenticationOk => {
                if scram.is_none() {
                    binding.allow_unbound("no (trust)")?;
                }
                return Ok(());
            }
            Message::AuthenticationCleartextPassword => {
                binding.allow_unbound("cleartext password")?;
                plain.check("cleartext password", password)?;
                let pw = need_password(password, "cleartext password")?;
                frontend::password_message(pw, &mut wire.write_buf).map_err(auth_io)?;
                wire.flush().await?;
            }
            Message::AuthenticationMd5Password(body) => {
                binding.allow_unbound("MD5 password")?;
                plain.check("MD5 password", password)?;
                let pw = need_password(password, "MD5 password")?;
                let hash = md5_hash(user.as_bytes(), pw, body.salt());
                frontend::password_message(hash.as_bytes(), &mut wire.write_buf)
                    .map_err(auth_io)?;
                wire.flush().await?;
            }
            Message::AuthenticationSasl(body) => {
                let pw = need_password(password, "SCRAM-SHA-256")?;
                let mut mechanisms = body.mechanisms();
                let mut offered = Vec::new();
                while let Some(m) = mechanisms.next().map_err(proto)? {
                    offered.push(m.to_string());
                }
                let (mechanism, channel) = binding.choose(&offered)?;
                let s = ScramSha256::new(pw, channel);
                frontend::sasl_initial_response(mechanism, s.message(), &mut wire.write_buf)
                    .map_err(auth_io)?;
                wire.flush().await?;
                scram = Some(s);
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram.as_mut().ok_or_else(|| {
                    SourceError::Protocol("SASL continue without SASL start".into())
                })?;
                s.update(body.data())
                    .map_err(|e| SourceError::Auth(format!("SCRAM exchange failed: {e}")))?;
                frontend::sasl_response(s.message(), &mut wire.write_buf).map_err(auth_io)?;
                wire.flush().await?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let s = scram.as_mut().ok_or_else(|| {
                    SourceError::Protocol("SASL final without SASL start".into())
                })?;
                // Verifies the server's signature: the server proved it knows the password too.
                s.finish(body.data()).map_err(|e| {
                    SourceError::Auth(format!("SCRAM server verification failed: {e}"))
                })?;
            }
            Message::ErrorResponse(body) => return Err(startup_error(&body)),
            Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationGss
            | Message::AuthenticationGssContinue(_)
            | Message::AuthenticationSspi => {
                return Err(SourceError::Auth(
                    "the server requested an unsupported authentication method (GSS/SSPI/Kerberos/SCM); use trust, password, md5 or scram-sha-256".into(),
                ))
            }
            _ => {
                return Err(SourceError::Protocol(
                    "unexpected message during authentication".into(),
                ))
            }
        }
    }
}

fn auth_io(e: std::io::Error) -> SourceError {
    SourceError::Protocol(format!("could not encode authentication message: {e}"))
}
