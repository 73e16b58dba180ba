//! `[delivery]` and `[api]` sections, and the per-subscription delivery options (`format`,
//! `signature`, secret rotation).
//!
//! Defaults are the safe ones: HTTPS only, private networks refused, redirects never followed,
//! the Archie retry schedule (5 attempts over about 5½ minutes) and circuit breaker (5 failures,
//! 2 minutes).

use crate::model::BadValue;
use serde::Deserialize;

use super::{Duration, EnvString, Secret};
use crate::model::egress::EgressPolicy;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Run delivery workers in this process (`walhook run`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Delay before each attempt; its length is the number of attempts.
    #[serde(default = "default_schedule")]
    pub retry_schedule: Vec<Duration>,
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    #[serde(default = "default_breaker_cooldown")]
    pub breaker_cooldown: Duration,
    /// Requests in flight per subscription.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Requests in flight to one receiver (scheme, host and port), all its subscriptions
    /// together: each holds a connection, so a change fanned out to thousands of subscriptions
    /// of one receiver goes through this many connections, not thousands.
    #[serde(default = "default_max_requests_per_host")]
    pub max_requests_per_host: usize,
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub allow_private_networks: bool,
    /// Networks allowed even though private, e.g. `["10.1.2.0/24"]`.
    #[serde(default)]
    pub allow_cidrs: Vec<EnvString>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// How long a pump owns its subscription's deliveries without renewing (it renews every
    /// third of it); another instance takes over a crashed one's subscriptions after this.
    #[serde(default = "default_lease")]
    pub lease: Duration,
    /// Outbox connections delivery holds at most, however many subscriptions there are: its
    /// ownership session and the pool for claims, records and reading subscriptions.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How often to look for due work that no in-process wake-up announced (other instances,
    /// retries coming due).
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Duration,
    /// PEM file of CA certificates trusted for receivers in addition to the built-in roots.
    #[serde(default)]
    pub ca_file: Option<EnvString>,
    /// The largest payload walhook stores and sends. A change whose payload would be larger is
    /// delivered without its large columns, saying so (`oversize`), never dropped and never a
    /// reason to stop; a single value larger than this is not even decoded into memory.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            enabled: true,
            retry_schedule: default_schedule(),
            breaker_failures: default_breaker_failures(),
            breaker_cooldown: default_breaker_cooldown(),
            max_in_flight: default_max_in_flight(),
            max_requests_per_host: default_max_requests_per_host(),
            allow_http: false,
            allow_private_networks: false,
            allow_cidrs: Vec::new(),
            connect_timeout: default_connect_timeout(),
            timeout: default_timeout(),
            lease: default_lease(),
            poll_interval: default_poll_interval(),
            ca_file: None,
            pool_size: default_pool_size(),
            max_payload_bytes: default_max_payload_bytes(),
        }
    }
}

impl DeliveryConfig {
    pub(super) fn validate(&self) -> Result<(), BadValue> {
        if self.retry_schedule.is_empty() {
            return Err(
                "delivery.retry_schedule: list at least one delay (\"0s\" = one attempt)".into(),
            );
        }
        if self.breaker_failures == 0 {
            return Err("delivery.breaker_failures: must be at least 1".into());
        }
        if self.pool_size < 2 {
            return Err("delivery.pool_size: must be at least 2".into());
        }
        if self.max_in_flight == 0 {
            return Err("delivery.max_in_flight: must be at least 1".into());
        }
        if self.max_requests_per_host == 0 {
            return Err("delivery.max_requests_per_host: must be at least 1".into());
        }
        if !(MIN_PAYLOAD_BYTES..=MAX_PAYLOAD_BYTES).contains(&self.max_payload_bytes) {
            return Err(format!(
                "delivery.max_payload_bytes: {} is out of range; use {MIN_PAYLOAD_BYTES} (1 KiB) to {MAX_PAYLOAD_BYTES} (256 MiB); the default is {}",
                self.max_payload_bytes,
                default_max_payload_bytes()
            )
            .into());
        }
        for (key, d) in [
            ("delivery.connect_timeout", self.connect_timeout),
            ("delivery.timeout", self.timeout),
            ("delivery.poll_interval", self.poll_interval),
        ] {
            if d.0.is_zero() {
                return Err(format!("{key}: must be more than 0s").into());
            }
        }
        if self.lease.0 < self.timeout.0 * 2 {
            return Err(format!(
                "delivery.lease: {}s must be at least twice delivery.timeout ({}s)",
                self.lease.0.as_secs_f64(),
                self.timeout.0.as_secs_f64()
            )
            .into());
        }
        self.ca_certs()?;
        for c in &self.allow_cidrs {
            c.as_str().parse::<ipnet::IpNet>().map_err(|_| {
                format!(
                    "delivery.allow_cidrs: {:?} is not a network like \"10.0.0.0/8\"",
                    c.as_str()
                )
            })?;
        }
        Ok(())
    }

    /// The certificates of `ca_file` (none without it). The error names the key, the file and
    /// the problem (unreadable, no certificate, not a usable CA certificate).
    pub fn ca_certs(&self) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, BadValue> {
        match &self.ca_file {
            None => Ok(Vec::new()),
            Some(path) => crate::pg::tls::read_pem_certs(std::path::Path::new(path.as_str()))
                .map_err(|e| BadValue(format!("delivery.ca_file: {e}"))),
        }
    }

    pub fn allow_cidrs(&self) -> Vec<ipnet::IpNet> {
        self.allow_cidrs
            .iter()
            .filter_map(|c| c.as_str().parse().ok())
            .collect()
    }
}

fn default_true() -> bool {
    true
}
fn secs(s: u64) -> Duration {
    Duration(std::time::Duration::from_secs(s))
}
fn default_schedule() -> Vec<Duration> {
    [0, 1, 5, 30, 300].into_iter().map(secs).collect()
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> Duration {
    secs(120)
}
fn default_max_in_flight() -> usize {
    16
}
fn default_max_requests_per_host() -> usize {
    512
}
fn default_connect_timeout() -> Duration {
    secs(5)
}
fn default_timeout() -> Duration {
    secs(10)
}
fn default_lease() -> Duration {
    secs(60)
}
/// Receivers commonly refuse bodies above a few MiB; 8 MiB leaves room and bounds memory.
fn default_max_payload_bytes() -> usize {
    8 << 20
}
const MIN_PAYLOAD_BYTES: usize = 1 << 10;
const MAX_PAYLOAD_BYTES: usize = 256 << 20;
fn default_pool_size() -> usize {
    8
}
fn default_poll_interval() -> Duration {
    secs(1)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_listen")]
    pub listen: EnvString,
    /// The management token; the API is off without one.
    #[serde(default)]
    pub token: Option<Secret>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            token: None,
        }
    }
}

fn default_listen() -> EnvString {
    EnvString("127.0.0.1:8080".into())
}

/// The egress rules of `[delivery]`, for validating subscription URLs and for the resolver.
impl EgressPolicy {
    pub fn from_config(c: &DeliveryConfig) -> EgressPolicy {
        EgressPolicy {
            allow_http: c.allow_http,
            allow_private_networks: c.allow_private_networks,
            allow_cidrs: c.allow_cidrs(),
        }
    }
}
