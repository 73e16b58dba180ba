//! TLS for both kinds of Postgres connection (replication and plain SQL), on rustls with the
//! `ring` provider, and walhook's reading of a connection string's TLS settings.
//!
//! Guarantees:
//! - `sslmode` keeps libpq's meanings: `disable` never encrypts, `prefer` encrypts when the
//!   server agrees, `require` always encrypts without checking the certificate (handshake
//!   signatures are still checked, so the peer must hold the key of the certificate it shows),
//!   `verify-ca` also checks that the certificate chains to a trusted root, and `verify-full`
//!   also checks that it names the host walhook connected to;
//! - the trusted roots are `sslrootcert=/path` (PEM, one or more certificates) or, without it,
//!   the built-in webpki roots (`sslrootcert=system` says so explicitly and, as in libpq 16,
//!   implies `verify-full`). As in libpq, `require` with an explicit `sslrootcert` file behaves
//!   like `verify-ca`;
//! - a bad `sslrootcert` file or an unknown `sslmode` is an error when the URL is parsed (config
//!   load), not at the first connection;
//! - TLS streams expose `tls-server-end-point` channel binding, so SCRAM runs as
//!   `SCRAM-SHA-256-PLUS` when the server offers it: a man in the middle that terminates TLS
//!   cannot relay the authentication even when the certificate is not verified;
//! - the crypto provider is always `ring`, passed explicitly, so nothing depends on a
//!   process-wide default provider having been installed;
//! - no password goes out in the clear: unless `allow_insecure_password` is set, a connection
//!   without TLS (`disable`, or `prefer` with a server that refused TLS) fails when the server
//!   asks for a cleartext or MD5 password, before the password is sent ([`guard`] for SQL
//!   connections, `source::conn` for the replication connection); SCRAM and Unix sockets pass.

use crate::model::BadValue;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::NoTls;
use tracing::warn;

use super::PgError;

mod conninfo;
pub mod guard;
use conninfo::split_tls_params;
pub(crate) use guard::refusal;

/// libpq's `sslmode` values that walhook implements (`allow` is not one of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a connection without TLS is refused.
    pub fn requires_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Prefer)
    }

    fn parse(v: &str) -> Result<SslMode, BadValue> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "unsupported sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
                ).into())
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Postgres connection string as walhook reads it: tokio-postgres's settings plus the TLS
/// settings tokio-postgres does not know (`verify-ca`, `verify-full`, `sslrootcert`). Derefs to
/// the tokio-postgres config, whose own `sslmode` is `require` for the verifying modes.
#[derive(Clone)]
pub struct PgConfig {
    config: tokio_postgres::Config,
    mode: SslMode,
    tls: Arc<ClientConfig>,
    allow_insecure_password: bool,
}

impl PgConfig {
    /// `allow_insecure_password`: send a cleartext or MD5 password without TLS when the server
    /// asks for one (refused by default).
    pub fn allow_insecure_password(&mut self, allow: bool) -> &mut Self {
        self.allow_insecure_password = allow;
        self
    }

    pub fn insecure_password_allowed(&self) -> bool {
        self.allow_insecure_password
    }

    /// Whether a connection could send a password unencrypted, so the server's authentication
    /// request must be checked first.
    fn needs_auth_guard(&self) -> bool {
        !self.allow_insecure_password
            && self.config.get_password().is_some()
            && !self.mode.requires_tls()
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.mode
    }

    /// The rustls configuration for this connection's TLS handshake.
    pub fn tls_config(&self) -> Arc<ClientConfig> {
        self.tls.clone()
    }

    /// The tokio-postgres settings (host, user, …), without walhook's TLS policy.
    pub fn pg(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Like [`FromStr`], with the error naming nothing but the problem (never the password).
    pub fn parse(s: &str) -> Result<PgConfig, BadValue> {
        let (rest, tls) = split_tls_params(s)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| format!("{e}"))?;
        let explicit_mode = tls.sslmode.as_deref().map(SslMode::parse).transpose()?;
        let (mode, roots) = match tls.sslrootcert.as_deref() {
            None => (explicit_mode.unwrap_or(SslMode::Prefer), Roots::BuiltIn),
            Some("system") => match explicit_mode {
                None | Some(SslMode::VerifyFull) => (SslMode::VerifyFull, Roots::BuiltIn),
                Some(m) => {
                    return Err(format!(
                        "sslrootcert=system requires sslmode=verify-full (got sslmode={m})"
                    )
                    .into())
                }
            },
            Some(path) => {
                let certs =
                    read_pem_certs(Path::new(path)).map_err(|e| format!("sslrootcert: {e}"))?;
                let mode = match explicit_mode.unwrap_or(SslMode::Prefer) {
                    // libpq: "if a root CA file exists, require behaves like verify-ca".
                    SslMode::Require => SslMode::VerifyCa,
                    m => m,
                };
                (mode, Roots::File(PathBuf::from(path), certs))
            }
        };
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = match mode {
            SslMode::VerifyCa | SslMode::VerifyFull => {
                verifying_config(roots.store()?, mode == SslMode::VerifyFull)
            }
            _ => client_config(),
        };
        Ok(PgConfig {
            config,
            mode,
            tls,
            allow_insecure_password: false,
        })
    }
}

impl FromStr for PgConfig {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<PgConfig, BadValue> {
        PgConfig::parse(s)
    }
}

impl From<tokio_postgres::Config> for PgConfig {
    /// A tokio-postgres config knows only disable/prefer/require: no verification.
    fn from(config: tokio_postgres::Config) -> PgConfig {
        let mode = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        };
        PgConfig {
            config,
            mode,
            tls: client_config(),
            allow_insecure_password: false,
        }
    }
}

impl std::ops::Deref for PgConfig {
    type Target = tokio_postgres::Config;
    fn deref(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl std::ops::DerefMut for PgConfig {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres's Debug redacts the password.
        f.debug_struct("PgConfig")
            .field("config", &self.config)
            .field("sslmode", &self.mode)
            .field("allow_insecure_password", &self.allow_insecure_password)
            .finish_non_exhaustive()
    }
}

/// Anything walhook can connect with: a [`PgConfig`], or a plain tokio-postgres config (no
/// certificate verification, as tokio-postgres cannot express it).
pub trait AsPgConfig {
    fn as_pg_config(&self) -> Cow<'_, PgConfig>;
}

impl AsPgConfig for PgConfig {
    fn as_pg_config(&self) -> Cow<'_, PgConfig> {
        Cow::Borrowed(self)
    }
}

impl AsPgConfig for tokio_postgres::Config {
    fn as_pg_config(&self) -> Cow<'_, PgConfig> {
        Cow::Owned(PgConfig::from(self.clone()))
    }
}

enum Roots {
    BuiltIn,
    File(PathBuf, Vec<CertificateDer<'static>>),
}

impl Roots {
    fn store(self) -> Result<Arc<RootCertStore>, BadValue> {
        match self {
            Roots::BuiltIn => Ok(Arc::new(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })),
            Roots::File(path, certs) => {
                let mut store = RootCertStore::empty();
                for c in certs {
                    store.add(c).map_err(|e| {
                        format!(
                            "sslrootcert: {}: not a usable CA certificate: {e}",
                            path.display()
                        )
                    })?;
                }
                Ok(Arc::new(store))
            }
        }
    }
}

/// Reads a PEM file of one or more certificates, each checked to be usable as a trust anchor.
/// The error names the file and the problem.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, BadValue> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for (i, c) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let c = c.map_err(|e| {
            format!(
                "{}: certificate {} is not valid PEM: {e}",
                path.display(),
                i + 1
            )
        })?;
        RootCertStore::empty().add(c.clone()).map_err(|e| {
            format!(
                "{}: certificate {} is not a usable X.509 CA certificate: {e}",
                path.display(),
                i + 1
            )
        })?;
        certs.push(c);
    }
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
            path.display()
        )
        .into());
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn finish(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Arc<ClientConfig> {
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // Required by Postgres 17's direct negotiation and ignored by older servers.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Arc::new(config)
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        // The ring provider supports every safe default version; this cannot fail.
        .expect("ring supports the default TLS versions")
}

/// The shared encrypt-only configuration (`prefer`, `require`): ring provider, TLS 1.2/1.3, ALPN
/// `postgresql`, no certificate verification.
pub fn client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            finish(
                builder(),
                Arc::new(EncryptOnly {
                    provider: provider(),
                }),
            )
        })
        .clone()
}

/// A configuration that checks the chain against `roots` and, with `check_name`, the host name.
fn verifying_config(roots: Arc<RootCertStore>, check_name: bool) -> Arc<ClientConfig> {
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        // Only fails for an empty root store, which read_pem_certs and webpki-roots rule out.
        .expect("a non-empty root store");
    let verifier: Arc<dyn ServerCertVerifier> = if check_name {
        webpki
    } else {
        Arc::new(ChainOnly(webpki))
    };
    finish(builder(), verifier)
}

/// The SNI / server name for `host`. An encrypt-only connection accepts any name, so a host
/// that is neither an IP nor a valid DNS name (e.g. empty with only `hostaddr`) falls back to
/// "localhost"; `verify-full` refuses it instead, as libpq does.
fn server_name(host: &str, mode: SslMode) -> Result<ServerName<'static>, PgError> {
    match ServerName::try_from(host.to_string()) {
        Ok(name) => Ok(name),
        Err(_) if mode != SslMode::VerifyFull => {
            Ok(ServerName::try_from("localhost").expect("valid DNS name"))
        }
        Err(_) => Err(PgError::Tls(format!(
            "sslmode=verify-full needs a host name to check the certificate against, got {host:?}"
        ))),
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name in the certificate is not
/// checked. WebPkiServerVerifier checks the chain before the name, so a name error means the
/// chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any certificate chain but checks handshake signatures against it.
#[derive(Debug)]
struct EncryptOnly {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Opens TLS on an established stream (after the server accepted the SSLRequest), with the
/// host name and the verification `cfg` asks for. Failures name the host and the sslmode.
pub(crate) async fn handshake<S>(
    cfg: &PgConfig,
    host: &str,
    stream: S,
) -> Result<tokio_rustls::client::TlsStream<S>, PgError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = server_name(host, cfg.mode)?;
    tokio_rustls::TlsConnector::from(cfg.tls_config())
        .connect(name, stream)
        .await
        .map_err(|e| handshake_error(e, host, cfg.mode))
}

/// Maps a handshake failure: rustls-level failures (bad certificate, no common cipher) are a
/// TLS problem a human must fix; plain I/O failures (reset, EOF) are connection loss.
fn handshake_error(e: io::Error, host: &str, mode: SslMode) -> PgError {
    let is_tls = e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
    if is_tls {
        PgError::Tls(tls_failure(&e, host, mode))
    } else {
        PgError::Io(e)
    }
}

/// "TLS handshake with db.internal failed (sslmode=verify-full): invalid peer certificate: …",
/// with a hint for the two mistakes operators make.
fn tls_failure(e: &dyn std::error::Error, host: &str, mode: SslMode) -> String {
    let text = e.to_string();
    let hint = if text.contains("UnknownIssuer") {
        "; the server's certificate is not signed by a trusted CA: set sslrootcert=/path/to/ca.pem to the CA that signed it"
    } else if text.contains("not valid for name") || text.contains("NotValidForName") {
        "; the certificate does not name this host: connect with the host name in the certificate (hostaddr= can still give the address), or use sslmode=verify-ca"
    } else {
        ""
    };
    format!("TLS handshake with {host:?} failed (sslmode={mode}): {text}{hint}")
}

/// RFC 5929 `tls-server-end-point`: the server certificate's hash, with the hash function of
/// its signature algorithm (SHA-256 for MD5 and SHA-1). None for algorithms without one
/// (Ed25519, RSA-PSS), which Postgres cannot bind to either.
pub(crate) fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let (_, certificate, _) = der(cert)?;
    let (_, _tbs, rest) = der(certificate)?;
    let (_, algorithm, _) = der(rest)?;
    let (tag, oid, _) = der(algorithm)?;
    if tag != 0x06 {
        return None;
    }
    #[derive(PartialEq)]
    enum H {
        S256,
        S384,
        S512,
    }
    let h = match oid {
        [p @ .., last] if p == RSA => match last {
            0x04 | 0x05 | 0x0b => H::S256,
            0x0c => H::S384,
            0x0d => H::S512,
            _ => return None,
        },
        [p @ .., 0x01] if p == ECDSA => H::S256,
        [p @ .., 0x03, last] if p == ECDSA => match last {
            0x02 => H::S256,
            0x03 => H::S384,
            0x04 => H::S512,
            _ => return None,
        },
        _ => return None,
    };
    Some(match h {
        H::S256 => sha2::Sha256::digest(cert).to_vec(),
        H::S384 => sha2::Sha384::digest(cert).to_vec(),
        H::S512 => sha2::Sha512::digest(cert).to_vec(),
    })
}

/// One DER item: (tag, contents, what follows).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let len = b
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |a, &x| (a << 8) | x as usize);
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, b.get(header..end)?, b.get(end..)?))
}

/// The channel binding data of an established TLS stream, if any.
pub(crate) fn peer_end_point<S>(tls: &tokio_rustls::client::TlsStream<S>) -> Option<Vec<u8>> {
    let cert = tls.get_ref().1.peer_certificates()?.first()?;
    tls_server_end_point(cert)
}

/// tokio-postgres TLS connector for one [`PgConfig`].
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
    mode: SslMode,
}

impl MakeRustlsConnect {
    pub fn new(cfg: &PgConfig) -> Self {
        MakeRustlsConnect {
            config: cfg.tls_config(),
            mode: cfg.mode,
        }
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = PgError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, PgError> {
        Ok(RustlsConnect {
            config: self.config.clone(),
            server_name: server_name(domain, self.mode)?,
            host: domain.to_string(),
            mode: self.mode,
        })
    }
}

pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    host: String,
    mode: SslMode,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = PgError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, PgError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            let tls = connector
                .connect(self.server_name, stream)
                .await
                .map_err(|e| handshake_error(e, &self.host, self.mode))?;
            let end_point = peer_end_point(&tls);
            Ok(RustlsStream(Box::new(tls), end_point))
        })
    }
}

/// A TLS-wrapped stream for tokio-postgres, with its channel binding data.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>, Option<Vec<u8>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match &self.1 {
            Some(hash) => ChannelBinding::tls_server_end_point(hash.clone()),
            None => ChannelBinding::none(),
        }
    }
}

/// A tokio-postgres connect error, with a TLS failure turned into [`PgError::Tls`] (a
/// configuration problem, not worth retrying).
fn connect_error(e: tokio_postgres::Error) -> PgError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(PgError::Tls(m)) = s.downcast_ref::<PgError>() {
            return PgError::Tls(m.clone());
        }
        if let Some(r) = refusal(s) {
            return PgError::Config(r.to_string());
        }
        source = s.source();
    }
    PgError::Sql(e)
}

/// Connects a regular SQL client honouring cfg's sslmode and spawns its connection task, which
/// logs a connection error when it ends with one.
pub async fn connect_sql<C: AsPgConfig + ?Sized>(
    cfg: &C,
) -> Result<tokio_postgres::Client, PgError> {
    let cfg = cfg.as_pg_config();
    if cfg.needs_auth_guard() {
        let (client, driver) = guard::connect(&cfg.config, &MakeRustlsConnect::new(&cfg))
            .await
            .map_err(connect_error)?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                warn!(error = %e, "SQL connection ended with an error");
            }
        });
        return Ok(client);
    }
    if cfg.mode == SslMode::Disable {
        let (client, connection) = cfg.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(error = %e, "SQL connection ended with an error");
            }
        });
        return Ok(client);
    }
    // tokio-postgres itself implements prefer (fall back to plain) and require.
    let (client, connection) = cfg
        .config
        .connect(MakeRustlsConnect::new(&cfg))
        .await
        .map_err(connect_error)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "SQL connection ended with an error");
        }
    });
    Ok(client)
}

/// A connection pool for regular SQL clients (outbox workers, the API), with cfg's sslmode.
pub fn pool(cfg: &PgConfig, max_size: usize) -> deadpool_postgres::Pool {
    let tls = MakeRustlsConnect::new(cfg);
    // The outbox's statements are short and run thousands of times a second. Their row estimates
    // grow with the backlog until the planner's cost passes `jit_above_cost`, and then every
    // execution pays tens of milliseconds compiling code for a few hundred rows.
    let mut pg = cfg.config.clone();
    let options = match pg.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} -c jit=off"),
        _ => "-c jit=off".to_string(),
    };
    pg.options(&options);
    let config = deadpool_postgres::ManagerConfig {
        recycling_method: deadpool_postgres::RecyclingMethod::Fast,
    };
    let manager = if cfg.needs_auth_guard() {
        deadpool_postgres::Manager::from_connect(pg, guard::GuardedConnect(tls), config)
    } else {
        deadpool_postgres::Manager::from_config(pg, tls, config)
    };
    deadpool_postgres::Pool::builder(manager)
        .max_size(max_size)
        .build()
        .expect("no runtime-specific options are set")
}
