//! The management API over HTTP, as an operator (or the seed's curl example) drives it: a real
//! Postgres database per test, the server on 127.0.0.1 port 0, reqwest as the client.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use walhook::api::ApiState;
use walhook::config::{DeliveryConfig, Secret};
use walhook::metrics::{Metrics, Outcome};
use walhook::outbox::Schema;

const TOKEN: &str = "your-management-token";
const PROJECT: &str = "your-project-id";
const ENV: &str = "master";
/// Every secret a test sends; no response may ever contain one.
const SECRETS: &[&str] = &[
    "whsec_your_signing_secret",
    "whsec_rotated_secret",
    "whsec_old_secret",
    "config-secret-value",
    TOKEN,
];

/// The body of the seed's curl example, byte for byte.
const SEED_BODY: &str = r#"{
    "projectId": "your-project-id",
    "environment": "master",
    "table": "orders",
    "events": ["INSERT", "UPDATE", "DELETE"],
    "url": "https://your-app.example.com/webhooks/orders",
    "secret": "whsec_your_signing_secret",
    "active": true
  }"#;

struct Api {
    db: TestDb,
    base: String,
    http: reqwest::Client,
    state: Arc<ApiState>,
    cancel: CancellationToken,
}

struct Resp {
    status: StatusCode,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn pool(url: &str) -> deadpool_postgres::Pool {
    let mgr = deadpool_postgres::Manager::new(url.parse().unwrap(), tokio_postgres::NoTls);
    deadpool_postgres::Pool::builder(mgr)
        .max_size(4)
        .build()
        .unwrap()
}

async fn start(manage_replica_identity: bool) -> Api {
    let db = TestDb::new();
    db.sql(
        "CREATE TABLE orders(id uuid PRIMARY KEY DEFAULT gen_random_uuid(), total numeric(12,2),
                             status text, customer_id text)",
    );
    let mut client = db.client().await;
    walhook::outbox::migrate(&mut client, &Schema::new("walhook"))
        .await
        .unwrap();
    let state = Arc::new(ApiState {
        project_id: PROJECT.into(),
        environment: ENV.into(),
        token: Secret::new(TOKEN),
        schema: Schema::new("walhook"),
        outbox: pool(&db.url()),
        source: db.url().parse().unwrap(),
        // Slots are cluster-wide: one name per test database.
        slot: format!("s_{}", db.name),
        manage_replica_identity,
        delivery: DeliveryConfig::default(),
        metrics: Arc::new(Metrics::new()),
        streaming: Arc::new(AtomicBool::new(false)),
        changed: Arc::new(Notify::new()),
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
        base,
        http,
        state,
        cancel,
    }
}

impl Api {
    /// A request with the given headers; checks that no secret comes back.
    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
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
        for s in SECRETS {
            assert!(!text.contains(s), "response to {path} contains a secret: {text}");
        }
        Resp { status, text }
    }

    /// A request with all three management headers and a JSON body.
    async fn call(&self, method: Method, path: &str, body: Option<&str>) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        self.send(
            method,
            path,
            &[
                ("Authorization", &auth),
                ("X-Project-ID", PROJECT),
                ("environment", ENV),
                ("Content-Type", "application/json"),
            ],
            body,
        )
        .await
    }

    /// The seed's curl example, headers and body as printed (no `environment` header).
    async fn seed_create(&self, path: &str) -> Resp {
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

    async fn create(&self, body: Value) -> Resp {
        self.call(Method::POST, "/api/rest/_webhooks", Some(&body.to_string()))
            .await
    }

    async fn changed(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.state.changed.notified())
            .await
            .is_ok()
    }

    /// Inserts a delivery row directly; returns its numeric id.
    fn delivery(&self, sub: &str, event_id: &str, status: &str, extra: &str) -> i64 {
        let finished = if matches!(status, "delivered" | "dead") {
            "now()"
        } else {
            "NULL"
        };
        self.db
            .sql(&format!(
                "INSERT INTO walhook.deliveries (subscription_id, event_id, event, ordering_key,
                     payload, commit_lsn, status, attempts, last_http_status, last_error, finished_at)
                 VALUES ('{sub}', '{event_id}', 'INSERT', '[1]', '{{}}', 1, '{status}', 5, 500,
                         'HTTP 500', {finished}) RETURNING id; {extra}"
            ))
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

fn body(overrides: Value) -> Value {
    let mut b: Value = serde_json::from_str(SEED_BODY).unwrap();
    for (k, v) in overrides.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

#[tokio::test]
async fn seed_curl_example_creates_a_webhook_in_the_archie_shape() {
    let api = start(true).await;
    // The curl example's path includes Archie's gateway prefix; both forms are served.
    let r = api.seed_create("/gw/api/rest/_webhooks").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let w = r.json();
    let id = w["id"].as_str().unwrap().to_string();
    assert!(
        id.starts_with("wh_") && uuid::Uuid::parse_str(&id[3..]).is_ok(),
        "{id}"
    );
    assert_eq!(w["table"], "orders");
    assert_eq!(w["events"], json!(["INSERT", "UPDATE", "DELETE"]));
    assert_eq!(w["url"], "https://your-app.example.com/webhooks/orders");
    assert_eq!(w["active"], true);
    assert_eq!(w["source"], "api");
    assert_eq!(w["format"], "json");
    assert_eq!(w["signature"], "archie");
    assert!(w["filter"].is_null() && w["select"].is_null());
    for t in ["createdAt", "updatedAt"] {
        let s = w[t].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(s).is_ok() && s.ends_with('Z'), "{s}");
    }
    assert!(api.changed().await, "create must notify the daemon");
    let stored = api.db.sql(&format!(
        "SELECT source || ' ' || secret FROM walhook.subscriptions WHERE id = '{id}'"
    ));
    assert_eq!(stored, "api whsec_your_signing_secret");

    let r = api.seed_create("/api/rest/_webhooks").await;
    assert_eq!(r.status, StatusCode::CREATED);

    // GET /{id}: the "Inspecting deliveries" shape.
    api.delivery(&id, "evt_abc123", "delivered", "");
    let dead = api.delivery(&id, "evt_abc124", "dead", "");
    let r = api.call(Method::GET, &format!("/api/rest/_webhooks/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(keys(&v), ["deliveries", "webhook"]);
    assert_eq!(v["webhook"]["id"], id.as_str());
    let d = v["deliveries"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(keys(&d[0]), ["attempts", "createdAt", "eventId", "httpStatus", "id", "status"]);
    // Newest first.
    assert_eq!(d[0]["id"], format!("del_{dead}"));
    assert_eq!(d[0]["eventId"], "evt_abc124");
    assert_eq!(d[0]["status"], "dead");
    assert_eq!(d[0]["httpStatus"], 500);
    assert_eq!(d[0]["attempts"], 5);
    assert_eq!(d[1]["status"], "delivered");

    let r = api.call(Method::GET, "/api/rest/_webhooks", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let list = r.json();
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 2);
    for w in list["webhooks"].as_array().unwrap() {
        assert!(w.get("secret").is_none() && w.get("previous_secret").is_none());
    }
}

#[tokio::test]
async fn auth_and_identity_errors() {
    let api = start(true).await;
    let path = "/api/rest/_webhooks";
    let bearer = format!("Bearer {TOKEN}");
    let cases: Vec<(Vec<(&str, &str)>, StatusCode, Option<&str>)> = vec![
        (vec![("X-Project-ID", PROJECT), ("environment", ENV)], StatusCode::UNAUTHORIZED, Some("Authorization")),
        (
            vec![("Authorization", "Bearer wrong"), ("X-Project-ID", PROJECT), ("environment", ENV)],
            StatusCode::UNAUTHORIZED,
            Some("Authorization"),
        ),
        (
            vec![("Authorization", TOKEN), ("X-Project-ID", PROJECT), ("environment", ENV)],
            StatusCode::UNAUTHORIZED,
            Some("Authorization"),
        ),
        (vec![("Authorization", &bearer), ("environment", ENV)], StatusCode::BAD_REQUEST, Some("X-Project-ID")),
        (
            vec![("Authorization", &bearer), ("X-Project-ID", "other"), ("environment", ENV)],
            StatusCode::FORBIDDEN,
            Some("X-Project-ID"),
        ),
        (vec![("Authorization", &bearer), ("X-Project-ID", PROJECT)], StatusCode::BAD_REQUEST, Some("environment")),
        (
            vec![("Authorization", &bearer), ("X-Project-ID", PROJECT), ("environment", "staging")],
            StatusCode::FORBIDDEN,
            Some("environment"),
        ),
        (vec![("Authorization", &bearer), ("X-Project-ID", PROJECT), ("environment", ENV)], StatusCode::OK, None),
    ];
    for (headers, status, field) in cases {
        let r = api.send(Method::GET, path, &headers, None).await;
        assert_eq!(r.status, status, "{headers:?}: {}", r.text);
        if let Some(f) = field {
            assert_eq!(r.json()["field"], f, "{}", r.text);
            assert!(r.json()["error"].is_string());
        }
    }
    let r = api.send(Method::GET, path, &[], None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Body projectId / environment must match too.
    let r = api.create(body(json!({"projectId": "other"}))).await;
    assert_eq!((r.status, r.json()["field"].clone()), (StatusCode::FORBIDDEN, json!("projectId")));
    let r = api.create(body(json!({"environment": "staging"}))).await;
    assert_eq!((r.status, r.json()["field"].clone()), (StatusCode::FORBIDDEN, json!("environment")));
    // Without the header, the body must carry the environment.
    let mut b = body(json!({}));
    b.as_object_mut().unwrap().remove("environment");
    let r = api
        .send(
            Method::POST,
            path,
            &[("Authorization", &bearer), ("X-Project-ID", PROJECT)],
            Some(&b.to_string()),
        )
        .await;
    assert_eq!((r.status, r.json()["field"].clone()), (StatusCode::BAD_REQUEST, json!("environment")));
    // Replay and test sends have no body environment: the header is required.
    let r = api
        .send(
            Method::POST,
            "/api/rest/_webhooks/wh_x/replay",
            &[("Authorization", &bearer), ("X-Project-ID", PROJECT)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);

    // Operations need no token.
    for p in ["/healthz", "/metrics"] {
        assert_eq!(api.send(Method::GET, p, &[], None).await.status, StatusCode::OK);
    }
    // Unknown paths: JSON 404.
    let r = api.send(Method::GET, "/nope", &[], None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].is_string());
}

#[tokio::test]
async fn validation_errors_are_400_or_422_naming_the_field() {
    let api = start(true).await;
    api.db.sql("CREATE TABLE nokey(a int, b text)");
    let bad_request = [
        ("{", None),
        ("[1]", None),
        (r#"{"projectId": "your-project-id", "environment": "master"}"#, Some("table")),
        (&*body(json!({"events": "INSERT"})).to_string(), Some("events")),
        (&*body(json!({"active": "yes"})).to_string(), Some("active")),
        (&*body(json!({"secret": 42})).to_string(), Some("secret")),
        (&*body(json!({"filter": [1]})).to_string(), Some("filter")),
        (&*body(json!({"select": "id"})).to_string(), Some("select")),
        (&*body(json!({"tabel": "orders"})).to_string(), Some("tabel")),
    ];
    for (b, field) in bad_request {
        let r = api.call(Method::POST, "/api/rest/_webhooks", Some(b)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{b}: {}", r.text);
        assert_eq!(r.json()["field"].as_str(), field, "{}", r.text);
    }
    let unprocessable = [
        (json!({"table": "missing"}), "table", "does not exist"),
        (json!({"table": "a.b.c"}), "table", "invalid table name"),
        (json!({"table": "walhook.deliveries"}), "table", "outbox schema"),
        (json!({"events": []}), "events", "at least one"),
        (json!({"events": ["UPSERT"]}), "events", "UPSERT"),
        (json!({"filter": {"nope": "x"}}), "filter", "no column \"nope\""),
        (json!({"filter": {"status": {"like": "x"}}}), "filter", "unknown operator"),
        (json!({"filter": {"status": "${HOME}"}}), "filter", "${"),
        (json!({"select": ["id", "nope"]}), "select", "no column \"nope\""),
        (json!({"select": []}), "select", "empty"),
        (json!({"url": "http://your-app.example.com/h"}), "url", "HTTP"),
        (json!({"url": "https://10.1.2.3/h"}), "url", "private"),
        (json!({"url": "not a url"}), "url", "url"),
        (json!({"secret": ""}), "secret", "empty"),
        (json!({"signature": "standard"}), "secret", "whsec_"),
        (json!({"signature": "nope"}), "signature", "archie"),
        (json!({"format": "xml"}), "format", "json"),
        (json!({"previous_secret": "whsec_old_secret"}), "previous_secret_expires_at", "required"),
        (json!({"previous_secret_expires_at": "soon", "previous_secret": "x"}), "previous_secret_expires_at", "RFC 3339"),
    ];
    for (o, field, text) in unprocessable {
        let r = api.create(body(o.clone())).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{o}: {}", r.text);
        let v = r.json();
        assert_eq!(v["field"], field, "{o}: {}", r.text);
        assert!(v["error"].as_str().unwrap().contains(text), "{o}: {}", r.text);
    }
    // Valid extras are accepted and echoed (but never the secrets).
    let r = api
        .create(body(json!({
            "filter": {"status": "completed"},
            "select": ["id", "total", "status"],
            "events": ["UPDATE"],
            "format": "slack",
            "active": false,
            "previous_secret": "whsec_old_secret",
            "previous_secret_expires_at": "2030-01-01T00:00:00Z",
        })))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let w = r.json();
    assert_eq!(w["filter"], json!({"status": {"eq": "completed"}}));
    assert_eq!(w["select"], json!(["id", "total", "status"]));
    assert_eq!((w["format"].clone(), w["active"].clone()), (json!("slack"), json!(false)));
    assert_eq!(w["previousSecretExpiresAt"], "2030-01-01T00:00:00Z");

    // A table without a primary key is fine when walhook manages replica identity…
    let r = api.create(body(json!({"table": "nokey", "events": ["INSERT"]}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // …and the API never alters the source database itself.
    assert_eq!(api.db.sql("SELECT relreplident FROM pg_class WHERE relname = 'nokey'"), "d");
}

#[tokio::test]
async fn without_managed_replica_identity_a_table_needs_full() {
    let api = start(false).await;
    api.db.sql("CREATE TABLE nokey(a int)");
    let r = api.create(body(json!({"table": "nokey"}))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let e = r.json()["error"].as_str().unwrap().to_string();
    assert!(e.contains("ALTER TABLE \"public\".\"nokey\" REPLICA IDENTITY FULL") && e.contains("no primary key"), "{e}");
    api.db.sql("ALTER TABLE nokey REPLICA IDENTITY FULL");
    let r = api.create(body(json!({"table": "nokey"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn patch_delete_and_config_owned_subscriptions() {
    let api = start(true).await;
    let w = api.create(body(json!({}))).await.json();
    let id = w["id"].as_str().unwrap();
    assert!(api.changed().await);
    let path = format!("/api/rest/_webhooks/{id}");

    let r = api
        .call(
            Method::PATCH,
            &path,
            Some(r#"{"url": "https://other.example.com/h", "active": false, "secret": "whsec_rotated_secret", "filter": {"status": "completed"}}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!((v["url"].clone(), v["active"].clone()), (json!("https://other.example.com/h"), json!(false)));
    assert_eq!(v["table"], "orders", "fields not in the body are kept");
    assert_eq!(v["filter"], json!({"status": {"eq": "completed"}}));
    assert!(api.changed().await, "update must notify the daemon");
    assert_eq!(
        api.db.sql(&format!("SELECT secret FROM walhook.subscriptions WHERE id = '{id}'")),
        "whsec_rotated_secret"
    );
    // null clears a nullable field; PATCH is validated like create.
    let r = api.call(Method::PATCH, &path, Some(r#"{"filter": null}"#)).await;
    assert_eq!((r.status, r.json()["filter"].clone()), (StatusCode::OK, Value::Null));
    let r = api.call(Method::PATCH, &path, Some(r#"{"select": ["nope"]}"#)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = api.call(Method::PATCH, &path, Some(r#"{"environment": "staging"}"#)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api.call(Method::PATCH, &path, Some("{nope")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // A 410 Gone deactivation is lifted by active = true.
    api.db.sql(&format!(
        "UPDATE walhook.subscriptions SET deactivated_at = now(), deactivated_reason = 'receiver answered 410 Gone' WHERE id = '{id}'"
    ));
    let r = api.call(Method::GET, &path, None).await.json();
    assert_eq!(r["webhook"]["deactivatedReason"], "receiver answered 410 Gone");
    let r = api.call(Method::PATCH, &path, Some(r#"{"active": true}"#)).await.json();
    assert_eq!((r["active"].clone(), r["deactivatedReason"].clone()), (json!(true), Value::Null));

    for m in [Method::GET, Method::PATCH, Method::DELETE] {
        let r = api.call(m.clone(), "/api/rest/_webhooks/wh_nope", Some("{}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m}: {}", r.text);
    }

    // DELETE removes the subscription and its deliveries.
    api.delivery(id, "evt_1", "pending", "");
    let r = api.call(Method::DELETE, &path, None).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::NO_CONTENT, ""));
    assert!(api.changed().await, "delete must notify the daemon");
    assert_eq!(api.call(Method::GET, &path, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.call(Method::DELETE, &path, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.db.sql(&format!("SELECT count(*) FROM walhook.deliveries WHERE subscription_id = '{id}'")),
        "0"
    );

    // Subscriptions from config.toml: listed, read-only.
    let config = api.db.config(&common::sub("from-config", "orders", "[\"INSERT\"]", "")
        .replace("whsec_test", "config-secret-value"));
    let mut client = api.db.client().await;
    let subs: Vec<_> = config.subscriptions().collect();
    walhook::outbox::sync_config_subscriptions(&mut client, &Schema::new("walhook"), &subs)
        .await
        .unwrap();
    let list = api.call(Method::GET, "/api/rest/_webhooks", None).await.json();
    assert_eq!(list["webhooks"][0]["id"], "from-config");
    assert_eq!(list["webhooks"][0]["source"], "config");
    for m in [Method::PATCH, Method::DELETE] {
        let r = api.call(m, "/api/rest/_webhooks/from-config", Some(r#"{"active": false}"#)).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        let e = r.json()["error"].as_str().unwrap().to_string();
        assert!(e.contains("config.toml") && e.contains("SIGHUP"), "{e}");
    }
}

#[tokio::test]
async fn replay_puts_a_dead_letter_back_to_pending_with_the_same_event_id() {
    let api = start(true).await;
    let id = api.create(body(json!({}))).await.json()["id"].as_str().unwrap().to_string();
    let other = api.create(body(json!({}))).await.json()["id"].as_str().unwrap().to_string();
    let dead = api.delivery(&id, "evt_00000000000000aa00000001", "dead", "");
    let foreign = api.delivery(&other, "evt_x", "dead", "");
    let base = format!("/api/rest/_webhooks/{id}");

    let r = api.call(Method::POST, &format!("{base}/deliveries/del_{dead}/replay"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let d = &r.json()["delivery"];
    assert_eq!(d["id"], format!("del_{dead}"));
    assert_eq!(d["eventId"], "evt_00000000000000aa00000001");
    assert_eq!((d["status"].clone(), d["attempts"].clone()), (json!("pending"), json!(0)));
    assert!(d["finishedAt"].is_null() && d["lastError"].is_null());
    let row = api.db.sql(&format!(
        "SELECT status, attempts, event_id, next_attempt_at <= now(), lease_until IS NULL, finished_at IS NULL
         FROM walhook.deliveries WHERE id = {dead}"
    ));
    assert_eq!(row, "pending|0|evt_00000000000000aa00000001|t|t|t");

    // Another subscription's delivery, or an unknown one: 404.
    for p in [format!("del_{foreign}"), "del_999999".into(), "42".into()] {
        let r = api.call(Method::POST, &format!("{base}/deliveries/{p}/replay"), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{p}: {}", r.text);
    }
    // In flight (leased): refused, never reset under the worker.
    let leased = api.delivery(&id, "evt_leased", "pending", "");
    api.db.sql(&format!(
        "UPDATE walhook.deliveries SET lease_until = now() + interval '1 minute', leased_by = gen_random_uuid() WHERE id = {leased}"
    ));
    let r = api.call(Method::POST, &format!("{base}/deliveries/del_{leased}/replay"), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);

    // Bulk: all dead letters, or those dead-lettered since a time.
    let old = api.delivery(&id, "evt_old", "dead", "");
    api.db.sql(&format!("UPDATE walhook.deliveries SET finished_at = now() - interval '2 days' WHERE id = {old}"));
    api.delivery(&id, "evt_new", "dead", "");
    let since = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let r = api.call(Method::POST, &format!("{base}/replay"), Some(&json!({"since": since}).to_string())).await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({"replayed": 1})));
    let r = api.call(Method::POST, &format!("{base}/replay"), None).await;
    assert_eq!(r.json(), json!({"replayed": 1}), "the old one is left");
    let r = api.call(Method::POST, &format!("{base}/replay"), Some("{}")).await;
    assert_eq!(r.json(), json!({"replayed": 0}));
    let r = api.call(Method::POST, &format!("{base}/replay"), Some(r#"{"since": 1}"#)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(api.db.sql(&format!("SELECT status FROM walhook.deliveries WHERE id = {foreign}")), "dead");
    let r = api.call(Method::POST, "/api/rest/_webhooks/wh_nope/replay", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deliveries_listing_filters_and_paginates_newest_first() {
    let api = start(true).await;
    let id = api.create(body(json!({}))).await.json()["id"].as_str().unwrap().to_string();
    let mut ids = Vec::new();
    for i in 0..5 {
        let status = if i % 2 == 0 { "dead" } else { "delivered" };
        ids.push(api.delivery(&id, &format!("evt_{i}"), status, ""));
    }
    let base = format!("/api/rest/_webhooks/{id}/deliveries");
    let r = api.call(Method::GET, &format!("{base}?limit=2"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    let page: Vec<&str> = v["deliveries"].as_array().unwrap().iter().map(|d| d["eventId"].as_str().unwrap()).collect();
    assert_eq!(page, ["evt_4", "evt_3"]);
    assert_eq!(v["nextCursor"], format!("del_{}", ids[3]));
    let d = &v["deliveries"][0];
    for k in ["event", "lastError", "nextAttemptAt", "finishedAt"] {
        assert!(d.get(k).is_some(), "{k}: {d}");
    }
    let r = api.call(Method::GET, &format!("{base}?limit=2&cursor={}", v["nextCursor"].as_str().unwrap()), None).await;
    let page: Vec<String> = r.json()["deliveries"].as_array().unwrap().iter().map(|d| d["eventId"].as_str().unwrap().to_string()).collect();
    assert_eq!(page, ["evt_2", "evt_1"]);
    let r = api.call(Method::GET, &format!("{base}?status=dead"), None).await.json();
    assert_eq!(r["deliveries"].as_array().unwrap().len(), 3);
    assert!(r["nextCursor"].is_null());
    for q in ["status=nope", "limit=0", "limit=x", "cursor=7"] {
        let r = api.call(Method::GET, &format!("{base}?{q}"), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.text);
    }
    let r = api.call(Method::GET, "/api/rest/_webhooks/wh_nope/deliveries", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn health_readiness_and_metrics_move() {
    let api = start(true).await;
    let r = api.send(Method::GET, "/healthz", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api.send(Method::GET, "/readyz", &[], None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.json()["reason"].as_str().unwrap().contains("slot"));
    api.state.streaming.store(true, Ordering::Relaxed);
    let r = api.send(Method::GET, "/readyz", &[], None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let id = api.create(body(json!({}))).await.json()["id"].as_str().unwrap().to_string();
    let scrape = || async {
        let r = api.send(Method::GET, "/metrics", &[], None).await;
        assert_eq!(r.status, StatusCode::OK);
        r.text
    };
    let before = scrape().await;
    assert!(before.contains(&format!("walhook_outbox_pending{{subscription=\"{id}\"}} 0\n")), "{before}");
    assert!(before.contains("walhook_source_streaming 1\n"));
    assert!(!before.contains("\nwalhook_slot_lag_bytes "), "no slot yet: {before}");

    api.delivery(&id, "evt_p", "pending", "");
    api.delivery(&id, "evt_d", "dead", "");
    api.state.metrics.attempt(&id, Outcome::Delivered);
    api.state.metrics.add_changes(3);
    let slot = &api.state.slot;
    api.db.sql(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"));
    let after = scrape().await;
    api.db.sql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
    assert!(after.contains(&format!("walhook_outbox_pending{{subscription=\"{id}\"}} 1\n")), "{after}");
    assert!(after.contains(&format!("walhook_dead_letters{{subscription=\"{id}\"}} 1\n")), "{after}");
    assert!(after.contains(&format!(
        "walhook_deliveries_total{{subscription=\"{id}\",outcome=\"delivered\"}} 1\n"
    )));
    assert!(after.contains("walhook_changes_decoded_total 3\n"));
    assert!(after.contains("\nwalhook_slot_lag_bytes "), "{after}");
}

#[tokio::test]
async fn cli_twins_list_and_replay_deliveries() {
    let api = start(true).await;
    let id = api.create(body(json!({}))).await.json()["id"].as_str().unwrap().to_string();
    let dead = api.delivery(&id, "evt_cli", "dead", "");
    api.delivery(&id, "evt_ok", "delivered", "");
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        cfg.path(),
        format!("[source]\nurl = \"{}\"\n[project]\nid = \"{PROJECT}\"\n", api.db.url()),
    )
    .unwrap();
    let run = |args: Vec<String>| {
        let cfg = cfg.path().to_path_buf();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_walhook"))
                .args(&args)
                .arg("--config")
                .arg(cfg)
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            (out.status.success(), stdout, stderr)
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (ok, out, err) = run(s(&["deliveries", "list", "--subscription", &id])).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with(&format!("del_{}\tevt_ok\tINSERT\tdelivered\thttp=500\tattempts=5", dead + 1)), "{out}");
    assert!(lines[1].contains("evt_cli") && lines[1].contains("error=HTTP 500"), "{out}");
    let (ok, out, _) = run(s(&["deliveries", "list", "--subscription", &id, "--status", "dead"])).await;
    assert!(ok && out.lines().count() == 1, "{out}");

    let (ok, out, err) = run(s(&["deliveries", "replay", "--subscription", &id, "--delivery", &format!("del_{dead}")])).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("replayed del_{dead} (evt_cli): pending, due now"));
    assert_eq!(api.db.sql(&format!("SELECT status FROM walhook.deliveries WHERE id = {dead}")), "pending");
    api.db.sql(&format!("UPDATE walhook.deliveries SET status = 'dead', finished_at = now() WHERE id = {dead}"));
    let (ok, out, _) = run(s(&["deliveries", "replay", "--subscription", &id, "--dead", "--since", "2000-01-01T00:00:00Z"])).await;
    assert!(ok);
    assert_eq!(out.trim(), format!("replayed 1 dead letter(s) of {id}"));

    let (ok, _, err) = run(s(&["deliveries", "list", "--subscription", "nope"])).await;
    assert!(!ok && err.contains("no subscription with id \"nope\""), "{err}");
    let (ok, _, err) = run(s(&["deliveries", "replay", "--subscription", &id, "--delivery", "del_999999"])).await;
    assert!(!ok && err.contains("no delivery del_999999"), "{err}");
    let (ok, _, _) = run(s(&["deliveries", "replay", "--subscription", &id])).await;
    assert!(!ok, "--delivery or --dead is required");
}

/// Serves the API for a fuzzer (see bench/fuzz_api.sh): `WALHOOK_FUZZ_ADDR` (default
/// 127.0.0.1:18080), for `WALHOOK_FUZZ_SECS` seconds (default 600).
#[tokio::test]
#[ignore]
async fn serve_for_fuzzing() {
    let api = start(true).await;
    api.state.streaming.store(true, Ordering::Relaxed);
    // Some data for the fuzzer to find.
    let id = api.create(body(json!({}))).await.json()["id"].as_str().unwrap().to_string();
    api.delivery(&id, "evt_fuzz", "dead", "");
    let addr = std::env::var("WALHOOK_FUZZ_ADDR").unwrap_or_else(|_| "127.0.0.1:18080".into());
    let secs: u64 = std::env::var("WALHOOK_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    eprintln!("fuzz target listening on http://{addr} (webhook {id})");
    let cancel = api.cancel.clone();
    let server = tokio::spawn(walhook::api::serve(api.state.clone(), listener, cancel.clone()));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    cancel.cancel();
    server.await.unwrap().unwrap();
}
