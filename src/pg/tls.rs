//! TLS for both kinds of Postgres connection (replication and plain SQL), on rustls with the
//! `ring` provider.
//!
//! Guarantees and limits:
//! - the connection is encrypted, but the server certificate is NOT verified — this matches
//!   libpq's `sslmode=prefer`/`require`, which protect against passive eavesdropping only.
//!   Verifying (`verify-ca`/`verify-full`) needs a configured root store and is out of scope;
//!   tokio-postgres's `SslMode` does not even express those modes. Handshake signatures are
//!   still checked, so the peer must hold the key of the certificate it presents;
//! - the crypto provider is always `ring`, passed explicitly, so nothing depends on a
//!   process-wide default provider having been installed;
//! - streams never offer channel binding (`ChannelBinding::none()`), so SCRAM runs without
//!   `-PLUS`, which is consistent with not verifying the certificate.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::NoTls;
use tracing::warn;

use super::PgError;

/// A shared client configuration: ring provider, TLS 1.2/1.3, ALPN `postgresql` (required by
/// Postgres 17's direct negotiation and ignored by older servers), no certificate verification.
pub fn client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                // The ring provider supports every safe default version; this cannot fail.
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly { provider }))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"postgresql".to_vec()];
            Arc::new(config)
        })
        .clone()
}

/// The SNI / server name for `host`. Any name will do for an unverified connection, so a host
/// that is neither an IP nor a valid DNS name (e.g. a socket path) falls back to "localhost"
/// rather than failing the connection.
pub(crate) fn server_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("localhost").expect("valid DNS name"))
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

/// Maps a handshake failure: rustls-level failures (bad certificate, no common cipher) are a
/// TLS problem a human must fix; plain I/O failures (reset, EOF) are connection loss.
pub(crate) fn handshake_error(e: io::Error) -> PgError {
    let is_tls = e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
    if is_tls {
        PgError::Tls(format!("handshake failed: {e}"))
    } else {
        PgError::Io(e)
    }
}

/// tokio-postgres TLS connector backed by [`client_config`].
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
}

impl MakeRustlsConnect {
    pub fn new(config: Arc<ClientConfig>) -> Self {
        MakeRustlsConnect { config }
    }
}

impl Default for MakeRustlsConnect {
    fn default() -> Self {
        Self::new(client_config())
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        Ok(RustlsConnect {
            config: self.config.clone(),
            server_name: server_name(domain),
        })
    }
}

pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            let tls = connector.connect(self.server_name, stream).await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

/// A TLS-wrapped stream for tokio-postgres.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

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
        ChannelBinding::none()
    }
}

/// Connects a regular SQL client honouring cfg's sslmode (disable / prefer / require) and
/// spawns its connection task, which logs a connection error when it ends with one.
pub async fn connect_sql(cfg: &tokio_postgres::Config) -> Result<tokio_postgres::Client, PgError> {
    match cfg.get_ssl_mode() {
        SslMode::Disable => {
            let (client, connection) = cfg.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    warn!(error = %e, "SQL connection ended with an error");
                }
            });
            Ok(client)
        }
        // tokio-postgres itself implements prefer (fall back to plain) and require.
        SslMode::Prefer | SslMode::Require => {
            let (client, connection) = cfg.connect(MakeRustlsConnect::default()).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    warn!(error = %e, "SQL connection ended with an error");
                }
            });
            Ok(client)
        }
        other => Err(PgError::Config(format!(
            "unsupported sslmode {other:?}: only disable, prefer and require are supported"
        ))),
    }
}

/// A connection pool for regular SQL clients (outbox workers, the API), with cfg's sslmode.
pub fn pool(cfg: &tokio_postgres::Config, max_size: usize) -> deadpool_postgres::Pool {
    // The outbox's statements are short and run thousands of times a second. Their row estimates
    // grow with the backlog until the planner's cost passes `jit_above_cost`, and then every
    // execution pays tens of milliseconds compiling code for a few hundred rows.
    let mut cfg = cfg.clone();
    let options = match cfg.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} -c jit=off"),
        _ => "-c jit=off".to_string(),
    };
    cfg.options(&options);
    let manager = deadpool_postgres::Manager::from_config(
        cfg,
        MakeRustlsConnect::default(),
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(max_size)
        .build()
        .expect("no runtime-specific options are set")
}
