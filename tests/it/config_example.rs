//! The shipped configs parse as `walhook check` / `walhook run` parse them (with their
//! environment variables set), and config.example.toml shows the real defaults.

use std::path::Path;

use walhook::config::{ApiConfig, Config, DeliveryConfig, Format, SignatureScheme};

fn load(rel: &str, env: &[(&str, &str)]) -> Config {
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn config_example_parses_and_shows_the_defaults() {
    let c = load(
        "config.example.toml",
        &[
            ("WALHOOK_DB_PASSWORD", "pw"),
            ("ORDERS_SECRET", "s3cret"),
            ("WALHOOK_API_TOKEN", "token"),
            ("RX_TOKEN", "rx-token"),
            ("CUSTOMERS_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            (
                "CUSTOMERS_PREVIOUS_SECRET",
                "whsec_cHJldmlvdXMtc2VjcmV0LWJ5dGVz",
            ),
        ],
    );
    // Every value written in [delivery] is the default (Debug shows every field).
    assert_eq!(
        format!("{:?}", c.delivery),
        format!("{:?}", DeliveryConfig::default())
    );
    assert_eq!(c.api.listen, ApiConfig::default().listen);
    assert_eq!(c.api.token.as_ref().map(|t| t.expose()), Some("token"));
    let o = &c.outbox;
    assert_eq!(o.schema.as_str(), "walhook");
    assert!(o.url.is_none());
    assert_eq!(o.retention.0.as_secs(), 24 * 3600);
    assert_eq!(o.dead_retention.0.as_secs(), 7 * 24 * 3600);
    assert_eq!(c.source.slot.as_str(), "walhook");
    assert_eq!(c.source.publication.as_str(), "walhook");
    assert!(c.source.manage_replica_identity);
    assert_eq!(c.project.environment.as_str(), "master");

    let subs: Vec<_> = c.subscriptions().collect();
    assert_eq!(subs.len(), 4);
    assert!(subs[0].active);
    assert_eq!(subs[0].format, Format::Json);
    assert_eq!(subs[0].signature, SignatureScheme::Archie);
    assert!(subs[0].filter.is_some() && subs[0].select.is_some());
    assert_eq!(subs[1].signature, SignatureScheme::Standard);
    assert!(subs[1].previous_secret.is_some() && subs[1].previous_secret_expires_at.is_some());
    assert_eq!(subs[2].format, Format::Slack);
    assert_eq!(subs[3].format, Format::CloudEvents);
    assert_eq!(subs[3].headers.len(), 1);
    assert_eq!(subs[3].headers[0].0, "Authorization");
    assert_eq!(subs[3].headers[0].1.expose(), "Bearer rx-token");
    assert_eq!(
        subs[3].rate_limit.map(|r| r.to_string()).as_deref(),
        Some("50/s")
    );
}

#[test]
fn docker_config_parses() {
    let c = load(
        "examples/docker/config.toml",
        &[
            ("WALHOOK_DB_PASSWORD", "walhook"),
            ("WEBHOOK_SECRET", "whsec_docker_demo"),
            ("WALHOOK_API_TOKEN", "token"),
        ],
    );
    assert!(c.delivery.allow_http);
    assert_eq!(c.api.listen.as_str(), "0.0.0.0:8080");
    assert_eq!(c.subscriptions().count(), 1);
}
