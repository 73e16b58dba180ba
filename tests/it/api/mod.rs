//! The management API over HTTP, as an operator (or the seed's curl example) drives it: a real
//! Postgres database per test, the server on 127.0.0.1 port 0, reqwest as the client.

mod crud;
mod deliveries;
mod e2e;

use std::sync::Arc;
use std::time::Duration;

use crate::support::TestDb;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use walhook::api::ApiState;
use walhook::app::Handles;
use walhook::config::{DeliveryConfig, Secret};
use walhook::outbox::Schema;

pub const TOKEN: &str = "your-management-token";
pub const PROJECT: &str = "your-project-id";
pub const ENV: &str = "master";
/// Every secret a test sends; no response may ever contain one.
pub const SECRETS: &[&str] = &[
    "whsec_your_signing_secret",
    "whsec_rotated_secret",
    "whsec_old_secret",
    "config-secret-value",
    TOKEN,
];

/// The body of the seed's curl example, byte for byte except the URL: tests never store a URL
/// off loopback (the seed's is `https://your-app.example.com/webhooks/orders`). Nothing is sent
/// to it: no daemon runs in the tests that store it, or delivery would fail on the closed port 9.
pub const SEED_BODY: &str = r#"{
    "projectId": "your-project-id",
    "environment": "master",
    "table": "orders",
    "events": ["INSERT", "UPDATE", "DELETE"],
    "url": "https://127.0.0.1:9/webhooks/orders",
    "secret": "whsec_your_signing_secret",
    "active": true
  }"#;

pub struct Api {
    pub db: TestDb,
    pub project: String,
    pub base: String,
    pub http: reqwest::Client,
    pub state: Arc<ApiState>,
    pub cancel: CancellationToken,
}

pub struct Resp {
    pub status: StatusCode,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub fn pool(url: &str) -> deadpool_postgres::Pool {
    let mgr = deadpool_postgres::Manager::new(url.parse().unwrap(), tokio_postgres::NoTls);
    deadpool_postgres::Pool::builder(mgr)
        .max_size(4)
        .build()
        .unwrap()
}

pub async fn start(manage_replica_identity: bool) -> Api {
    let db = TestDb::new();
    db.sql(
        "CREATE TABLE orders(id uuid PRIMARY KEY DEFAULT gen_random_uuid(), total numeric(12,2),
                             status text, customer_id text)",
    );
    let mut client = db.client().await;
    walhook::outbox::migrate(&mut client, &Schema::new("walhook"))
        .await
        .unwrap();
    let handles = Handles::default();
    start_on(
        db,
        PROJECT,
        manage_replica_identity,
        loopback_only(),
        &handles,
    )
    .await
}

/// The default delivery settings plus 127.0.0.0/8, so that the loopback URLs the tests store
/// pass the egress policy while every other private address is still refused.
pub fn loopback_only() -> DeliveryConfig {
    DeliveryConfig {
        allow_cidrs: vec![walhook::config::EnvString("127.0.0.0/8".into())],
        ..DeliveryConfig::default()
    }
}

/// The API on `db`, sharing `handles` (metrics, streaming, changed) with a daemon, if any.
pub async fn start_on(
    db: TestDb,
    project: &str,
    manage_replica_identity: bool,
    delivery: DeliveryConfig,
    handles: &Handles,
) -> Api {
    let source = db.url();
    start_with_source(
        db,
        &source,
        project,
        manage_replica_identity,
        delivery,
        handles,
    )
    .await
}

/// [`start_on`] whose connection to the source database uses `source_url` (another role, say).
pub async fn start_with_source(
    db: TestDb,
    source_url: &str,
    project: &str,
    manage_replica_identity: bool,
    delivery: DeliveryConfig,
    handles: &Handles,
) -> Api {
    let state = Arc::new(ApiState {
        project_id: project.into(),
        environment: ENV.into(),
        token: Secret::new(TOKEN),
        schema: Schema::new("walhook"),
        outbox: pool(&db.url()),
        source: source_url.parse().unwrap(),
        // Slots are cluster-wide: one name per test database (the daemon's, too).
        slot: db.name.clone(),
        publication: "walhook".into(),
        manage_replica_identity,
        delivery,
        metrics: handles.metrics.clone(),
        handoff: walhook::outbox::handoff::Handoff::new(),
        routing: handles.routing.clone(),
        streaming: handles.streaming.clone(),
        changed: handles.changed.clone(),
        backfills: handles.backfills.clone(),
        slot_control: handles
            .slot
            .clone()
            .unwrap_or_else(|| walhook::ingest::slot::SlotControl::new(&db.name)),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    tokio::spawn(walhook::api::serve(state.clone(), listener, cancel.clone()));
    // reqwest is built without a default TLS provider; plain HTTP still needs one chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    Api {
        db,
        project: project.into(),
        base,
        http,
        state,
        cancel,
    }
}

impl Api {
    /// A request with the given headers; checks that no secret comes back.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        let stores_url = matches!(method, Method::POST | Method::PATCH)
            .then(|| body.and_then(|b| serde_json::from_str::<Value>(b).ok()))
            .flatten()
            .and_then(|v| v.get("url").and_then(|u| u.as_str()).map(str::to_string));
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        // A URL the API accepted is stored (and would be delivered to): loopback only.
        if let Some(url) = stores_url.filter(|_| status.is_success()) {
            crate::support::assert_loopback(&url);
        }
        for s in SECRETS {
            assert!(
                !text.contains(s),
                "response to {path} contains a secret: {text}"
            );
        }
        Resp { status, text }
    }

    /// A request with all three management headers and a JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<&str>) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        self.send(
            method,
            path,
            &[
                ("Authorization", &auth),
                ("X-Project-ID", &self.project),
                ("environment", ENV),
                ("Content-Type", "application/json"),
            ],
            body,
        )
        .await
    }

    /// The seed's curl example, headers and body as printed (no `environment` header).
    pub async fn seed_create(&self, path: &str) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        self.send(
            Method::POST,
            path,
            &[
                ("Authorization", &auth),
                ("X-Project-ID", PROJECT),
                ("Content-Type", "application/json"),
            ],
            Some(SEED_BODY),
        )
        .await
    }

    pub async fn create(&self, body: Value) -> Resp {
        self.call(Method::POST, "/api/rest/_webhooks", Some(&body.to_string()))
            .await
    }

    /// Consumes a notification left by earlier calls (`Notify` keeps one permit), so that the
    /// next [`Api::changed`] reports only what happens from now on.
    pub async fn forget_changes(&self) {
        let _ = tokio::time::timeout(Duration::ZERO, self.state.changed.notified()).await;
        let pending = tokio::time::timeout(Duration::ZERO, self.state.changed.notified()).await;
        assert!(pending.is_err(), "no permit is left");
    }

    pub async fn changed(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.state.changed.notified())
            .await
            .is_ok()
    }

    /// Inserts a delivery row directly, numbered like walhook numbers them (the subscription's
    /// next sequence number); returns its numeric id.
    pub fn delivery(&self, sub: &str, event_id: &str, status: &str, extra: &str) -> i64 {
        let finished = if matches!(status, "delivered" | "dead") {
            "now()"
        } else {
            "NULL"
        };
        self.db
            .sql(&format!(
                "INSERT INTO walhook.deliveries (subscription_id, event_id, event, ordering_key,
                     payload, commit_lsn, status, attempts, last_http_status, last_error, finished_at,
                     sequence)
                 VALUES ('{sub}', '{event_id}', 'INSERT', '[1]', '{{}}', 1, '{status}', 5, 500,
                         'HTTP 500', {finished},
                         (SELECT coalesce(max(sequence), 0) + 1 FROM walhook.delivery_states
                          WHERE subscription_id = '{sub}'))
                 RETURNING id; {extra}"
            ))
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

pub fn body(overrides: Value) -> Value {
    let mut b: Value = serde_json::from_str(SEED_BODY).unwrap();
    for (k, v) in overrides.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

pub fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}
