//! `[telemetry]`: OpenTelemetry traces, exported over OTLP/HTTP (JSON) when an endpoint is set.
//!
//! Guarantees: off by default; an endpoint that is not an `http(s)://host[:port][/path]` URL is
//! refused at load with the field named; the export interval stays within 100 ms and 60 s.

use serde::Deserialize;

use super::duration::Duration;
use super::env::EnvString;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL of a collector, e.g. `http://127.0.0.1:4318`; spans are posted to
    /// `<url>/v1/traces`. Unset: no traces.
    #[serde(default)]
    pub otlp_endpoint: Option<EnvString>,
    /// The `service.name` resource attribute.
    #[serde(default = "default_service_name")]
    pub service_name: EnvString,
    /// How long finished spans wait before they are sent.
    #[serde(default = "default_export_interval")]
    pub export_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: default_service_name(),
            export_interval: default_export_interval(),
        }
    }
}

fn default_service_name() -> EnvString {
    EnvString("walhook".into())
}

fn default_export_interval() -> Duration {
    Duration(std::time::Duration::from_secs(5))
}

impl TelemetryConfig {
    /// Checks the section; the error names the field and what is expected.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.otlp_endpoint {
            let parsed = url::Url::parse(url.as_str()).map_err(|e| {
                format!(
                    "telemetry.otlp_endpoint: {e}; expected a URL like \"http://127.0.0.1:4318\""
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(
                    "telemetry.otlp_endpoint: expected an http:// or https:// URL with a host, like \"http://127.0.0.1:4318\"".into(),
                );
            }
        }
        if self.service_name.as_str().trim().is_empty() {
            return Err("telemetry.service_name: must not be empty".into());
        }
        let i = self.export_interval.0;
        if i < std::time::Duration::from_millis(100) || i > std::time::Duration::from_secs(60) {
            return Err("telemetry.export_interval: must be between 100ms and 60s".into());
        }
        Ok(())
    }
}
